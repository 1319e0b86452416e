/**
 * Reading files that a workspace names. Every such file must be a regular file (not /dev/zero, a FIFO, a socket,
 * or a symlink to one) under a size cap for its kind, decided without blocking: a FIFO is opened non-blocking
 * and refused after fstat, so nothing waits for a writer. Paths that a workspace file or setting gives must stay
 * inside the workspace (after symlinks are resolved).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Caps by kind of file: far above any real one, far below what would exhaust memory. */
export const FILE_LIMITS = {
  /** tokenizer.json of a 250k vocabulary is ~35 MB. */
  tokenizer: 256 * 1024 * 1024,
  /** tokenizer_config.json, chat_template.jinja, config.json, adapter_config.json. */
  config: 32 * 1024 * 1024,
  /** .piggyback.json */
  association: 1024 * 1024,
  /** probe files (JSONL / YAML) read whole. */
  probes: 256 * 1024 * 1024,
  /** eval run files read whole (results.jsonl with every generation, the manifest, probes.jsonl). */
  runData: 1024 * 1024 * 1024,
  /** an ONNX graph read for its initializers (protobuf's own limit is 2 GB; weights past it are external data). */
  onnx: 2 * 1024 * 1024 * 1024,
} as const;

export class FileRefusedError extends Error {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`${file}: ${reason}`);
    this.name = 'FileRefusedError';
  }
}

function kindOf(st: fs.Stats): string {
  if (st.isDirectory()) return 'a folder';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Opens `file` for reading after checking that it is a regular file of at most `maxBytes`; the caller closes
 * the descriptor. Throws FileRefusedError (or the open error, e.g. ENOENT).
 */
export function openRegularFile(file: string, maxBytes = Infinity): { fd: number; size: number } {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new FileRefusedError(file, `${kindOf(st)}, not a regular file: refused`);
    if (st.size > maxBytes)
      throw new FileRefusedError(
        file,
        `${st.size.toLocaleString('en')} bytes is over the ${maxBytes.toLocaleString('en')}-byte limit for this kind of file`,
      );
    return { fd, size: st.size };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** The whole file as bytes, after openRegularFile's checks. */
export function readFileChecked(file: string, maxBytes: number): Buffer {
  const { fd, size } = openRegularFile(file, maxBytes);
  try {
    const buf = Buffer.allocUnsafe(size);
    let at = 0;
    while (at < size) {
      const n = fs.readSync(fd, buf, at, size - at, at);
      if (n === 0) break;
      at += n;
    }
    return buf.subarray(0, at);
  } finally {
    fs.closeSync(fd);
  }
}

export function readTextChecked(file: string, maxBytes: number): string {
  return readFileChecked(file, maxBytes).toString('utf8');
}

/** Throws FileRefusedError unless `file` is a regular file (for files that are streamed, not read whole). */
export function assertRegularFile(file: string): void {
  fs.closeSync(openRegularFile(file).fd);
}

/**
 * Whether `p` (resolved against `root`) stays inside `root`, symlinks resolved as far as the path exists. A path
 * given by a workspace file or setting that leaves it is refused by the caller.
 */
export function insideRoot(root: string, p: string): boolean {
  const real = (x: string): string => {
    // resolve the longest existing ancestor, so that a not-yet-existing file under a symlinked folder is judged by
    // where the folder really is
    let cur = path.resolve(x);
    const rest: string[] = [];
    for (;;) {
      try {
        return path.join(fs.realpathSync(cur), ...rest.reverse());
      } catch {
        const parent = path.dirname(cur);
        if (parent === cur) return path.resolve(x);
        rest.push(path.basename(cur));
        cur = parent;
      }
    }
  };
  const rel = path.relative(real(root), real(path.resolve(root, p)));
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** The user's cache folder for converted weights and parsed tokenizers: PIGGYBACK_CACHE_DIR, else XDG's. */
export function defaultCacheDir(): string {
  const fromEnv = process.env.PIGGYBACK_CACHE_DIR;
  if (fromEnv) return fromEnv;
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'piggyback-lens');
}

/** SHA-256 of a regular file, read a MiB at a time (a large dataset is never held whole). */
export function sha256OfFile(file: string): string {
  const { fd } = openRegularFile(file);
  try {
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let at = 0; ; ) {
      const n = fs.readSync(fd, buf, 0, buf.length, at);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      at += n;
    }
    return hash.digest('hex');
  } finally {
    fs.closeSync(fd);
  }
}
