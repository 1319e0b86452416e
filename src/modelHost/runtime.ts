/**
 * How the host creates onnxruntime sessions: threads (default: every core) and the execution provider (auto, cpu,
 * cuda). CUDA runs through onnxruntime-node's CUDA provider, whose libraries are not in the npm package: they are
 * fetched by its install script when asked (`ONNXRUNTIME_NODE_INSTALL=cuda12 node .../onnxruntime-node/script/install`),
 * and need CUDA 12 and cuDNN 9 on the machine. Without them, `auto` runs on the CPU and says why; `cuda` refuses.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type * as ort from 'onnxruntime-node';
import { type HostSettings, WEIGHTS_DTYPES } from '../contracts/modelHost';
import type { WeightDtype } from './hf/weights';

export type Device = 'cpu' | 'cuda';

/** How to install the CUDA provider into the onnxruntime-node this host runs (its own install script, by path). */
export function cudaInstallHint(): string {
  let script: string | undefined;
  try {
    script = path.resolve(path.dirname(require.resolve('onnxruntime-node')), '..', 'script', 'install.js');
  } catch {
    script = undefined;
  }
  return script && fs.existsSync(script)
    ? `ONNXRUNTIME_NODE_INSTALL=cuda12 node ${script} (needs CUDA 12 and cuDNN 9)`
    : "onnxruntime-node's install script with ONNXRUNTIME_NODE_INSTALL=cuda12, from a checkout of Piggyback Lens (npm ci), whose CLI then runs on CUDA; the extension's package carries no install script (needs CUDA 12 and cuDNN 9)";
}

export function defaultThreads(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}

/** Where onnxruntime-node keeps its native libraries for this platform, if it can be found. */
function bindingDir(): string | undefined {
  try {
    const root = path.resolve(path.dirname(require.resolve('onnxruntime-node')), '..', 'bin');
    for (const napi of fs.readdirSync(root)) {
      const dir = path.join(root, napi, process.platform, process.arch);
      if (fs.existsSync(dir)) return dir;
    }
  } catch {
    // not resolvable: treat as no CUDA libraries
  }
  return undefined;
}

/** Why CUDA cannot run here, or undefined when its provider library is installed. */
export function cudaUnavailable(): string | undefined {
  if (process.platform !== 'linux' && process.platform !== 'win32')
    return `onnxruntime-node has no CUDA provider on ${process.platform}`;
  const dir = bindingDir();
  const lib = process.platform === 'win32' ? 'onnxruntime_providers_cuda.dll' : 'libonnxruntime_providers_cuda.so';
  if (!dir || !fs.existsSync(path.join(dir, lib)))
    return `onnxruntime-node's CUDA provider is not installed (${lib} is missing; install it with ${cudaInstallHint()})`;
  return undefined;
}

export interface ResolvedSettings {
  threads: number;
  device: Device;
  /** The dtype of the weight matrices in graphs built from Hugging Face folders (F32 when absent). */
  weightDtype?: WeightDtype;
  /** The dtype was `auto` on the CPU: the load chooses it by memory (float32, else int8, else int4). */
  chooseDtype?: boolean;
  /** Chosen by `auto`: a CUDA session that fails to start falls back to the CPU. */
  auto?: boolean;
  /** Why `auto` chose the CPU (shown once per load). */
  note?: string;
}

export class SettingsError extends Error {}

export function resolveSettings(s: HostSettings = {}): ResolvedSettings {
  const r = resolveDevice(s);
  const wd = s.weightsDtype ?? 'auto';
  if (wd === 'auto')
    return r.device === 'cuda' ? { ...r, weightDtype: 'F16' } : { ...r, weightDtype: 'F32', chooseDtype: true };
  if (!(WEIGHTS_DTYPES as readonly string[]).includes(wd))
    throw new SettingsError(`weightsDtype must be auto, ${WEIGHTS_DTYPES.join(', ')}, got "${String(wd)}"`);
  return { ...r, weightDtype: GRAPH_DTYPE[wd] };
}

const GRAPH_DTYPE = { float32: 'F32', float16: 'F16', int8: 'Q8', int4: 'Q4' } as const;

function resolveDevice(s: HostSettings): ResolvedSettings {
  const asked = s.threads ?? defaultThreads();
  if (!Number.isInteger(asked) || asked < 1)
    throw new SettingsError(`threads must be a whole number of at least 1, got ${asked}`);
  // more threads than cores only contend for them (and 100000 would exhaust the process limit)
  const threads = Math.min(asked, defaultThreads());
  const ep = s.executionProvider ?? 'auto';
  if (ep === 'cpu') return { threads, device: 'cpu' };
  const why = cudaUnavailable();
  if (ep === 'cuda') {
    if (why) throw new SettingsError(`executionProvider is cuda, but ${why}`);
    return { threads, device: 'cuda' };
  }
  if (ep !== 'auto') throw new SettingsError(`executionProvider must be auto, cpu or cuda, got "${String(ep)}"`);
  return why
    ? { threads, device: 'cpu', auto: true, note: `running on the CPU with ${threads} threads: ${why}` }
    : { threads, device: 'cuda', auto: true };
}

/** Session options for a resolved setting, plus any session config entries (external data folder, prepacking). */
export function sessionOptions(
  s: ResolvedSettings,
  session: Record<string, string> = {},
): ort.InferenceSession.SessionOptions {
  return {
    intraOpNumThreads: s.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionProviders: s.device === 'cuda' ? ['cuda', 'cpu'] : ['cpu'],
    // no spin-waiting between ops: when the machine is busy (a build, an editor, a second model), spinning threads
    // take the cores the working ones need. Measured on 2 cores, `piggyback patch` at 0.5B with 16 new tokens:
    // beside an 8B eval 23.2-23.7 s without spinning, 29.4-37.1 s with it; idle 11.5-13.1 s against 11.3-14.4 s.
    extra: { session: { 'intra_op.allow_spinning': '0', ...session } },
  };
}
