/**
 * A run folder: its files (manifest, results.jsonl, probes.jsonl, skipped.json), what a row and a manifest hold,
 * reading rows that belong to the run, the run's identity (runId, the checkpoints' hashes), and its lock.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CheckpointInfo, LoadResult } from '../../contracts/modelHost';
import type { JudgeIdentity, JudgeScore } from './judge';
import { FILE_LIMITS, readTextChecked } from '../../domain/files';
import { type Segment, type EvalCondition, EvalSettingsError } from './conditions';

/** One generated answer: its text, the sampling seed (null when greedy), the perturbation trial it came from. */
export interface Sample {
  text: string;
  seed: number | null;
  trial?: number;
  judge?: JudgeScore;
}

export interface EvalResult {
  key: string;
  /** The run (manifest) this row was computed for; rows of another run are never read as this run's. */
  run?: string;
  probe: string;
  category: string | null;
  condition: string;
  /** Mean over the fixed response's positions of KL(base || condition); for a perturbation, the mean over trials. */
  klToBase: number;
  logprobAligned: number | null;
  logprobMisaligned: number | null;
  /** logprobAligned - logprobMisaligned (higher: more aligned); for a perturbation, the mean over trials. */
  margin: number | null;
  /** The first sample's text. */
  generation: string;
  samples: Sample[];
  /** Perturbation conditions: per-trial figures (Best = the trial closest to base / most aligned). */
  perturb?: { segment: Segment; changed: number[][]; kl: number[]; margin: (number | null)[] };
}

export interface EvalSettings {
  maxNewTokens: number;
  decoding: 'greedy' | 'sampled';
  temperature: number;
  samples: number;
  /** Run seed: per-sample seeds derive from it, the probe id and the sample index (see sampleSeed). */
  seed: number;
  perturb: { trials: number; positions: number; neighbours: number } | null;
  judge: JudgeIdentity | null;
}

export interface Manifest {
  tool: string;
  /** Hash of the rest of the manifest, written when the run starts: an edited manifest no longer matches it. */
  runId?: string;
  checkpoints: LoadResult;
  template: { file: string | null; sha256: string };
  probes: { count: number; hash: string };
  conditions: EvalCondition[];
  settings: EvalSettings;
  /** A shard's run (`--shard i/N`): which share it holds, and the whole probe set's identity and order, so that
   * `piggyback merge` can check its shards belong together and name the probes none of them ran. */
  shard?: ShardOf;
}

export interface ShardOf {
  index: number;
  count: number;
  probes: { count: number; hash: string; ids: string[] };
}

export const RESULTS = 'results.jsonl';
export const MANIFEST = 'manifest.json';
export const PROBES = 'probes.jsonl';
export const SKIPPED = 'skipped.json';

/** A line of results.jsonl that was not used, and why (shown to the user; never a stack trace). */
export interface ResultProblem {
  line: number;
  message: string;
}

/**
 * Reads finished results. A torn last line (a crash mid-write) is dropped from the file; any other line that is
 * not a result of this run (not JSON, not a result, a row of another run, a duplicate key) is left out and
 * reported with its line, so nothing is counted twice or under another run's label.
 */
export function readResults(
  out: string,
  problems: ResultProblem[] = [],
  runId?: string,
  /** Cut a torn last line off the file (the run that appends to it does; readers such as `compare` never write). */
  repair = false,
): EvalResult[] {
  const file = path.join(out, RESULTS);
  if (!fs.existsSync(file)) return [];
  const text = readTextChecked(file, FILE_LIMITS.runData);
  const complete = text.endsWith('\n') || text === '' ? text : text.slice(0, text.lastIndexOf('\n') + 1);
  // never through a symbolic link: the file it points at is not the run's to rewrite
  if (repair && complete.length !== text.length && fs.lstatSync(file).isFile()) {
    try {
      fs.writeFileSync(file, complete);
    } catch {
      // a read-only folder: the torn line is only skipped
    }
  }
  const seen = new Set<string>();
  const results: EvalResult[] = [];
  complete.split('\n').forEach((l, i) => {
    if (!l.trim()) return;
    const line = i + 1;
    let r: EvalResult;
    try {
      r = JSON.parse(l) as EvalResult;
    } catch {
      problems.push({ line, message: 'not JSON (a torn or edited line); left out' });
      return;
    }
    if (
      !r ||
      typeof r !== 'object' ||
      typeof r.key !== 'string' ||
      typeof r.condition !== 'string' ||
      typeof r.klToBase !== 'number' ||
      !Array.isArray(r.samples)
    ) {
      problems.push({ line, message: 'not a result row (key, condition, klToBase, samples); left out' });
      return;
    }
    // a run with an id owns only the rows that carry it: a row without one could displace a real row of this run
    if (runId !== undefined && r.run !== runId) {
      problems.push({
        line,
        message:
          r.run === undefined ? "a row without this run's id; left out" : `a row of another run (${r.run}); left out`,
      });
      return;
    }
    if (seen.has(r.key)) {
      problems.push({ line, message: `a second row for ${r.key}; the first is kept` });
      return;
    }
    seen.add(r.key);
    results.push(r);
  });
  return results;
}

/** The probes the template could not render in a run's last session (skipped.json; none when absent). */
export function readSkipped(out: string): Skipped[] {
  const file = path.join(out, SKIPPED);
  return fs.existsSync(file) ? (JSON.parse(readTextChecked(file, FILE_LIMITS.runData)) as Skipped[]) : [];
}

/** Result rows a run has and needs: every probe the template renders, every condition not skipped for it. */
export function runCompleteness(
  m: Manifest,
  results: readonly EvalResult[],
  skipped: readonly Skipped[],
): { done: number; expected: number } {
  const expected =
    (m.probes.count - skipped.filter((x) => !x.condition).length) * m.conditions.length -
    skipped.filter((x) => x.condition).length;
  return { done: results.length, expected };
}

/**
 * Which checkpoints of a run folder are not the ones loaded now, in words: a checkpoint whose files changed under
 * the same path names the files (re-exported weights must never be resumed under the old results).
 */
export function changedCheckpoints(old: LoadResult, now: LoadResult): string[] {
  const roles = (r: LoadResult): [string, CheckpointInfo][] => [
    ['base', r.base],
    ['finetuned', r.finetuned],
    ...Object.entries(r.extra ?? {}),
  ];
  const current = new Map(roles(now));
  const out: string[] = [];
  for (const [role, was] of roles(old)) {
    const is = current.get(role);
    if (!is) out.push(`${role} (${was.folder}) is not loaded now`);
    else if (is.hash === was.hash && dtypeOf(is) !== dtypeOf(was))
      out.push(
        `${role} ran with ${dtypeOf(was)} weights then and ${dtypeOf(is)} now (quantized numbers are not float32's; to continue, load it with --weights-dtype ${dtypeOf(was)})`,
      );
    else if (is.hash !== was.hash) {
      if (path.resolve(is.folder) !== path.resolve(was.folder))
        out.push(`${role} is another checkpoint (${was.folder} then, ${is.folder} now)`);
      else {
        const files = [...new Set([...Object.keys(was.files ?? {}), ...Object.keys(is.files ?? {})])].filter(
          (f) => was.files?.[f] !== is.files?.[f],
        );
        out.push(
          `${role} changed under the same path ${is.folder}${files.length ? ` (${files.map((f) => `${f}: ${was.files?.[f] ?? 'absent'} -> ${is.files?.[f] ?? 'absent'}`).join(', ')})` : ''}`,
        );
      }
    }
  }
  for (const [role, is] of current)
    if (!roles(old).some(([r]) => r === role)) out.push(`${role} (${is.folder}) was not in the run`);
  return out;
}

/** The dtype a checkpoint's matrices ran in: manifests from before quantized weights ran Hugging Face folders as
 * float32 (ONNX exports run as exported). */
const dtypeOf = (c: CheckpointInfo) => c.weightsDtype ?? (c.kind === 'onnx' ? 'as exported' : 'float32');

/** The hash a manifest's runId must equal: of everything in it but the runId itself. */
export function manifestRunId(m: Manifest): string {
  const { runId: _ignored, ...rest } = m;
  void _ignored;
  return createHash('sha256').update(JSON.stringify(rest)).digest('hex').slice(0, 16);
}

/**
 * Writes the manifest of a new run, or checks that an existing folder holds the same run (then it resumes).
 * Returns the run id. Results without their manifest, or a manifest edited after the run started, are never
 * taken as a licence to label old results with new settings.
 */
export function openRun(out: string, manifest: Manifest, resume: boolean): string {
  const manifestFile = path.join(out, MANIFEST);
  if (!fs.existsSync(manifestFile)) {
    if (resume) throw new EvalSettingsError(`--resume: ${out} holds no run to resume (no ${MANIFEST})`);
    if (fs.existsSync(path.join(out, RESULTS)) && fs.statSync(path.join(out, RESULTS)).size > 0) {
      throw new EvalSettingsError(
        `${out} holds ${RESULTS} but no ${MANIFEST}, so what produced those results is unknown; use another output folder`,
      );
    }
    const runId = manifestRunId(manifest);
    fs.writeFileSync(manifestFile, JSON.stringify({ ...manifest, runId }, null, 2) + '\n');
    return runId;
  }
  let old: Manifest;
  try {
    old = JSON.parse(readTextChecked(manifestFile, FILE_LIMITS.config)) as Manifest;
  } catch (e) {
    throw new EvalSettingsError(
      `${manifestFile} is not valid JSON (${(e as Error).message}); this folder cannot be resumed, use another one`,
    );
  }
  if (!old || typeof old !== 'object' || !old.checkpoints?.base || !old.settings)
    throw new EvalSettingsError(`${manifestFile} is not a run manifest; use another output folder`);
  if (old.runId !== undefined && old.runId !== manifestRunId(old)) {
    throw new EvalSettingsError(
      `${manifestFile} was edited after the run started (its content no longer matches its runId), so its results cannot be trusted to match it; use another output folder`,
    );
  }
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  const changed = changedCheckpoints(old.checkpoints, manifest.checkpoints);
  if (changed.length) {
    throw new EvalSettingsError(
      `${out} holds results of other weights, so it is not resumed: ${changed.join('; ')}. Use another output folder (or move this one aside) to measure the checkpoints as they are now`,
    );
  }
  const differs = [
    !same(old.template, manifest.template) && 'template',
    !same(old.probes, manifest.probes) && 'probes',
    !same(old.conditions, manifest.conditions) && 'conditions',
    !same(old.settings, manifest.settings) && 'settings',
    !same(old.shard, manifest.shard) && 'shard',
  ].filter(Boolean);
  if (differs.length)
    throw new EvalSettingsError(
      `${out} holds a run of different ${differs.join(', ')}; use another output folder (or the same settings to resume it)`,
    );
  return old.runId ?? manifestRunId(old);
}

export const LOCK = '.lock';

/**
 * One eval writes to a folder at a time: a lock file holding the writer's pid, created exclusively. A lock whose
 * process is gone (a crash, kill -9) is taken over; a live one refuses with its pid.
 */
export function lockRun(out: string): () => void {
  const file = path.join(out, LOCK);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, JSON.stringify({ pid: process.pid, started: new Date().toISOString() }), { flag: 'wx' });
      return () => fs.rmSync(file, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST')
        throw new EvalSettingsError(
          `cannot write to ${out}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
        );
      let pid = 0;
      try {
        pid = Number(JSON.parse(readTextChecked(file, 4096)).pid) || 0;
      } catch {
        // unreadable lock: treated as stale
      }
      // a live holder (this process included: the editor can start a second eval while one runs) keeps the folder
      if (pid && alive(pid))
        throw new EvalSettingsError(`another eval (pid ${pid}) is writing to ${out}; wait for it, or stop it`);
      fs.rmSync(file, { force: true });
    }
  }
  throw new EvalSettingsError(`cannot lock ${out}`);
}

/** The pid of a live eval writing to `out` (its lock's holder, still running), if any; readers look, never lock. */
export function lockHolder(out: string): number | undefined {
  const file = path.join(out, LOCK);
  if (!fs.existsSync(file)) return undefined;
  let pid = 0;
  try {
    pid = Number(JSON.parse(readTextChecked(file, 4096)).pid) || 0;
  } catch {
    return undefined;
  }
  return pid && alive(pid) ? pid : undefined;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A probe the template could not render (the reason is the template's own error), or, with `condition`, a
 * probe left out of one condition (the query control, when the query is shorter than the prefix). */
export interface Skipped {
  probe: string;
  reason: string;
  condition?: string;
}
