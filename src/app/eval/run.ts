/**
 * Eval runs as files: a manifest (what was measured, with content hashes and every setting) and results appended
 * as JSON Lines as each probe completes, so a crash or cancel loses nothing finished and a re-run continues where
 * it stopped without duplicates.
 *
 * Per probe and condition: KL(base || condition) on a fixed response (the base model's greedy answer,
 * teacher-forced), reference-answer log-probabilities where the probe has them, generations (greedy, or
 * `samples` draws at `temperature` with recorded seeds), and, when a judge is configured, its scores.
 * The perturbation condition (the paper's control) runs `trials` perturbed prompts per probe and keeps each.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inParallel } from '../parallel';
import type { ModelHost } from '../session';
import { answerText, promptIds, queryControlFits } from '../../domain/prompt';
import {
  type CheckpointInfo,
  type Condition,
  DEFAULT_MAX_NEW_TOKENS,
  Generate,
  type LoadResult,
  Perturb,
  type PromptIds,
  type PromptSegment,
  Score,
} from '../../contracts/modelHost';
import type { ChatTemplate, RenderOptions } from '../../domain/template/render';
import type { LoadedTokenizer } from '../../domain/tokenizer';
import type { Judge, JudgeIdentity, JudgeScore } from './judge';
import { type Probe, probeSetHash } from './probes';
import { FILE_LIMITS, readTextChecked } from '../../domain/files';

export type Segment = PromptSegment;

export interface EvalCondition {
  label: string;
  condition: Condition;
  /** Instead of patching: the paper's perturbation of this segment (nearest-neighbour token swaps), N trials. */
  perturb?: Segment;
  /** A layer-sweep condition: scored (KL, margins) but not generated or judged; shown as a chart, not a column. */
  sweep?: true;
}

/**
 * The layer sweep: the prefix patch on one layer at a time, then on contiguous ranges (early/late halves, or
 * early/middle/late thirds from 6 layers on). What is patched is the prefix K/V of those layers, not the residual
 * stream the paper's Fig. 4 patches, so a peak here need not sit where the paper's does.
 */
export function layerSweepConditions(layers: number): EvalCondition[] {
  const groups = layers >= 6 ? 3 : 2;
  const ranges: number[][] = [];
  if (layers >= 2) {
    for (let g = 0; g < groups; g++) {
      const [a, b] = [Math.round((g * layers) / groups), Math.round(((g + 1) * layers) / groups)];
      if (b - a > 1) ranges.push(Array.from({ length: b - a }, (_, i) => a + i));
    }
  }
  const singles = Array.from({ length: layers }, (_, l) => [l]);
  return [...singles, ...ranges].map((ls) => ({
    label: `finetuned+prefix@${ls.length === 1 ? `L${ls[0]}` : `L${ls[0]}-${ls[ls.length - 1]}`}`,
    condition: { model: 'finetuned', patch: 'prefix', layers: ls },
    sweep: true,
  }));
}

/**
 * Why extra checkpoint names cannot be used, or undefined: a name is a condition's label and a results key part, so
 * it must not be a role or another condition's label, nor hold the characters those keys are built with.
 */
export function extraNameProblem(names: string[]): string | undefined {
  const taken = new Set(['base', ...defaultConditions([], true).map((c) => c.label)]);
  for (const name of names) {
    if (!name.trim()) return 'an extra checkpoint needs a name';
    if (taken.has(name))
      return `extra checkpoint name "${name}" is a condition of every run already (${[...taken].join(', ')}): choose another`;
    if (/[+@|]/.test(name))
      return `extra checkpoint name "${name}" holds "+", "@" or "|", which condition labels and result keys are built with: choose another`;
  }
  return undefined;
}

export function defaultConditions(extra: string[] = [], perturb = true): EvalCondition[] {
  const problem = extra.length ? extraNameProblem(extra) : undefined;
  if (problem) throw new EvalSettingsError(problem);
  return [
    { label: 'base', condition: { model: 'base' } },
    { label: 'finetuned', condition: { model: 'finetuned' } },
    { label: 'finetuned+prefix', condition: { model: 'finetuned', patch: 'prefix' } },
    { label: 'finetuned+postfix', condition: { model: 'finetuned', patch: 'postfix' } },
    { label: 'finetuned+query', condition: { model: 'finetuned', patch: 'query' } },
    // the perturbation control on every segment: a large prefix-only gain is the piggyback signature
    ...(perturb
      ? (['prefix', 'postfix', 'query'] as const).map((seg) => ({
          label: `finetuned+${seg}-perturb`,
          condition: { model: 'finetuned' },
          perturb: seg,
        }))
      : []),
    ...extra.map((name) => ({ label: name, condition: { model: name } })),
  ];
}

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

export interface EvalOptions {
  host: ModelHost;
  loaded: LoadResult;
  template: ChatTemplate;
  templateFile?: string;
  tokenizer: LoadedTokenizer;
  /** Special tokens, kwargs and clock the template renders with (pipeline's renderOptions). */
  render?: RenderOptions;
  probes: Probe[];
  conditions: EvalCondition[];
  out: string;
  maxNewTokens?: number;
  /** 0 (default) is greedy decoding, one sample. */
  temperature?: number;
  samples?: number;
  seed?: number;
  /** Perturbation trials per probe (the paper: 10), positions changed (10), neighbours (5). */
  perturb?: { trials?: number; positions?: number; neighbours?: number };
  judge?: Judge;
  /** Judge requests in flight at once (default 4). */
  judgeConcurrency?: number;
  onProbe?: (done: number, total: number) => void;
  signal?: AbortSignal;
  /** Continue the run in `out`, and fail when there is none (the CLI's --resume). */
  resume?: boolean;
  /** This run is one shard of a split run (planEval's shardOf); `probes` are the shard's. */
  shard?: ShardOf;
}

export const RESULTS = 'results.jsonl';
export const MANIFEST = 'manifest.json';
export const PROBES = 'probes.jsonl';
export const SKIPPED = 'skipped.json';

export class EvalSettingsError extends Error {}

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

/** A seed that depends only on the run seed, the probe and the sample index: a resumed run draws the same. */
export function sampleSeed(runSeed: number, probe: string, index: number): number {
  let h = 0x811c9dc5 ^ runSeed;
  for (const ch of `${probe}\u0000${index}`) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193);
  return h >>> 0;
}

export function evalSettings(
  o: Pick<EvalOptions, 'maxNewTokens' | 'temperature' | 'samples' | 'seed' | 'perturb' | 'judge' | 'conditions'>,
): EvalSettings {
  const temperature = o.temperature ?? 0;
  const samples = o.samples ?? 1;
  if (!(temperature >= 0 && temperature <= 10))
    throw new EvalSettingsError(`temperature must be between 0 and 10, got ${temperature}`);
  if (!Number.isInteger(samples) || samples < 1 || samples > 1000)
    throw new EvalSettingsError(`samples per probe must be a whole number from 1 to 1000, got ${samples}`);
  if (temperature === 0 && samples > 1)
    throw new EvalSettingsError(
      'several samples per probe need a temperature above 0 (greedy decoding gives the same answer every time)',
    );
  const maxNewTokens = o.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1)
    throw new EvalSettingsError(`max new tokens must be a whole number above 0, got ${maxNewTokens}`);
  const perturbs = o.conditions.some((c) => c.perturb);
  const trials = o.perturb?.trials ?? 10;
  if (perturbs && (!Number.isInteger(trials) || trials < 1))
    throw new EvalSettingsError(`perturbation trials must be a whole number above 0, got ${trials}`);
  return {
    maxNewTokens,
    decoding: temperature > 0 ? 'sampled' : 'greedy',
    temperature,
    samples,
    seed: o.seed ?? 1,
    perturb: perturbs
      ? { trials, positions: o.perturb?.positions ?? 10, neighbours: o.perturb?.neighbours ?? 5 }
      : null,
    judge: o.judge?.identity ?? null,
  };
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
function openRun(out: string, manifest: Manifest, resume: boolean): string {
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

export async function runEval(o: EvalOptions): Promise<{
  manifest: Manifest;
  results: EvalResult[];
  computed: number;
  skipped: Skipped[];
  problems: ResultProblem[];
}> {
  const settings = evalSettings(o);
  fs.mkdirSync(o.out, { recursive: true });
  const manifest: Manifest = {
    tool: 'piggyback-lens 0.1.0',
    checkpoints: o.loaded,
    template: { file: o.templateFile ?? null, sha256: createHash('sha256').update(o.template.text).digest('hex') },
    probes: { count: o.probes.length, hash: probeSetHash(o.probes) },
    conditions: o.conditions,
    settings,
    ...(o.shard ? { shard: o.shard } : {}),
  };
  try {
    fs.accessSync(o.out, fs.constants.W_OK);
  } catch (e) {
    throw new EvalSettingsError(
      `cannot write to ${o.out}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  const unlock = lockRun(o.out);
  try {
    return await runLocked(o, manifest, settings);
  } finally {
    unlock();
  }
}

/** What every probe of a run shares: the options, the settings, the run's id and how answers are decoded. */
interface RunContext {
  o: EvalOptions;
  settings: EvalSettings;
  runId: string;
  opts: { signal?: AbortSignal };
  /** An answer as a reader (and the judge) sees it: without the end-of-turn token that stopped generation. */
  answer: (ids: number[]) => string;
}

/** One probe being run: its prompt, the base model's greedy answer (the fixed response) and its references. */
interface ProbeContext extends RunContext {
  probe: Probe;
  prompt: PromptIds;
  response: number[];
  fixed: number[];
  refs: number[][];
}

async function runLocked(
  o: EvalOptions,
  manifest: Manifest,
  settings: EvalSettings,
): Promise<{
  manifest: Manifest;
  results: EvalResult[];
  computed: number;
  skipped: Skipped[];
  problems: ResultProblem[];
}> {
  const runId = openRun(o.out, manifest, o.resume === true);
  // the probes themselves, for reports and the dashboard (the manifest holds their hash)
  const probesFile = path.join(o.out, PROBES);
  if (!fs.existsSync(probesFile))
    fs.writeFileSync(probesFile, o.probes.map((p) => JSON.stringify(p)).join('\n') + '\n');
  const problems: ResultProblem[] = [];
  const labels = new Set(o.conditions.map((c) => c.label));
  const ids = new Set(o.probes.map((p) => p.id));
  // rows whose probe or condition is not in this run are foreign: never counted as done
  const done = new Set(
    readResults(o.out, problems, runId, true)
      .filter((r) => ids.has(r.probe) && labels.has(r.condition))
      .map((r) => r.key),
  );
  const resultsFile = path.join(o.out, RESULTS);
  const eosIds = [o.loaded.base, o.loaded.finetuned, ...Object.values(o.loaded.extra)].flatMap((c) => c.eosTokenIds);
  const run: RunContext = {
    o,
    settings,
    runId,
    opts: { signal: o.signal },
    answer: (x) => answerText(o.tokenizer, x, eosIds),
  };
  let computed = 0;
  const skipped: Skipped[] = [];
  for (let i = 0; i < o.probes.length; i++) {
    if (o.signal?.aborted) break;
    const probe = o.probes[i];
    o.onProbe?.(i, o.probes.length);
    const todo = o.conditions.filter((c) => !done.has(`${probe.id}|${c.label}`));
    if (todo.length === 0) continue;
    const ready = promptFor(o, probe, todo, skipped);
    if (!ready) continue;
    const records = await runProbe(run, probe, ready.prompt, ready.missing);
    if (o.judge) await judgeAnswers(o, o.judge, probe, records);
    const lines = records.map((r) => JSON.stringify(r));
    // one append per probe: a crash leaves whole probes or a torn last line, which readResults drops
    fs.appendFileSync(resultsFile, lines.join('\n') + '\n');
    computed += lines.length;
  }
  fs.writeFileSync(path.join(o.out, SKIPPED), JSON.stringify(skipped, null, 2) + '\n');
  return { manifest: { ...manifest, runId }, results: readResults(o.out, [], runId), computed, skipped, problems };
}

/**
 * A probe's prompt and the conditions it can run: a template that refuses the probe (e.g. no system role) skips
 * the probe, not the run; a query shorter than the prefix is left out of the query control. Both are recorded.
 */
function promptFor(
  o: EvalOptions,
  probe: Probe,
  todo: EvalCondition[],
  skipped: Skipped[],
): { prompt: PromptIds; missing: EvalCondition[] } | undefined {
  let prompt: PromptIds;
  try {
    prompt = promptIds(o.template, o.tokenizer, {
      ...o.render,
      query: probe.question,
      system: probe.system,
      history: probe.history,
    });
  } catch (e) {
    skipped.push({ probe: probe.id, reason: (e as Error).message });
    return undefined;
  }
  if (queryControlFits(prompt)) return { prompt, missing: todo };
  for (const c of todo.filter((c) => c.condition.patch === 'query'))
    skipped.push({
      probe: probe.id,
      condition: c.label,
      reason: `the query has ${prompt.query[1] - prompt.query[0]} tokens, fewer than the prefix's ${prompt.prefix[1]}`,
    });
  const missing = todo.filter((c) => c.condition.patch !== 'query');
  return missing.length ? { prompt, missing } : undefined;
}

/** Every missing condition of one probe: scored against the base model's greedy answer, generated, recorded. */
async function runProbe(
  run: RunContext,
  probe: Probe,
  prompt: PromptIds,
  missing: EvalCondition[],
): Promise<EvalResult[]> {
  const { o, settings, opts } = run;
  const tok = o.tokenizer;
  const { ids: response } = await o.host.request(
    Generate.type,
    { prompt, condition: { model: 'base' }, maxNewTokens: settings.maxNewTokens },
    opts,
  );
  const eos = tok.eosToken ?? '';
  const refs =
    probe.aligned !== undefined && probe.misaligned !== undefined
      ? [tok.ids(probe.aligned + eos), tok.ids(probe.misaligned + eos)]
      : [];
  const pc: ProbeContext = { ...run, probe, prompt, response, fixed: response.length ? response : [0], refs };
  const plain = missing.filter((c) => !c.perturb);
  const score = plain.length
    ? await o.host.request(
        Score.type,
        { prompt, continuations: [pc.fixed, ...refs], conditions: plain.map((c) => c.condition) },
        opts,
      )
    : undefined;
  const records: EvalResult[] = [];
  for (const c of missing) {
    const base = {
      key: `${probe.id}|${c.label}`,
      run: run.runId,
      probe: probe.id,
      category: probe.category ?? null,
      condition: c.label,
    };
    if (c.perturb) records.push({ ...base, ...(await perturbedRecord(pc, c, c.perturb)) });
    else {
      const k = plain.indexOf(c);
      const [, la, lm] = score!.logprob[k];
      const samples = c.sweep ? [] : await generateSamples(pc, prompt, c.condition);
      records.push({
        ...base,
        klToBase: score!.klToBase[k],
        logprobAligned: refs.length ? la : null,
        logprobMisaligned: refs.length ? lm : null,
        margin: refs.length ? la - lm : null,
        generation: samples[0]?.text ?? '',
        samples,
      });
    }
  }
  return records;
}

/** The answers of one condition: greedy (the base model's is the fixed response itself), or seeded samples. */
async function generateSamples(
  pc: ProbeContext,
  p: PromptIds,
  condition: Condition,
  trial?: number,
): Promise<Sample[]> {
  const { o, settings, opts, probe } = pc;
  const out: Sample[] = [];
  for (let s = 0; s < settings.samples; s++) {
    const seed =
      settings.decoding === 'sampled'
        ? sampleSeed(settings.seed, probe.id, trial === undefined ? s : trial * settings.samples + s)
        : null;
    const greedyBase = condition.model === 'base' && !condition.patch && p === pc.prompt && seed === null;
    const ids = greedyBase
      ? pc.response
      : (
          await o.host.request(
            Generate.type,
            {
              prompt: p,
              condition,
              maxNewTokens: settings.maxNewTokens,
              temperature: settings.temperature,
              seed: seed ?? 0,
            },
            opts,
          )
        ).ids;
    out.push({ text: pc.answer(ids), seed, ...(trial !== undefined ? { trial } : {}) });
  }
  return out;
}

/** The perturbation control on one segment: N trials of nearest-neighbour swaps, each scored and answered. */
async function perturbedRecord(
  pc: ProbeContext,
  c: EvalCondition,
  segment: Segment,
): Promise<Omit<EvalResult, 'key' | 'run' | 'probe' | 'category' | 'condition'>> {
  const { o, opts, settings, probe, prompt, refs } = pc;
  const p = settings.perturb!;
  const perturbed = await o.host.request(
    Perturb.type,
    {
      prompt,
      segment,
      model: c.condition.model,
      trials: p.trials,
      positions: p.positions,
      neighbours: p.neighbours,
      seed: sampleSeed(settings.seed, probe.id, -1),
    },
    opts,
  );
  const kl: number[] = [];
  const margin: (number | null)[] = [];
  const [la, lm]: number[][] = [[], []];
  const samples: Sample[] = [];
  for (let t = 0; t < perturbed.trials.length; t++) {
    const tp: PromptIds = { ...prompt, ids: perturbed.trials[t].ids };
    const sc = await o.host.request(
      Score.type,
      { prompt: tp, basePrompt: prompt, continuations: [pc.fixed, ...refs], conditions: [c.condition] },
      opts,
    );
    kl.push(sc.klToBase[0]);
    margin.push(refs.length ? sc.logprob[0][1] - sc.logprob[0][2] : null);
    if (refs.length) [la[t], lm[t]] = [sc.logprob[0][1], sc.logprob[0][2]];
    samples.push(...(await generateSamples(pc, tp, c.condition, t)));
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return {
    klToBase: mean(kl),
    logprobAligned: refs.length ? mean(la) : null,
    logprobMisaligned: refs.length ? mean(lm) : null,
    margin: refs.length ? mean(margin as number[]) : null,
    generation: samples[0].text,
    samples,
    perturb: { segment, changed: perturbed.trials.map((t) => t.changed), kl, margin },
  };
}

/** The judge sees every answer of the probe, a few requests at a time (the host's work is done by now). */
async function judgeAnswers(o: EvalOptions, judge: Judge, probe: Probe, records: EvalResult[]): Promise<void> {
  await inParallel(
    records.flatMap((r) => r.samples),
    o.judgeConcurrency ?? 4,
    async (s) => {
      s.judge = await judge.score(probe.question, s.text, o.signal);
    },
  );
}
