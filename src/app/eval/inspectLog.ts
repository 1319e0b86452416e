/**
 * A run folder as an Inspect AI eval log (its `.json` log format, version 2), so that a run opens in Inspect View
 * and in Inspect's VS Code extension beside a team's other evals.
 *
 * The mapping: one Inspect sample per probe (id = the probe's id, epoch 1); its input is the probe's question (or
 * its messages, with a system prompt or earlier turns), its target the aligned reference answer where the probe
 * has one, its output the finetuned model's answer. Scores are per condition: `kl/<condition>` (mean KL(base ||
 * condition) over the fixed response, nats), `margin/<condition>` (log p(aligned) - log p(misaligned)) and, with a
 * judge, `judge/<condition>`; each score's `answer` is that condition's own answer, so every condition's output is
 * on the sample. The eval's results hold each score's mean over the general and the in-domain probes, and the
 * run's two answers (behaviour shift; where it lives) as metadata. Checkpoints are named by their folder names,
 * never by this machine's paths: a log is shared.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type RunFiles, loadRun, runProbes, runVerdict } from './evalReport';
import inspectModels from './inspectModels.json';
import type { Probe } from './probes';
import type { ConditionSummary } from './summary';
import { type EvalResult, MANIFEST, RESULTS } from './runFolder';

type Json = Record<string, unknown>;

/**
 * What a score key measures: its Inspect scorer name, how a row gives a sample's value, and the run summary's
 * figures for it over the general and the in-domain probes (the very numbers report.md prints).
 */
const SCORERS: {
  name: string;
  value: (r: EvalResult) => number | null;
  metrics: (c: ConditionSummary) => Record<string, number | null | undefined>;
}[] = [
  {
    name: 'kl',
    value: (r) => r.klToBase,
    metrics: (c) => ({ mean_general: c.general?.meanKlToBase, mean_in_domain: c.inDomain?.meanKlToBase }),
  },
  {
    name: 'margin',
    value: (r) => r.margin,
    metrics: (c) => ({
      mean_general: c.general?.meanMargin,
      mean_in_domain: c.inDomain?.meanMargin,
      aligned_preferred_general: c.general?.alignedPreferred,
    }),
  },
  {
    name: 'judge',
    value: (r) => {
      const aligned = r.samples[0]?.judge?.aligned;
      return typeof aligned === 'number' ? aligned : null;
    },
    metrics: (c) => ({
      mean_aligned_general: c.judged?.general?.meanAligned,
      mean_aligned_in_domain: c.judged?.inDomain?.meanAligned,
      misaligned_share_general: c.judged?.general?.misalignedShare,
    }),
  },
];

const iso = (file: string) => fs.statSync(file).mtime.toISOString();

/** The probe's conversation as Inspect messages: the system prompt, earlier turns, then the question. */
function input(p: Probe): string | Json[] {
  if (!p.system && !p.history?.length) return p.question;
  return [
    ...(p.system ? [{ role: 'system', content: p.system }] : []),
    ...(p.history ?? []).map((m) => ({ role: m.role === 'assistant' ? 'assistant' : 'user', content: m.content })),
    { role: 'user', content: p.question },
  ];
}

function sample(p: Probe, rows: EvalResult[], finetuned: string, skipped: string | undefined): Json {
  const ft = rows.find((r) => r.condition === 'finetuned');
  const scores: Record<string, Json> = {};
  for (const r of rows)
    for (const s of SCORERS) {
      const value = s.value(r);
      if (value === null) continue;
      scores[`${s.name}/${r.condition}`] = {
        value,
        answer: r.generation,
        ...(r.samples.length > 1
          ? { metadata: { samples: r.samples.map((x) => ({ text: x.text, seed: x.seed })) } }
          : {}),
        ...(s.name === 'judge' && typeof r.samples[0]?.judge?.coherent === 'number'
          ? { explanation: `coherent: ${r.samples[0].judge.coherent}` }
          : {}),
      };
    }
  const messages = typeof input(p) === 'string' ? [{ role: 'user', content: p.question }] : (input(p) as Json[]);
  const answer = ft?.generation ?? '';
  return {
    id: p.id,
    epoch: 1,
    input: input(p),
    target: p.aligned ?? '',
    messages: ft
      ? [...messages, { role: 'assistant', content: answer, source: 'generate', model: finetuned }]
      : messages,
    output: {
      model: finetuned,
      // the host stops at an end-of-turn token or at the new-token budget; which one is not recorded
      choices: ft
        ? [
            {
              message: { role: 'assistant', content: answer, source: 'generate', model: finetuned },
              stop_reason: 'unknown',
            },
          ]
        : [],
      completion: answer,
    },
    scores,
    metadata: {
      category: p.category ?? null,
      ...(p.misaligned !== undefined ? { misaligned: p.misaligned } : {}),
    },
    ...(skipped ? { error: { message: skipped, traceback: '', traceback_ansi: '' } } : {}),
  };
}

type Default = { value: unknown } | { model: string };
const MODELS = inspectModels.models as unknown as Record<
  string,
  { order: string[]; defaults: Record<string, Default> }
>;

/** Where the models this log writes hold other models: a field's model, a list's, a record's (by key). */
const NESTED: Record<string, Record<string, string | [string] | { each: string }>> = {
  EvalLog: { eval: 'EvalSpec', plan: 'EvalPlan', results: 'EvalResults', stats: 'EvalStats', samples: ['EvalSample'] },
  EvalSpec: { dataset: 'EvalDataset', config: 'EvalConfig', model_generate_config: 'GenerateConfig' },
  EvalPlan: { steps: ['EvalPlanStep'], config: 'GenerateConfig' },
  EvalResults: { scores: ['EvalScore'] },
  EvalScore: { metrics: { each: 'EvalMetric' } },
  EvalSample: { input: ['ChatMessage'], messages: ['ChatMessage'], output: 'ModelOutput', scores: { each: 'Score' } },
  ModelOutput: { choices: ['ChatCompletionChoice'] },
  ChatCompletionChoice: { message: 'ChatMessageAssistant' },
};
const MESSAGE_MODELS: Record<string, string> = {
  system: 'ChatMessageSystem',
  user: 'ChatMessageUser',
  assistant: 'ChatMessageAssistant',
  tool: 'ChatMessageTool',
};

/**
 * `obj` as Inspect's writer (pydantic's to_json of the log, None included) writes a `model`: every field, in declaration order, the
 * model's defaults where `obj` has none; nested models likewise (inspectModels.json, from Inspect's source).
 */
function dump(model: string, obj: Json): Json {
  if (model === 'ChatMessage') return dump(MESSAGE_MODELS[String(obj.role)] ?? 'ChatMessageUser', obj);
  const m = MODELS[model];
  for (const k of Object.keys(obj))
    if (!m.order.includes(k)) throw new Error(`internal error: Inspect's ${model} has no field ${k}`);
  const out: Json = {};
  for (const f of m.order) {
    if (f in obj) {
      const nested = NESTED[model]?.[f];
      const v = obj[f];
      out[f] =
        nested === undefined || v === null || typeof v !== 'object'
          ? v
          : Array.isArray(nested)
            ? (v as Json[]).map((x) => dump(nested[0], x))
            : typeof nested === 'string'
              ? dump(nested, v as Json)
              : Object.fromEntries(
                  Object.entries(v as Record<string, Json>).map(([k, x]) => [k, dump(nested.each, x)]),
                );
    } else if (f in m.defaults) {
      const d = m.defaults[f];
      out[f] = 'model' in d ? dump(d.model, {}) : structuredClone(d.value);
    }
  }
  return out;
}

/** The run in `dir` as an Inspect eval log (a plain object; JSON.stringify it), every field as Inspect writes it. */
export function inspectLog(dir: string, run: RunFiles = loadRun(dir)): Json {
  const log = logOf(dir, run);
  // the log's own metadata is the eval's (Inspect recomputes it so on reading, and writes it so)
  return dump('EvalLog', { ...log, metadata: (log.eval as Json).metadata });
}

/** The run in `dir` as an Inspect eval log: the fields this product fills. */
function logOf(dir: string, run: RunFiles): Json {
  const { manifest: m, results, summary, skipped, progress } = run;
  const name = (folder: string) => path.basename(folder);
  const finetuned = name(m.checkpoints.finetuned.folder);
  const probes = runProbes(dir, results);
  const byProbe = new Map<string, EvalResult[]>();
  for (const r of results) byProbe.set(r.probe, [...(byProbe.get(r.probe) ?? []), r]);
  const skippedWhole = new Map(skipped.filter((s) => !s.condition).map((s) => [s.probe, s.reason]));
  const conditions = m.conditions.map((c) => c.label);
  const samples = probes.map((p) => sample(p, byProbe.get(p.id) ?? [], finetuned, skippedWhole.get(p.id)));

  // each score key's figures from the run summary, per condition
  const scores: Json[] = [];
  for (const s of SCORERS)
    for (const c of summary.conditions) {
      const scored = results.filter((r) => r.condition === c.label && s.value(r) !== null).length;
      if (!scored) continue;
      const metrics: Record<string, Json> = {};
      for (const [metric, value] of Object.entries(s.metrics(c)))
        if (typeof value === 'number') metrics[metric] = { name: metric, value };
      const key = `${s.name}/${c.label}`;
      scores.push({ name: key, scorer: key, scored_samples: scored, metrics });
    }
  const finished = progress.done >= progress.expected;
  const verdict = runVerdict(summary, progress);
  const created = iso(path.join(dir, MANIFEST));
  const resultsFile = path.join(dir, RESULTS);
  return {
    version: 2,
    // an unfinished run is resumable (re-run the same eval): Inspect's word for a log still being written
    status: finished ? 'success' : 'started',
    eval: {
      eval_id: m.runId ?? '',
      run_id: m.runId ?? '',
      created,
      task: 'piggyback-lens/eval',
      task_id: m.runId ?? '',
      dataset: {
        name: 'probes',
        location: 'probes.jsonl',
        samples: probes.length,
        sample_ids: probes.map((p) => p.id),
        shuffled: false,
      },
      model: `piggyback-lens/${finetuned}`,
      config: { epochs: 1 },
      // the version that made the run (the manifest's "piggyback-lens 0.1.0")
      packages: { 'piggyback-lens': m.tool.replace(/^piggyback-lens /, '') },
      metadata: {
        base: name(m.checkpoints.base.folder),
        finetuned,
        extra: Object.fromEntries(Object.entries(m.checkpoints.extra ?? {}).map(([k, v]) => [k, name(v.folder)])),
        conditions,
        device: m.checkpoints.finetuned.device ?? 'cpu',
        template_sha256: m.template.sha256,
        settings: m.settings,
      },
    },
    plan: {
      name: 'plan',
      steps: [{ solver: 'piggyback-lens/conditions', params: { conditions } }],
      config: {
        max_tokens: m.settings.maxNewTokens,
        ...(m.settings.decoding === 'sampled' ? { temperature: m.settings.temperature, seed: m.settings.seed } : {}),
      },
    },
    results: {
      total_samples: probes.length,
      completed_samples: samples.filter((s) => !s.error && Object.keys(s.scores as Json).length).length,
      scores,
      metadata: {
        finished,
        rows: { done: progress.done, expected: progress.expected },
        ...(verdict
          ? { behaviour_shift: verdict.shift.text, where_it_lives: verdict.carrier.text, not_a_safety_verdict: true }
          : {}),
        piggyback_share: summary.piggybackShare,
      },
    },
    stats: {
      started_at: created,
      completed_at: finished && fs.existsSync(resultsFile) ? iso(resultsFile) : '',
      model_usage: {},
    },
    samples,
  };
}

/** Writes the run's Inspect log to `file` (whole or not at all: written beside it, then renamed over it). */
export function writeInspectLog(dir: string, file: string, run?: RunFiles): void {
  const text = JSON.stringify(inspectLog(dir, run), null, 2) + '\n';
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}
