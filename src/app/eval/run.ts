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
import type { ModelHost } from '../hostClient';
import { answerText, promptIds, queryControlFits } from '../../domain/prompt';
import {
  type Condition,
  DEFAULT_MAX_NEW_TOKENS,
  Generate,
  type LoadResult,
  Perturb,
  type PromptIds,
  Score,
} from '../../contracts/modelHost';
import type { ChatTemplate, RenderOptions } from '../../domain/template/render';
import type { LoadedTokenizer } from '../../domain/tokenizer';
import type { Judge } from './judge';
import { type Probe, probeSetHash } from './probes';
import { type Segment, type EvalCondition, EvalSettingsError } from './conditions';
import {
  type Sample,
  type EvalResult,
  type EvalSettings,
  type Manifest,
  type ShardOf,
  RESULTS,
  PROBES,
  SKIPPED,
  type ResultProblem,
  readResults,
  lockRun,
  type Skipped,
  openRun,
} from './runFolder';

export * from './conditions';
export * from './runFolder';

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
