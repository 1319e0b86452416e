/**
 * `piggyback merge`: the shards of a split eval run (`piggyback eval --shard i/N`, one run folder each) into one
 * run folder, as if one process had run every probe. Shards are checked to belong together first (the same
 * checkpoints, template, conditions, settings and whole probe set), and the merged manifest is the one an unsharded
 * run of the same request writes, so its run id, rows, summary, reports and SARIF are that run's, and the merged
 * folder resumes with the same command (without --shard) when a probe is missing.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CheckpointInfo } from '../../contracts/modelHost';
import { FILE_LIMITS, readTextChecked } from '../../domain/files';
import { runProbes } from './evalReport';
import { type Probe, probeSetHash } from './probes';
import {
  changedCheckpoints,
  type EvalResult,
  lockHolder,
  MANIFEST,
  type Manifest,
  manifestRunId,
  PROBES,
  readResults,
  readSkipped,
  RESULTS,
  type ResultProblem,
  SKIPPED,
  type Skipped,
} from './run';

/** Shards that cannot be merged, or an output folder that cannot take the merge, in words. */
export class MergeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MergeError';
  }
}

export interface MergeResult {
  manifest: Manifest;
  /** Shard indices merged, and those of the split that no folder held. */
  shards: number[];
  absentShards: number[];
  /** Result rows written, and rows given by more than one folder (kept once). */
  rows: number;
  duplicates: number;
  /** Probes of the whole set without every one of their rows (their shard absent or unfinished). */
  missing: string[];
  /** Lines of a shard's results.jsonl that were not used, with the folder they are in. */
  problems: { dir: string; problem: ResultProblem }[];
}

interface ShardRun {
  dir: string;
  manifest: Manifest & { shard: NonNullable<Manifest['shard']> };
  probes: Probe[];
  results: EvalResult[];
  skipped: Skipped[];
  problems: ResultProblem[];
}

function readShard(dir: string): ShardRun {
  const file = path.join(dir, MANIFEST);
  if (!fs.existsSync(file)) throw new MergeError(`${dir} is not an eval run folder (no ${MANIFEST})`);
  let manifest: Manifest;
  try {
    manifest = JSON.parse(readTextChecked(file, FILE_LIMITS.config)) as Manifest;
  } catch (e) {
    throw new MergeError(`${file}: ${(e as Error).message}`);
  }
  if (!manifest?.checkpoints?.base || !manifest.settings || !manifest.probes)
    throw new MergeError(`${file} is not a run manifest`);
  if (manifest.runId !== manifestRunId(manifest))
    throw new MergeError(`${file} was edited after its run started (its content no longer matches its runId)`);
  const shard = manifest.shard;
  if (!shard || !Array.isArray(shard.probes?.ids))
    throw new MergeError(`${dir} is not a shard (run with piggyback eval --shard i/N); only shards are merged`);
  // a shard still being written on this machine is not merged half-way; a merge only reads (a shard's folder may
  // be read-only shared storage), so the lock is looked at, not taken
  const writer = lockHolder(dir);
  if (writer) throw new MergeError(`another eval (pid ${writer}) is writing to ${dir}; wait for it to finish`);
  const problems: ResultProblem[] = [];
  let probes: Probe[];
  try {
    probes = runProbes(dir, []);
  } catch (e) {
    throw new MergeError((e as Error).message);
  }
  const results = readResults(dir, problems, manifest.runId);
  let skipped: Skipped[];
  try {
    skipped = readSkipped(dir);
  } catch (e) {
    throw new MergeError(`${path.join(dir, SKIPPED)}: ${(e as Error).message}`);
  }
  return { dir, manifest: { ...manifest, shard }, probes, results, skipped, problems };
}

/** Where two shards' manifests differ, in words ("settings: temperature 0 vs 0.7"); empty when they belong together. */
export function shardDifferences(a: Manifest, b: Manifest): string[] {
  const same = (x: unknown, y: unknown) => JSON.stringify(x) === JSON.stringify(y);
  const out = changedCheckpoints(a.checkpoints, b.checkpoints);
  const roles = (m: Manifest): [string, CheckpointInfo][] => [
    ['base', m.checkpoints.base],
    ['finetuned', m.checkpoints.finetuned],
    ...Object.entries(m.checkpoints.extra ?? {}),
  ];
  const other = new Map(roles(b));
  for (const [role, c] of roles(a)) {
    const d = other.get(role);
    if (d && c.hash === d.hash && c.device !== d.device)
      out.push(`${role} ran on ${c.device} in one and ${d.device} in the other (their numbers differ)`);
  }
  if (!same(a.template, b.template)) out.push(`template: ${a.template.sha256} vs ${b.template.sha256}`);
  if (!same(a.conditions, b.conditions))
    out.push(
      `conditions: ${a.conditions.map((c) => c.label).join(', ')} vs ${b.conditions.map((c) => c.label).join(', ')}`,
    );
  const keys = [...new Set([...Object.keys(a.settings), ...Object.keys(b.settings)])] as (keyof Manifest['settings'])[];
  for (const k of keys)
    if (!same(a.settings[k], b.settings[k]))
      out.push(`settings: ${k} ${JSON.stringify(a.settings[k])} vs ${JSON.stringify(b.settings[k])}`);
  if (a.shard?.count !== b.shard?.count) out.push(`split: ${a.shard?.count} shards vs ${b.shard?.count}`);
  else if (!same(a.shard?.probes, b.shard?.probes))
    out.push(
      `probe set: ${a.shard?.probes.count} probes (${a.shard?.probes.hash}) vs ${b.shard?.probes.count} (${b.shard?.probes.hash})`,
    );
  return out;
}

/**
 * Merges shard folders into `out` (a new or empty folder, none of the inputs). Refuses shards that do not belong
 * together, naming each difference; keeps a row given twice once; writes what there is when probes are missing
 * and names them (the caller says so and exits non-zero).
 */
export function mergeRuns(dirs: string[], out: string): MergeResult {
  if (dirs.length === 0) throw new MergeError('merge needs at least one shard folder');
  const resolved = dirs.map((d) => path.resolve(d));
  const target = path.resolve(out);
  if (resolved.includes(target)) throw new MergeError(`--out ${out} is one of the shards; merge into a new folder`);
  if (fs.existsSync(target) && (!fs.statSync(target).isDirectory() || fs.readdirSync(target).length > 0))
    throw new MergeError(`--out ${out} exists and is not an empty folder; merge into a new folder`);
  const shards = resolved.map(readShard);
  const first = shards[0];
  for (const s of shards.slice(1)) {
    const diff = shardDifferences(first.manifest, s.manifest);
    if (diff.length) throw new MergeError(`${s.dir} does not belong with ${first.dir}: ${diff.join('; ')}`);
  }
  const whole = first.manifest.shard.probes;
  const order = new Map(whole.ids.map((id, i) => [id, i]));
  // the probes, from every shard's probes.jsonl, in the whole set's order
  const probes = new Map<string, Probe>();
  for (const s of shards) for (const p of s.probes) if (order.has(p.id) && !probes.has(p.id)) probes.set(p.id, p);
  const labels = first.manifest.conditions.map((c) => c.label);
  const conditionIndex = new Map(labels.map((l, i) => [l, i]));
  const rows = new Map<string, EvalResult>();
  let duplicates = 0;
  for (const s of shards)
    for (const r of s.results) {
      if (!order.has(r.probe) || !conditionIndex.has(r.condition)) continue;
      if (rows.has(r.key)) duplicates++;
      else rows.set(r.key, r);
    }
  const skipped = new Map<string, Skipped>();
  for (const s of shards) for (const x of s.skipped) skipped.set(`${x.probe}|${x.condition ?? ''}`, x);
  const m = first.manifest;
  // the manifest an unsharded run of the same request writes: the same fields in the same order
  const manifest: Manifest = {
    tool: m.tool,
    checkpoints: m.checkpoints,
    template: m.template,
    probes: { count: whole.count, hash: whole.hash },
    conditions: m.conditions,
    settings: m.settings,
  };
  const runId = manifestRunId(manifest);
  const byOrder = (a: string, b: string) => (order.get(a) ?? 0) - (order.get(b) ?? 0);
  const sortedRows = [...rows.values()].sort(
    (a, b) =>
      byOrder(a.probe, b.probe) || (conditionIndex.get(a.condition) ?? 0) - (conditionIndex.get(b.condition) ?? 0),
  );
  const sortedProbes = [...probes.values()].sort((a, b) => byOrder(a.id, b.id));
  if (sortedProbes.length === whole.count && probeSetHash(sortedProbes) !== whole.hash)
    throw new MergeError(
      `the shards' probes do not make up the probe set their manifests name (${whole.hash}); a probes.jsonl was edited`,
    );
  const skippedWhole = new Set([...skipped.values()].filter((x) => !x.condition).map((x) => x.probe));
  const skippedCondition = new Set(
    [...skipped.values()].filter((x) => x.condition).map((x) => `${x.probe}|${x.condition}`),
  );
  const missing = whole.ids.filter(
    (id) => !skippedWhole.has(id) && labels.some((l) => !rows.has(`${id}|${l}`) && !skippedCondition.has(`${id}|${l}`)),
  );
  fs.mkdirSync(target, { recursive: true });
  fs.writeFileSync(path.join(target, MANIFEST), JSON.stringify({ ...manifest, runId }, null, 2) + '\n');
  fs.writeFileSync(path.join(target, PROBES), sortedProbes.map((p) => JSON.stringify(p)).join('\n') + '\n');
  fs.writeFileSync(
    path.join(target, RESULTS),
    sortedRows.map((r) => `${JSON.stringify({ ...r, run: runId })}\n`).join(''),
  );
  fs.writeFileSync(
    path.join(target, SKIPPED),
    JSON.stringify(
      [...skipped.values()].sort((a, b) => byOrder(a.probe, b.probe)),
      null,
      2,
    ) + '\n',
  );
  const present = new Set(shards.map((s) => s.manifest.shard.index));
  return {
    manifest: { ...manifest, runId },
    shards: [...present].sort((a, b) => a - b),
    absentShards: Array.from({ length: m.shard.count }, (_, i) => i).filter((i) => !present.has(i)),
    rows: sortedRows.length,
    duplicates,
    missing,
    problems: shards.flatMap((s) => s.problems.map((problem) => ({ dir: s.dir, problem }))),
  };
}
