/**
 * What results are attributed to: content hashes of every file a checkpoint's numbers come from (the graph and
 * its external data, config.json, safetensors weights, adapters), streamed and remembered by real path, size and
 * mtime so that a large checkpoint is read once. Re-exporting new weights into the same folder changes the
 * identity, and an eval run folder then refuses to resume (naming the file that changed).
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckpointError } from './errors';
import { externalDataFiles } from './onnxInitializers';

type HashCache = Record<string, { size: number; mtimeMs: number; sha256: string }>;

/**
 * SHA-256 of a file's content, remembered by real path, size and mtime in the cache folder so that a large
 * checkpoint is read once, not at every load.
 */
export function fileHash(file: string, cacheDir: string | undefined): string {
  const real = fs.realpathSync(file);
  const st = fs.statSync(real);
  const store = cacheDir ? path.join(cacheDir, 'hashes.json') : undefined;
  let cache: HashCache = {};
  try {
    if (store) cache = JSON.parse(fs.readFileSync(store, 'utf8')) as HashCache;
  } catch {
    // absent or unreadable: start afresh
  }
  const hit = cache[real];
  if (hit && hit.size === st.size && hit.mtimeMs === st.mtimeMs) return hit.sha256;
  const h = createHash('sha256');
  const fd = fs.openSync(real, 'r');
  try {
    const buf = Buffer.allocUnsafe(8 << 20);
    for (let n = fs.readSync(fd, buf, 0, buf.length, null); n > 0; n = fs.readSync(fd, buf, 0, buf.length, null))
      h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  const sha256 = h.digest('hex');
  if (store && cacheDir && st.size >= 1 << 20) {
    cache[real] = { size: st.size, mtimeMs: st.mtimeMs, sha256 };
    try {
      fs.mkdirSync(cacheDir, { recursive: true });
      writeAtomically(store, Buffer.from(JSON.stringify(cache)));
    } catch {
      // a read-only cache only costs re-hashing next time
    }
  }
  return sha256;
}

function writeAtomically(file: string, data: Buffer): void {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/** The short hash of a list of parts (file hashes, kinds). */
export function combine(...parts: string[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex').slice(0, 16);
}

export interface Identity {
  hash: string;
  /** File (relative to the checkpoint folder) -> first 16 hex chars of its SHA-256. */
  files: Record<string, string>;
}

/** Identity from named files: each file's hash and one hash over them all (sorted by name). */
export function identityOf(kind: string, folder: string, files: string[], cacheDir: string | undefined): Identity {
  const out: Record<string, string> = {};
  for (const f of files) out[path.relative(folder, f) || path.basename(f)] = fileHash(f, cacheDir).slice(0, 16);
  const names = Object.keys(out).sort();
  return { hash: combine(kind, ...names.map((n) => `${n}=${out[n]}`)), files: out };
}

/** An ONNX export: the graph, every external data file it names, and config.json when there is one. */
export function onnxIdentity(modelFile: string, configDir: string, cacheDir: string | undefined): Identity {
  const external = externalDataFiles(modelFile);
  const missing = external.filter((f) => !fs.existsSync(f));
  if (missing.length)
    throw new CheckpointError(
      `the graph keeps its weights in ${missing.map((f) => path.relative(path.dirname(modelFile), f)).join(', ')}, which ${missing.length === 1 ? 'is' : 'are'} missing`,
      modelFile,
    );
  const files = [modelFile, ...external];
  const config = path.join(configDir, 'config.json');
  if (fs.existsSync(config)) files.push(config);
  return identityOf('onnx', configDir, files, cacheDir);
}
