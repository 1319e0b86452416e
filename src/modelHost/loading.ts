/**
 * Loading, for every kind of checkpoint: what a path holds, what loading it will need in memory, which weights
 * dtype the CPU load takes, and the load of a base with its others (ONNX exports one session each, Hugging Face
 * folders one session each, adapters on their base's session). A checkpoint named again as the base is decided
 * here, once (by real path), and is the base's checkpoint. How a Hugging Face folder becomes a session is hf/load.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { adapterBaseFolder, checkpointKind, type CheckpointKind } from '../domain/checkpoints';
import { readDecoderSpec } from '../domain/hfConfig';
import { Checkpoint, checkCompatible, findModelFile } from './checkpoint';
import { CheckpointError } from './errors';
import { decoderTensors, type GraphOptions } from './hf/graph';
import { type HfLoadOptions, loadHf, weightBytes } from './hf/load';
import { QUANT_BLOCK } from './hf/quantize';
import { bytesIn, dtypeWord, gb, quantBitsOf, type WeightDtype } from './hf/weights';
import { externalDataFiles } from './onnxInitializers';
import { type ResolvedSettings, resolveSettings } from './runtime';

/** What a path holds (domain/checkpoints), as a CheckpointError when it is no checkpoint. */
export function kindOf(p: string): CheckpointKind {
  const k = checkpointKind(p);
  if ('error' in k) throw new CheckpointError(k.error, p);
  return k.kind;
}

/** Pre-packed quantized matrices against their file bytes (measured 1.13x at int8, 1.23x at int4: 4096x14336). */
const PREPACKED = 1.25;

/** Tokens of K/V and rows of logits the memory estimate allows for (a long prompt, a few caches alive at once). */
const ESTIMATE_TOKENS = 4096;
const ESTIMATE_LOGIT_ROWS = 64;

/**
 * What loading will hold in memory, before anything is loaded: each distinct model's weights in the compute dtype
 * (float32 for Hugging Face folders; an export's files as they are), its K/V for ESTIMATE_TOKENS tokens in a few
 * caches, logits, and a tenth for activations. Adapters add their own size only.
 */
export function estimateMemory(
  paths: [string, CheckpointKind][],
  modelFile?: string,
  options: GraphOptions = {},
): { total: number; parts: string[] } {
  const parts: string[] = [];
  let total = 0;
  const seen = new Set<string>();
  for (const [p, kind] of paths) {
    const real = fs.realpathSync(p);
    if (seen.has(real)) continue;
    seen.add(real);
    let weights = 0;
    let kv = 0;
    let logits = 0;
    if (kind === 'adapter') {
      const f = path.join(p, 'adapter_model.safetensors');
      weights = fs.existsSync(f) ? 2 * fs.statSync(f).size : 0;
    } else if (kind === 'hf') {
      const spec = readDecoderSpec(p);
      weights =
        weightBytes(decoderTensors(spec), options) * (quantBitsOf(options.weightDtype ?? 'F32') ? PREPACKED : 1);
      kv = 3 * 2 * spec.layers * spec.kvHeads * spec.headDim * 4 * ESTIMATE_TOKENS;
      logits = spec.vocab * 4 * ESTIMATE_LOGIT_ROWS;
    } else {
      const graph = findModelFile(p, modelFile);
      weights = [graph, ...externalDataFiles(graph)].reduce(
        (s, f) => s + (fs.existsSync(f) ? fs.statSync(f).size : 0),
        0,
      );
    }
    const bytes = weights * 1.1 + kv + logits;
    total += bytes;
    parts.push(`${path.basename(p)} ${gb(bytes)}`);
  }
  return { total, parts };
}

/**
 * The base and the named others (finetuned, extras): ONNX exports one session each, Hugging Face folders one
 * session each, adapters on the base's session. An adapter needs a Hugging Face base.
 */
export async function loadCheckpoints(
  base: string,
  others: [string, string][],
  options: HfLoadOptions,
): Promise<{ base: Checkpoint; others: Map<string, Checkpoint> }> {
  const opts = { ...options, settings: options.settings ?? resolveSettings() };
  // a checkpoint named again as the base (the TReFT export needs only a base: base and finetuned are one folder;
  // a symbolic link to it) is the base's checkpoint: one session, not two copies of the weights
  const sameAsBase = (p: string) => realOrResolved(p) === realOrResolved(base);
  const distinct = others.filter(([, p]) => !sameAsBase(p));
  if (opts.settings.note) opts.log(opts.settings.note, 'info');
  const baseKind = kindOf(base);
  // an adapter as the base (plain LoRA vs TReFT LoRA, seed 1 vs seed 2): every adapter over the folder it was
  // trained on, in one session with one copy of that base's weights
  let under: string | undefined;
  if (baseKind === 'adapter') {
    const found = adapterBaseFolder(base);
    if ('error' in found) throw new CheckpointError(found.error, path.join(base, 'adapter_config.json'));
    under = found.folder;
    opts.log(`${base} is a LoRA adapter: it and the other adapters run over ${under} ("${found.named}")`);
  }
  const kinds = distinct.map(([name, p]) => [name, p, kindOf(p)] as const);
  const adapterEntries = kinds.filter(([, , k]) => k === 'adapter');
  if (opts.settings.device === 'cpu') {
    const paths: [string, CheckpointKind][] = [
      ...(under ? [[under, 'hf'] as [string, CheckpointKind]] : []),
      [base, baseKind],
      ...kinds.map(([, p, k]) => [p, k] as [string, CheckpointKind]),
    ];
    opts.settings = chooseWeightsDtype(paths, opts, base);
  }
  const out = new Map<string, Checkpoint>();
  let baseCheckpoint: Checkpoint;
  let underCheckpoint: Checkpoint | undefined;
  if (under) {
    const loaded = await loadHf(under, [base, ...adapterEntries.map(([, p]) => p)], opts);
    baseCheckpoint = loaded.adapters[0];
    underCheckpoint = loaded.base;
    for (const [j, [name]] of adapterEntries.entries()) out.set(name, loaded.adapters[j + 1]);
  } else if (baseKind === 'hf') {
    const loaded = await loadHf(
      base,
      adapterEntries.map(([, p]) => p),
      opts,
    );
    baseCheckpoint = loaded.base;
    for (const [j, [name]] of adapterEntries.entries()) out.set(name, loaded.adapters[j]);
  } else {
    // a broken base is the first thing to say; then whether adapters can apply to it
    baseCheckpoint = await Checkpoint.load(base, opts.settings, opts);
    if (adapterEntries.length) {
      await baseCheckpoint.release();
      throw new CheckpointError(
        `a LoRA adapter applies to a Hugging Face base folder (config.json + safetensors), and the base ${base} is an ONNX export: give the base model's folder`,
        adapterEntries[0][1],
      );
    }
  }
  const loadedSoFar: Checkpoint[] = [baseCheckpoint];
  try {
    for (const [name, p, kind] of kinds) {
      if (kind === 'adapter') continue;
      // the folder under an adapter base, named as a checkpoint of its own: the session already holds it
      if (under && underCheckpoint && fs.realpathSync(p) === fs.realpathSync(under)) {
        out.set(name, underCheckpoint);
        continue;
      }
      const c = kind === 'hf' ? (await loadHf(p, [], opts)).base : await Checkpoint.load(p, opts.settings, opts);
      loadedSoFar.push(c);
      out.set(name, c);
    }
    // every other checkpoint must share the base's K/V shapes and tokenizer, or patching means nothing
    for (const c of out.values()) {
      const note = checkCompatible(baseCheckpoint, c);
      if (note) opts.log(note, 'info');
    }
  } catch (e) {
    for (const c of new Set([...loadedSoFar, ...out.values()])) await c.release();
    throw e;
  }
  return {
    base: baseCheckpoint,
    others: new Map(others.map(([name, p]) => [name, sameAsBase(p) ? baseCheckpoint : out.get(name)!])),
  };
}

/** A path's real location (symbolic links followed); the path itself when it does not exist (named as given). */
function realOrResolved(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/** The dtypes `auto` tries on the CPU, in order: the first that fits with a margin is taken. */
const AUTO_ORDER: WeightDtype[] = ['F32', 'Q8', 'Q4'];
/** `auto` takes a dtype when its estimate is at most this share of the available memory. */
const AUTO_MARGIN = 0.85;
const DTYPE_FLAG = (d: WeightDtype) =>
  `--weights-dtype ${dtypeWord(d)} (piggyback.host.weightsDtype: "${dtypeWord(d)}")`;

/**
 * The dtype the CPU load runs with. Explicit: checked against the available memory (unless the check is off), and
 * a refusal names the dtype that would fit. `auto`: float32 when it fits with a margin, else int8, else int4, else
 * a refusal that says what would (a GPU, or more memory). The choice is logged with the numbers behind it.
 */
function chooseWeightsDtype(
  paths: [string, CheckpointKind][],
  opts: HfLoadOptions & { settings: ResolvedSettings },
  base: string,
): ResolvedSettings {
  const settings = opts.settings;
  // the dtype applies to graphs built from Hugging Face folders; ONNX exports run as exported (still estimated)
  const hasHf = paths.some(([, k]) => k !== 'onnx');
  const available = opts.availableMemory ?? os.freemem();
  const need = (d: WeightDtype) => estimateMemory(paths, opts.modelFile, { weightDtype: d });
  const words = (d: WeightDtype, e: { total: number; parts: string[] }) =>
    `${gb(e.total)} as ${dtypeWord(d)} (${e.parts.join(' + ')}: weights, K/V for ${ESTIMATE_TOKENS} tokens, logits, activations)`;
  if (settings.chooseDtype && hasHf) {
    const tried: string[] = [];
    for (const d of AUTO_ORDER) {
      const e = need(d);
      if (e.total <= AUTO_MARGIN * available || opts.memoryCheck === false) {
        // a quantized choice changes the numbers, so the CLI prints it; float32 is said in the editor's log
        opts.log(
          `weights: ${dtypeWord(d)}${tried.length ? ` (${tried.join('; ')}; ${gb(available)} available)` : ` (needs about ${gb(e.total)}; ${gb(available)} available)`}`,
          d === 'F32' ? 'info' : 'load',
        );
        return { ...settings, weightDtype: d, chooseDtype: false };
      }
      tried.push(`${dtypeWord(d)} would need ${gb(e.total)}`);
    }
    throw new CheckpointError(
      `no weights dtype fits in memory: ${tried.join(', ')}, and only ${gb(available)} is available. Run on a GPU (--execution-provider cuda; float16 there), free memory, or load anyway with --no-memory-check (piggyback.host.memoryCheck: false)`,
      base,
    );
  }
  const d = settings.weightDtype ?? 'F32';
  if (opts.memoryCheck === false) return settings;
  const e = need(d);
  if (e.total <= available) return settings;
  if (!hasHf)
    throw new CheckpointError(
      `loading needs about ${gb(e.total)} (${e.parts.join(' + ')}: the exports' files, K/V for ${ESTIMATE_TOKENS} tokens, logits, activations), but only ${gb(available)} of memory is available: choose a smaller variant (--model-file q4), run on a GPU (--execution-provider cuda), or load anyway with --no-memory-check (piggyback.host.memoryCheck: false)`,
      base,
    );
  // the smaller dtypes, each with its estimate, the first that fits offered
  const fits = AUTO_ORDER.filter((x) => bytesRank(x) < bytesRank(d))
    .map((x) => ({ d: x, total: need(x).total }))
    .find((x) => x.total <= available);
  throw new CheckpointError(
    `loading needs about ${words(d, e)}, but only ${gb(available)} of memory is available; ${fits ? `${dtypeWord(fits.d)} would fit (about ${gb(fits.total)}): ${DTYPE_FLAG(fits.d)}` : 'no smaller dtype fits either: run on a GPU (--execution-provider cuda)'}, or load anyway with --no-memory-check (piggyback.host.memoryCheck: false)`,
    base,
  );
}

/** Bytes a block of weights takes in a dtype (scales included): what orders the dtypes by size. */
const bytesRank = (d: WeightDtype) => bytesIn([1, QUANT_BLOCK], d);
