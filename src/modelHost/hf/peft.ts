/**
 * PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors) read against the base they apply to.
 * Update of a Linear module: W' = W + s·B·A with s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA), per-module
 * r and alpha from rank_pattern / alpha_pattern. Keys: `base_model.model.<module>.lora_A.weight` [r, in] and
 * `.lora_B.weight` [out, r]. What changes a model in another way (DoRA, modules_to_save, trained biases, other
 * PEFT types, LoRA on embeddings) is refused by name rather than half-applied.
 */
import * as path from 'node:path';
import { CheckpointError } from '../errors';
import { readAdapterConfig, refuseAdapter } from '../../domain/hfConfig';
import { fullMatchLinear, RegexRefusedError } from '../../domain/regexSafety';
import type { AdapterModules } from './graph';
import { readFloat32, WeightIndex } from './weights';

export interface Adapter {
  folder: string;
  configFile: string;
  weightsFile: string;
  baseModelNameOrPath?: string;
  modules: AdapterModules;
  /** e.g. "LoRA r8 alpha 16 on 28 modules (q_proj, k_proj, ...)". */
  description: string;
  /** Why the adapter leaves the model as it is (every lora_B zero, a scale of 0), when it does. */
  unchanged?: string;
}

/** PEFT's pattern lookup for rank_pattern / alpha_pattern: a key matches a module name it ends (after a dot). */
function patternValue(patterns: unknown, module: string): number | undefined {
  if (!patterns || typeof patterns !== 'object') return undefined;
  for (const [key, value] of Object.entries(patterns as Record<string, unknown>)) {
    if (typeof value !== 'number') continue;
    if (key === module) return value;
    // a key from the file is a pattern: matched in linear time (regexSafety.ts), never by a backtracking engine
    if (fullMatchLinear(`(?:.*\\.)?(?:${key})`, module)) return value;
  }
  return undefined;
}

/** PEFT's check_target_module_exists: a regex string must match the whole name; a list entry must equal or end it. */
export function matchesTarget(targets: unknown, module: string): boolean {
  // PEFT's shorthand (normally expanded into module names before saving): every Linear but the output head
  if (targets === 'all-linear') return module !== 'lm_head';
  if (typeof targets === 'string') return fullMatchLinear(`(?:${targets})`, module);
  if (Array.isArray(targets))
    return targets.some((t) => typeof t === 'string' && (module === t || module.endsWith(`.${t}`)));
  return false;
}

/**
 * Reads an adapter and checks it against the base: every adapted module exists in the base as a Linear weight of
 * a fitting shape. `baseWeight(module)` gives the base's [out, in] for a module path, or undefined. An adapter that
 * does not change the model loads (an untrained adapter is a fair control: it is the base model) and says so in
 * `unchanged`, which the CLI and the editor show before any measurement.
 */
export function readAdapter(
  folder: string,
  baseWeight: (module: string) => [number, number] | undefined,
  baseModules: string[],
): Adapter {
  const configFile = path.join(folder, 'adapter_config.json');
  // the checks the editor's pickers run too (files only), then what needs the base's modules and the tensors
  const config = readAdapterConfig(folder);
  const refuse = (what: string) => refuseAdapter(configFile, what);
  const targets = config.target_modules as string | string[];
  try {
    return readAdapterModules(folder, config, configFile, targets, baseWeight, baseModules, refuse);
  } catch (e) {
    if (e instanceof RegexRefusedError) throw new CheckpointError(e.message, configFile);
    throw e;
  }
}

function readAdapterModules(
  folder: string,
  config: Record<string, unknown>,
  configFile: string,
  targets: string | string[],
  baseWeight: (module: string) => [number, number] | undefined,
  baseModules: string[],
  refuse: (what: string) => never,
): Adapter {
  const baseMatches = baseModules.filter((m) => matchesTarget(targets, m));
  if (baseMatches.length === 0) {
    throw new CheckpointError(
      `target_modules ${JSON.stringify(targets)} match no module of the base model (its Linear modules end in ${[...new Set(baseModules.map((m) => m.split('.').pop()))].join(', ')}): is this the adapter's base?`,
      configFile,
    );
  }
  const weightsFile = path.join(folder, 'adapter_model.safetensors');
  const index = WeightIndex.open(folder, 'adapter_model.safetensors', 'adapter_model.safetensors.index.json');
  const rsLora = config.use_rslora === true;
  const rDefault = typeof config.r === 'number' ? config.r : 8;
  const alphaDefault = typeof config.lora_alpha === 'number' ? config.lora_alpha : 8;
  const pairs = new Map<string, { a?: string; b?: string }>();
  for (const key of index.names()) {
    const m = /^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$/.exec(key);
    if (!m) {
      if (/lora_embedding_[AB]/.test(key)) refuse(`LoRA on an embedding ("${key}")`);
      if (/lora_magnitude_vector/.test(key)) refuse('DoRA (lora_magnitude_vector)');
      throw new CheckpointError(
        `tensor "${key}" is not a LoRA A/B weight; only LoRA updates of Linear modules are supported`,
        weightsFile,
      );
    }
    const entry = pairs.get(m[1]) ?? {};
    entry[m[2] === 'A' ? 'a' : 'b'] = key;
    pairs.set(m[1], entry);
  }
  if (pairs.size === 0) throw new CheckpointError('holds no LoRA weights (lora_A / lora_B)', weightsFile);
  const modules: AdapterModules = new Map();
  const ranks = new Set<number>();
  for (const [module, { a, b }] of pairs) {
    if (!a || !b)
      throw new CheckpointError(
        `module "${module}" has lora_${a ? 'A' : 'B'} but no lora_${a ? 'B' : 'A'}`,
        weightsFile,
      );
    const shape = baseWeight(module);
    if (!shape)
      throw new CheckpointError(`adapts "${module}", which is not a Linear module of the base model`, weightsFile);
    const [out, inDim] = shape;
    const A = index.get(a)!;
    const B = index.get(b)!;
    const rank = A.shape[0];
    if (
      A.shape.length !== 2 ||
      B.shape.length !== 2 ||
      A.shape[1] !== inDim ||
      B.shape[0] !== out ||
      B.shape[1] !== rank
    ) {
      throw new CheckpointError(
        `module "${module}": lora_A [${A.shape}] and lora_B [${B.shape}] do not fit the base weight [${out}, ${inDim}] (expected [r, ${inDim}] and [${out}, r])`,
        weightsFile,
      );
    }
    const rConfig = patternValue(config.rank_pattern, module) ?? rDefault;
    if (rConfig !== rank)
      throw new CheckpointError(
        `module "${module}": adapter_config.json gives r ${rConfig}, the weights have rank ${rank}`,
        weightsFile,
      );
    const alpha = patternValue(config.alpha_pattern, module) ?? alphaDefault;
    // r 0 divides by zero (a NaN scale poisons the shared session, the base included); a non-finite alpha likewise
    if (!(rank > 0) || !Number.isFinite(alpha))
      throw new CheckpointError(
        `module "${module}": rank ${rank} and lora_alpha ${alpha} give no finite scale (r must be at least 1, lora_alpha a number)`,
        configFile,
      );
    for (const ref of [A, B]) {
      if (!['F32', 'F16', 'BF16'].includes(ref.dtype))
        throw new CheckpointError(
          `tensor "${ref.name}" is ${ref.dtype}; only F32, F16 and BF16 are supported`,
          weightsFile,
        );
    }
    modules.set(module, {
      a: readFloat32(A),
      b: readFloat32(B),
      rank,
      scaling: rsLora ? alpha / Math.sqrt(rank) : alpha / rank,
    });
    ranks.add(rank);
  }
  const inert = inertModules(modules);
  // nothing to measure: every drift, patch and eval compares the base with itself and reads as "no change"
  const unchanged =
    inert.zeroB.length + inert.zeroScale.length < modules.size
      ? undefined
      : `this adapter does not change the model: ${
          inert.zeroScale.length === modules.size
            ? `lora_alpha ${alphaDefault}${Object.keys((config.alpha_pattern as object | null) ?? {}).length ? ' (with alpha_pattern)' : ''} makes the scale of every update 0 (${configFile})`
            : inert.zeroB.length === modules.size
              ? `every lora_B weight is zero, as PEFT initialises them: saved before training, or training never updated it (${weightsFile})`
              : `${inert.zeroB.length} modules have an all-zero lora_B and ${inert.zeroScale.length} a scale of 0`
        }; its measurements will equal the base model's`;
  const kinds = [...new Set([...modules.keys()].map((m) => m.split('.').pop()))].sort();
  const r = [...ranks].sort((x, y) => x - y).join('/');
  const noOps = inert.zeroB.length + inert.zeroScale.length;
  return {
    folder,
    configFile,
    weightsFile,
    baseModelNameOrPath:
      typeof config.base_model_name_or_path === 'string' ? config.base_model_name_or_path : undefined,
    modules,
    unchanged,
    description: `LoRA r${r} alpha ${alphaDefault}${rsLora ? ' (rsLoRA)' : ''} on ${modules.size} modules (${kinds.join(', ')})${noOps && !unchanged ? `; ${noOps} of them change nothing (all-zero lora_B or a scale of 0)` : ''}`,
  };
}

/** Modules whose update B·A·scale is zero whatever the input: an all-zero lora_B, or a scale of 0. */
function inertModules(modules: AdapterModules): { zeroB: string[]; zeroScale: string[] } {
  const zeroB: string[] = [];
  const zeroScale: string[] = [];
  for (const [name, m] of modules) {
    if (m.scaling === 0) zeroScale.push(name);
    else if (m.b.every((x) => x === 0)) zeroB.push(name);
  }
  return { zeroB, zeroScale };
}
