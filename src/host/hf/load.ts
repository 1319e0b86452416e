/**
 * Hugging Face checkpoint folders and PEFT adapters as host checkpoints: config.json read into a decoder spec,
 * the weights located (float32 in place, or converted once into the cache), the ONNX graph built, one
 * onnxruntime session created. A base and all adapters over it share that one session (and one copy of the
 * weights): each adapter checkpoint differs from the base only in the `adapter_scale.{j}` it feeds.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { checkpointKind, CheckpointKind } from '../../core/checkpoints';
import { Checkpoint } from '../checkpoint';
import { CheckpointError } from '../checkpointError';
import { DecoderSpec, readDecoderSpec } from './config';
import { buildDecoderGraph } from './graph';
import { Adapter, readAdapter } from './peft';
import { fileHash, float32Weights, gb, readFloat32, WeightIndex, WeightRef } from './weights';

export interface HfLoadOptions {
  cacheDir: string;
  log: (message: string) => void;
}

/** Every tensor the graph reads, with its required shape. */
function graphTensors(spec: DecoderSpec): [string, number[]][] {
  const { hidden: H, heads, kvHeads, headDim: hd, intermediate: I, vocab: V } = spec;
  const out: [string, number[]][] = [['model.embed_tokens.weight', [V, H]], ['model.norm.weight', [H]]];
  if (!spec.tieWordEmbeddings) out.push(['lm_head.weight', [V, H]]);
  for (let l = 0; l < spec.layers; l++) {
    const p = `model.layers.${l}`;
    out.push([`${p}.input_layernorm.weight`, [H]], [`${p}.post_attention_layernorm.weight`, [H]]);
    const proj: [string, number, number, boolean][] = [
      ['self_attn.q_proj', heads * hd, H, spec.bias.q],
      ['self_attn.k_proj', kvHeads * hd, H, spec.bias.k],
      ['self_attn.v_proj', kvHeads * hd, H, spec.bias.v],
      ['self_attn.o_proj', H, heads * hd, spec.bias.o],
      ['mlp.gate_proj', I, H, spec.bias.mlp],
      ['mlp.up_proj', I, H, spec.bias.mlp],
      ['mlp.down_proj', H, I, spec.bias.mlp],
    ];
    for (const [m, o, i, bias] of proj) {
      out.push([`${p}.${m}.weight`, [o, i]]);
      if (bias) out.push([`${p}.${m}.bias`, [o]]);
    }
    if (spec.qkNorm) out.push([`${p}.self_attn.q_norm.weight`, [hd]], [`${p}.self_attn.k_norm.weight`, [hd]]);
  }
  return out;
}

/** Linear modules of the base, as PEFT names them, with their [out, in]. */
function linearModules(spec: DecoderSpec, tensors: [string, number[]][]): Map<string, [number, number]> {
  const out = new Map<string, [number, number]>();
  for (const [name, shape] of tensors) {
    const m = /^(.*_proj)\.weight$/.exec(name);
    if (m) out.set(m[1], shape as [number, number]);
  }
  out.set('lm_head', [spec.vocab, spec.hidden]);
  return out;
}

const count = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : `${(n / 1e3).toFixed(1)}k`);

const shortHash = (...parts: string[]) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex').slice(0, 16);
};

/**
 * Loads a Hugging Face base folder and the adapters over it (in order). Returns the base checkpoint and one
 * checkpoint per adapter, all on one session.
 */
export async function loadHf(folder: string, adapterFolders: string[], opts: HfLoadOptions): Promise<{ base: Checkpoint; adapters: Checkpoint[] }> {
  const spec = readDecoderSpec(folder);
  const index = WeightIndex.open(folder);
  const tensors = graphTensors(spec);
  const refs: WeightRef[] = tensors.map(([name, shape]) => index.require(name, shape, `${spec.modelType} with this config.json`));
  const modules = linearModules(spec, tensors);
  const adapters: Adapter[] = adapterFolders.map((a) => readAdapter(a, (m) => modules.get(m), [...modules.keys()]));
  const params = refs.reduce((s, r) => s + r.shape.reduce((a, b) => a * b, 1), 0);
  const adapterBytes = adapters.map((a) => [...a.modules.values()].reduce((s, m) => s + 4 * (m.a.length + m.b.length), 0));
  const dtypes = [...new Set(refs.map((r) => r.dtype))].join('/');
  opts.log(
    `${folder}: ${spec.modelType}, ${count(params)} parameters (${dtypes}), about ${gb(4 * params)} as float32 in memory` +
      (adapters.length ? `; ${adapters.length} adapter(s) share these weights and add ${gb(adapterBytes.reduce((a, b) => a + b, 0))}` : ''),
  );
  for (const a of adapters) opts.log(`${a.folder}: ${a.description}${a.baseModelNameOrPath ? ` (trained over "${a.baseModelNameOrPath}"; applied to ${folder})` : ''}`);
  const weights = float32Weights(refs, opts.cacheDir, opts.log);
  const graph = buildDecoderGraph(
    spec,
    (name) => weights.locate(name),
    adapters.map((a) => a.modules),
    spec.modelType,
  );
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(graph.model, {
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      // weights stay shared file mappings (no pre-packed private copy): the memory a pair needs is one copy
      extra: { session: { model_external_initializers_file_folder_path: weights.dir, disable_prepacking: '1' } },
    });
  } catch (e) {
    throw new CheckpointError(`onnxruntime cannot build the decoder: ${(e as Error).message}`, folder);
  }
  const configHash = fileHash(path.join(folder, 'config.json'), opts.cacheDir);
  const baseHash = shortHash('hf', configHash, ...index.files.map((f) => fileHash(f, opts.cacheDir)));
  const embedRef = refs[0];
  const embeddings = () => ({ rows: spec.vocab, dim: spec.hidden, data: readFloat32(embedRef), source: `${path.basename(embedRef.file)}:${embedRef.name}` });
  const scales = (active: number) => Object.fromEntries(graph.adapterInputs.map((n, j) => [n, new ort.Tensor('float32', Float32Array.of(j === active ? 1 : 0), [1])]));
  const common = { kind: 'hf' as const, vocabSize: spec.vocab, eosTokenIds: spec.eosTokenIds };
  const where = weights.cacheFile ? ` (float32 cache ${weights.cacheFile})` : '';
  const base = Checkpoint.fromSession(session, index.files[0], folder, {
    feeds: scales(-1),
    embeddings,
    info: { ...common, hash: baseHash, description: `${spec.modelType} ${spec.layers} layers, hidden ${spec.hidden}, ${dtypes} weights${where}, RoPE ${spec.rope}` },
  });
  const adapterCheckpoints = adapters.map((a, j) =>
    Checkpoint.fromSession(session, a.weightsFile, a.folder, {
      feeds: scales(j),
      embeddings,
      info: {
        ...common,
        kind: 'adapter',
        folder: a.folder,
        hash: shortHash('adapter', baseHash, fileHash(a.configFile, opts.cacheDir), fileHash(a.weightsFile, opts.cacheDir)),
        description: `${a.description} over ${folder}`,
        baseModelNameOrPath: a.baseModelNameOrPath,
      },
    }),
  );
  return { base, adapters: adapterCheckpoints };
}

/** What a path holds (core/checkpoints), as a CheckpointError when it is no checkpoint. */
export function kindOf(p: string): CheckpointKind {
  const k = checkpointKind(p);
  if ('error' in k) throw new CheckpointError(k.error, p);
  return k.kind;
}

/**
 * The base and the named others (finetuned, extras): ONNX exports one session each, Hugging Face folders one
 * session each, adapters on the base's session. An adapter needs a Hugging Face base.
 */
export async function loadCheckpoints(base: string, others: [string, string][], opts: HfLoadOptions): Promise<{ base: Checkpoint; others: Map<string, Checkpoint> }> {
  const baseKind = kindOf(base);
  if (baseKind === 'adapter') {
    const named = readBaseName(base);
    throw new CheckpointError(`this is a LoRA adapter, not a base model: pass it as the finetuned checkpoint and its base model folder as the base${named ? ` (adapter_config.json names "${named}")` : ''}`, base);
  }
  const kinds = others.map(([name, p]) => [name, p, kindOf(p)] as const);
  const adapterEntries = kinds.filter(([, , k]) => k === 'adapter');
  const out = new Map<string, Checkpoint>();
  let baseCheckpoint: Checkpoint;
  if (baseKind === 'hf') {
    const loaded = await loadHf(base, adapterEntries.map(([, p]) => p), opts);
    baseCheckpoint = loaded.base;
    adapterEntries.forEach(([name], j) => out.set(name, loaded.adapters[j]));
  } else {
    // a broken base is the first thing to say; then whether adapters can apply to it
    baseCheckpoint = await Checkpoint.load(base);
    if (adapterEntries.length) {
      await baseCheckpoint.release();
      throw new CheckpointError(`a LoRA adapter applies to a Hugging Face base folder (config.json + safetensors), and the base ${base} is an ONNX export: give the base model's folder`, adapterEntries[0][1]);
    }
  }
  const loadedSoFar: Checkpoint[] = [baseCheckpoint];
  try {
    const sameAsBase = (p: string) => fs.realpathSync(p) === fs.realpathSync(base);
    for (const [name, p, kind] of kinds) {
      if (kind === 'adapter') continue;
      // the base named again (a TReFT export runs the base alone): one session, not two copies of the weights
      if (sameAsBase(p)) {
        out.set(name, baseCheckpoint);
        continue;
      }
      const c = kind === 'hf' ? (await loadHf(p, [], opts)).base : await Checkpoint.load(p);
      loadedSoFar.push(c);
      out.set(name, c);
    }
  } catch (e) {
    for (const c of loadedSoFar) await c.release();
    throw e;
  }
  return { base: baseCheckpoint, others: new Map(others.map(([name]) => [name, out.get(name)!])) };
}

function readBaseName(adapter: string): string | undefined {
  try {
    const v = JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8')).base_model_name_or_path;
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}
