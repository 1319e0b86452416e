/**
 * piggyback: the headless audit for CI. Same core as the extension; JSON output is a public interface.
 * Exit codes: 0 clean, 1 an error-level finding, 2 bad usage or an unexpected failure.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { DatasetReport } from '../domain/dataset/audit';
import { type Finding, hasErrors } from '../domain/findings';
import {
  auditDatasetWith,
  auditFolder,
  datasetFindings,
  prepareTemplate,
  type PreparedTemplate,
  pairTemplateSource,
  preparePromptTemplate,
  type PromptTemplate,
  PromptTemplateError,
  renderOptions,
} from '../app/audits';
import { HostClient, HostCrashedError, HostRequestError } from '../app/hostClient';
import {
  GENERAL_PROBES,
  heldOutProbes,
  loadProbeFile,
  otherDomainProbeSets,
  type Probe,
  ProbeFileError,
} from '../app/eval/probes';
import { Judge, JudgeConfigError } from '../app/eval/judge';
import { compareMarkdown, evalMarkdown, loadRunPair, writeRunReports } from '../app/eval/evalReport';
import { defaultConditions, EvalSettingsError, layerSweepConditions, runEval } from '../app/eval/run';
import { DEFAULT_QUERY, LensSession } from '../app/session';
import { type TreftExportResult, writeTreftExport } from '../app/treft';
import { assertRegularFile } from '../domain/files';
import type { HostSettings, PatchSpan } from '../contracts/modelHost';
import { datasetJson, folderJson, templateJson, toMarkdown, toSarif, TOOL_VERSION } from '../app/auditReport';

const USAGE = `piggyback ${TOOL_VERSION}: where a chat template carries a finetune's behaviour onto every query

Usage:
  piggyback template <source> [--tokenizer <dir|tokenizer.json>] [--name <template>] [--kwargs <json>] [--json]
  piggyback dataset <file.jsonl> --template <source> [--tokenizer ...] [--kwargs <json>] [--json]
  piggyback audit <folder> [--template <source>] [--sarif <out.sarif>] [--md <out.md>] [--json]
  piggyback drift --base <dir> --finetuned <dir> [--template <source>] [--prompt <text>] [--json]
  piggyback patch --base <dir> --finetuned <dir> --prompt <text> [--span prefix|postfix|both|query] [--template <source>] [--json]
  piggyback eval --base <dir> --finetuned <dir> --out <dir> [--probes <file.jsonl|.yaml> ...] [--dataset <train.jsonl>] [--other-dataset <other.jsonl>]
                 [--extra name=<dir>] [--max-new-tokens N] [--temperature T --samples N] [--seed N] [--perturb-trials N] [--layer-sweep]
                 [--judge-endpoint <url> --judge-model <id> [--judge-timeout <s>] [--judge-concurrency 4]] [--sarif <out.sarif>]
  piggyback compare <run-dir> <run-dir> [--md <out.md>]
  piggyback treft-export <train.jsonl> --out <dir> [--base <dir>] [--template <source>]

<source> is tokenizer_config.json, chat_template.jinja, chat_template.json, any .jinja file, or a model folder.
A checkpoint (--base, --finetuned, --extra) is a Hugging Face folder (config.json + safetensors; llama, mistral, qwen2,
qwen3), a PEFT LoRA adapter folder over --base, or an ONNX decoder export. --cache-dir <dir> (default
PIGGYBACK_CACHE_DIR or ~/.cache/piggyback-lens) keeps weights converted to the dtype the graph runs in. Model commands
run with --threads N (default: every core) and --execution-provider auto|cpu|cuda; --model-file picks one graph of
an ONNX folder with several (onnx/model_q4.onnx, or just q4); --weights-dtype auto|float32|float16 sets the dtype
of a Hugging Face model's matrices (auto: float16 on CUDA); --no-memory-check loads even when memory looks short.
--kwargs passes template variables as the trainer does, e.g. '{"enable_thinking": false}'.
eval: re-running with the same --out resumes (--resume: continue, and fail when there is no run to continue);
--perturb-trials 0 leaves out the perturbation conditions; --layer-sweep adds the prefix patch per layer and per layer
range (scored, not generated). A judge is
any OpenAI-compatible endpoint (e.g. http://127.0.0.1:11434/v1); its key comes from PIGGYBACK_JUDGE_API_KEY.
Exit code 1 when an error-level finding exists (eval: piggyback risk high) or a command fails, 2 on bad usage;
--debug adds the stack trace to an unexpected error.`;

class UsageError extends Error {}

const OPTIONS = {
  tokenizer: { type: 'string' },
  template: { type: 'string' },
  name: { type: 'string' },
  kwargs: { type: 'string' },
  json: { type: 'boolean' },
  sarif: { type: 'string' },
  md: { type: 'string' },
  base: { type: 'string' },
  finetuned: { type: 'string' },
  prompt: { type: 'string' },
  span: { type: 'string' },
  'max-new-tokens': { type: 'string' },
  out: { type: 'string' },
  probes: { type: 'string', multiple: true },
  dataset: { type: 'string' },
  'other-dataset': { type: 'string', multiple: true },
  extra: { type: 'string', multiple: true },
  temperature: { type: 'string' },
  samples: { type: 'string' },
  seed: { type: 'string' },
  'perturb-trials': { type: 'string' },
  'judge-endpoint': { type: 'string' },
  'judge-model': { type: 'string' },
  'judge-timeout': { type: 'string' },
  'judge-concurrency': { type: 'string' },
  'cache-dir': { type: 'string' },
  threads: { type: 'string' },
  'execution-provider': { type: 'string' },
  'model-file': { type: 'string' },
  'weights-dtype': { type: 'string' },
  'no-memory-check': { type: 'boolean' },
  resume: { type: 'boolean' },
  'layer-sweep': { type: 'boolean' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const;

export async function main(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  let parsed: ReturnType<typeof parseArgs<{ args: string[]; allowPositionals: true; options: typeof OPTIONS }>>;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: OPTIONS,
    });
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.version) {
    out(`${TOOL_VERSION}\n`);
    return 0;
  }
  const [command, target] = positionals;
  if (values.help || !command) {
    out(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  try {
    const kwargs = parseKwargs(values.kwargs);
    const common = { tokenizer: values.tokenizer, name: values.name, kwargs };
    switch (command) {
      case 'template': {
        if (!target) throw new UsageError('template needs a <source>');
        const p = prepareTemplate(path.resolve(target), common);
        out(values.json ? JSON.stringify(templateJson(p), null, 2) + '\n' : describeTemplate(p));
        return hasErrors(p.findings) ? 1 : 0;
      }
      case 'dataset': {
        if (!target) throw new UsageError('dataset needs a <file.jsonl>');
        if (!values.template) throw new UsageError('dataset needs --template <source>');
        if (!fs.existsSync(target)) throw new UsageError(`no such file: ${target}`);
        try {
          assertRegularFile(target);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        const p = prepareTemplate(path.resolve(values.template), common);
        const report = await auditDatasetWith(path.resolve(target), p);
        const findings = [...p.findings.filter((f) => f.severity === 'error'), ...datasetFindings(report)];
        if (values.json) out(JSON.stringify({ ...datasetJson(report), template: templateJson(p) }, null, 2) + '\n');
        else out(describeFindings(findings) + describeSurface(report));
        return hasErrors(findings) ? 1 : 0;
      }
      case 'audit': {
        const root = path.resolve(target ?? '.');
        if (!fs.existsSync(root) || !fs.statSync(root).isDirectory()) throw new UsageError(`not a folder: ${root}`);
        const a = await auditFolder(root, { ...common, template: values.template });
        if (values.sarif) fs.writeFileSync(values.sarif, JSON.stringify(toSarif(a.findings, root), null, 2) + '\n');
        if (values.md) fs.writeFileSync(values.md, toMarkdown(a));
        out(values.json ? JSON.stringify(folderJson(a), null, 2) + '\n' : toMarkdown(a));
        return hasErrors(a.findings) ? 1 : 0;
      }
      case 'eval':
        return await evalCommand(values, out);
      case 'compare':
        return compareCommand(positionals.slice(1), values, out);
      case 'treft-export':
        return await treftExportCommand(target, values, out);
      case 'drift':
      case 'patch':
        return await modelCommand(command, values, out);
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`piggyback: ${e.message}\n\n${USAGE}\n`);
      return 2;
    }
    process.stderr.write(unexpected(e, values.debug === true));
    return 1;
  }
}

/** An error nobody anticipated: one line for the user; the trace only with --debug. */
function unexpected(e: unknown, debug: boolean): string {
  const message = e instanceof Error ? e.message : String(e);
  const first = message.split('\n')[0] || (e instanceof Error ? e.name : 'error');
  return `piggyback: ${first}${debug ? `\n${(e as Error).stack ?? ''}` : ' (run with --debug for the trace)'}\n`;
}

/** eval: a run as files (manifest, results.jsonl, summary, Markdown and HTML reports, SARIF); re-running resumes it. */
async function evalCommand(values: Values, out: (s: string) => void): Promise<number> {
  const base = values.base as string | undefined;
  const finetuned = values.finetuned as string | undefined;
  const dir = values.out as string | undefined;
  if (!base || !finetuned || !dir) throw new UsageError('eval needs --base <dir>, --finetuned <dir> and --out <dir>');
  const extra: Record<string, string> = {};
  for (const e of (values.extra as string[] | undefined) ?? []) {
    const [name, folder] = e.split('=');
    if (!name || !folder) throw new UsageError(`--extra wants name=<dir>, got "${e}"`);
    extra[name] = path.resolve(folder);
  }
  const number = (key: keyof typeof NUMBER_OPTIONS) => numberOption(values, key);
  let judge: Judge | undefined;
  const endpoint = values['judge-endpoint'] as string | undefined;
  const judgeModel = values['judge-model'] as string | undefined;
  if (endpoint || judgeModel) {
    if (!endpoint || !judgeModel)
      throw new UsageError('a judge needs both --judge-endpoint <url> and --judge-model <id>');
    const seconds = number('judge-timeout');
    try {
      judge = new Judge({
        endpoint,
        model: judgeModel,
        apiKey: process.env.PIGGYBACK_JUDGE_API_KEY || undefined,
        timeoutMs: seconds === undefined ? undefined : 1000 * seconds,
      });
    } catch (e) {
      throw e instanceof JudgeConfigError ? new UsageError(e.message) : e;
    }
  }
  let probes: Probe[];
  try {
    const files = (values.probes as string[] | undefined) ?? [];
    probes = files.length ? files.flatMap((f) => loadProbeFile(f)) : [...GENERAL_PROBES];
    const seen = new Set<string>();
    for (const pr of probes) {
      if (seen.has(pr.id))
        throw new UsageError(
          `probe id "${pr.id}" appears in more than one --probes file; ids must be unique across them`,
        );
      seen.add(pr.id);
    }
    if (values.dataset) probes.push(...heldOutProbes(values.dataset as string));
    probes.push(...otherDomainProbeSets((values['other-dataset'] as string[] | undefined) ?? []));
  } catch (e) {
    if (e instanceof ProbeFileError) {
      process.stderr.write(`piggyback: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  const trials = number('perturb-trials');
  const numbers = {
    judgeConcurrency: number('judge-concurrency'),
    maxNewTokens: number('max-new-tokens'),
    temperature: number('temperature'),
    samples: number('samples'),
    seed: number('seed'),
  };
  const settings = hostSettings(values);
  const conditions = defaultConditions(Object.keys(extra), trials !== 0);
  const p = modelPromptTemplate(values, finetuned, base);
  return withHost(async (host) => {
    const loaded = await host.load({
      base: path.resolve(base),
      finetuned: path.resolve(finetuned),
      extra,
      cacheDir: cacheDir(values),
      settings,
    });
    if (values['layer-sweep']) conditions.push(...layerSweepConditions(loaded.finetuned.layers));
    try {
      const run = await runEval({
        host,
        loaded,
        template: p.template,
        templateFile: p.source?.file,
        tokenizer: p.tokenizer,
        render: renderOptions(p),
        probes,
        conditions,
        out: dir,
        judge,
        ...numbers,
        perturb: { trials },
        resume: values.resume === true,
        // a terminal gets one updating line; a CI log a line every 10 probes
        onProbe: (i, n) =>
          process.stderr.isTTY
            ? process.stderr.write(`\rprobe ${i + 1}/${n}`)
            : (i + 1) % 10 === 0 && process.stderr.write(`probe ${i + 1}/${n}\n`),
      });
      for (const pr of run.problems)
        process.stderr.write(`\n${path.join(dir, 'results.jsonl')}:${pr.line}: ${pr.message}`);
    } catch (e) {
      if (e instanceof EvalSettingsError) {
        process.stderr.write(`piggyback: ${e.message}\n`);
        return 2;
      }
      if (e instanceof JudgeConfigError) {
        process.stderr.write(
          `\npiggyback: ${e.message} (finished probes are kept in ${dir}; fix the judge and re-run to resume)\n`,
        );
        return 1;
      }
      throw e;
    }
    process.stderr.write('\n');
    const { manifest, summary, findings, skipped } = writeRunReports(dir, process.cwd());
    if (values.sarif) fs.copyFileSync(path.join(dir, 'findings.sarif'), values.sarif as string);
    out(evalMarkdown(manifest, summary, skipped));
    out(describeFindings(findings));
    return hasErrors(findings) ? 1 : 0;
  });
}

function compareCommand(dirs: string[], values: Values, out: (s: string) => void): number {
  if (dirs.length !== 2) throw new UsageError('compare needs two run folders');
  let runs: ReturnType<typeof loadRunPair>;
  try {
    runs = loadRunPair(dirs[0], dirs[1]);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const md = compareMarkdown(...runs);
  if (values.md) fs.writeFileSync(values.md as string, md);
  out(md);
  return 0;
}

/** treft-export: per-row positions, the base model's prefix K/V and the recipe for a trainer. */
async function treftExportCommand(
  dataset: string | undefined,
  values: Values,
  out: (s: string) => void,
): Promise<number> {
  const dir = values.out as string | undefined;
  const base = values.base as string | undefined;
  if (!dataset || !dir) throw new UsageError('treft-export needs <train.jsonl> and --out <dir>');
  if (!fs.existsSync(dataset)) throw new UsageError(`no such file: ${dataset}`);
  if (!values.template && !base)
    throw new UsageError('treft-export needs --template <source> or --base <dir> (whose template the trainer uses)');
  const p = modelPromptTemplate(values, (values.template as string | undefined) ?? base!);
  const common = {
    dataset: path.resolve(dataset),
    template: p.template,
    templateFile: p.source?.file ?? '',
    tokenizer: p.tokenizer,
    render: renderOptions(p),
    out: dir,
  };
  const report = (r: TreftExportResult): number => {
    const groups = r.positions.prefixes
      .map((g, i) => `  prefix ${i}: ${g.ids.length} tokens, ${g.rows} rows`)
      .join('\n');
    out(
      `${r.positions.rows.length - r.skipped} rows with positions, ${r.skipped} skipped\n${groups}\nwrote ${r.files.join(', ')}\n`,
    );
    for (const row of r.positions.rows.filter((x) => x.error).slice(0, 10))
      process.stderr.write(`${dataset}:${row.line}: ${row.error}\n`);
    return r.skipped === r.positions.rows.length ? 1 : 0;
  };
  if (!base) return report(await writeTreftExport(common));
  const settings = hostSettings(values);
  return withHost(async (host) => {
    const loaded = await host.load({
      base: path.resolve(base),
      finetuned: path.resolve(base),
      cacheDir: cacheDir(values),
      settings,
    });
    return report(await writeTreftExport({ ...common, host, base: loaded.base }));
  });
}

/** The numeric options and their ranges: anything else is a usage error (exit 2) before any work starts. */
const NUMBER_OPTIONS = {
  'max-new-tokens': { integer: true, min: 1, max: 100_000 },
  temperature: { integer: false, min: 0, max: 10 },
  samples: { integer: true, min: 1, max: 1000 },
  seed: { integer: true, min: 0, max: 2 ** 32 - 1 },
  'perturb-trials': { integer: true, min: 0, max: 10_000 },
  'judge-timeout': { integer: false, min: 0.001, max: 86_400 },
  'judge-concurrency': { integer: true, min: 1, max: 64 },
} as const;

function numberOption(values: Values, key: keyof typeof NUMBER_OPTIONS): number | undefined {
  const v = values[key] as string | undefined;
  if (v === undefined) return undefined;
  const r = NUMBER_OPTIONS[key];
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || (r.integer && !Number.isInteger(n)) || n < r.min || n > r.max) {
    throw new UsageError(
      `--${key} wants ${r.integer ? 'a whole number' : 'a number'} from ${r.min} to ${r.max}, got "${v}"`,
    );
  }
  return n;
}

const cacheDir = (values: Values) => (values['cache-dir'] ? path.resolve(values['cache-dir'] as string) : undefined);

/** --threads, --execution-provider, --model-file, --no-memory-check: how the host runs the models. */
function hostSettings(values: Values): HostSettings {
  const s: HostSettings = {};
  if (values.threads !== undefined) {
    const t = values.threads as string;
    if (!/^[1-9]\d*$/.test(t)) throw new UsageError(`--threads wants a whole number of at least 1, got "${t}"`);
    s.threads = Number(t);
  }
  const ep = values['execution-provider'] as string | undefined;
  if (ep !== undefined) {
    if (ep !== 'auto' && ep !== 'cpu' && ep !== 'cuda')
      throw new UsageError(`--execution-provider must be auto, cpu or cuda, got "${ep}"`);
    s.executionProvider = ep;
  }
  if (values['model-file']) s.modelFile = values['model-file'] as string;
  const wd = values['weights-dtype'] as string | undefined;
  if (wd !== undefined) {
    if (wd !== 'auto' && wd !== 'float32' && wd !== 'float16')
      throw new UsageError(`--weights-dtype must be auto, float32 or float16, got "${wd}"`);
    s.weightsDtype = wd;
  }
  if (values['no-memory-check']) s.memoryCheck = false;
  return s;
}

type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** The template and tokenizer that render prompts for the model commands (default: the finetuned folder's, or
 * the base's when the finetuned checkpoint is an adapter without its own). */
function modelPromptTemplate(values: Values, finetuned: string, base?: string): PromptTemplate {
  try {
    return preparePromptTemplate(
      path.resolve((values.template as string | undefined) ?? pairTemplateSource(finetuned, base)),
      { tokenizer: values.tokenizer as string | undefined, kwargs: parseKwargs(values.kwargs as string | undefined) },
    );
  } catch (e) {
    if (!(e instanceof PromptTemplateError)) throw e;
    process.stderr.write(describeFindings(e.prepared.findings));
    throw new UsageError(e.missing === 'tokenizer' ? `${e.message} (use --tokenizer)` : `${e.message} (see above)`);
  }
}

/** Runs `fn` with a model host: a host error or crash is exit code 1 with its message, and the host always goes. */
async function withHost(fn: (host: HostClient) => Promise<number>): Promise<number> {
  const host = new HostClient({
    script: path.join(__dirname, 'host.js'),
    onLog: (level, m) =>
      (level === 'error' || level === 'load') && process.stderr.write(`${level === 'error' ? 'host: ' : ''}${m}\n`),
  });
  try {
    return await fn(host);
  } catch (e) {
    if (e instanceof HostRequestError || e instanceof HostCrashedError) {
      process.stderr.write(`piggyback: ${e.message}\n`);
      return 1;
    }
    throw e;
  } finally {
    await host.dispose();
  }
}

/** drift and patch: the model host in its own process, fed by the same template and tokenizer as the audit. */
async function modelCommand(command: 'drift' | 'patch', values: Values, out: (s: string) => void): Promise<number> {
  const base = values.base as string | undefined;
  const finetuned = values.finetuned as string | undefined;
  if (!base || !finetuned) throw new UsageError(`${command} needs --base <dir> and --finetuned <dir>`);
  if (command === 'patch' && !values.prompt) throw new UsageError('patch needs --prompt <text>');
  const span = (values.span as string | undefined) ?? 'prefix';
  if (!['prefix', 'postfix', 'both', 'query'].includes(span))
    throw new UsageError('--span must be prefix, postfix, both or query');
  const maxNewTokens = numberOption(values, 'max-new-tokens');
  const settings = hostSettings(values);
  const p = modelPromptTemplate(values, finetuned, base);
  const query = (values.prompt as string | undefined) ?? DEFAULT_QUERY;
  return withHost(async (host) => {
    const loaded = await host.load({
      base: path.resolve(base),
      finetuned: path.resolve(finetuned),
      cacheDir: cacheDir(values),
      settings,
    });
    const session = new LensSession(host, loaded, p);
    if (command === 'drift') {
      const { query: _, ...result } = await session.drift(query);
      out(values.json ? JSON.stringify(result, null, 2) + '\n' : describeDrift(result));
    } else {
      const { query: _, ...result } = await session.patch(query, span as PatchSpan, maxNewTokens);
      out(
        values.json
          ? JSON.stringify(result, null, 2) + '\n'
          : `span: ${span} (${result.patchedPositions.length} positions)\nKL(base||finetuned) ${result.kl.finetuned.toFixed(4)}  KL(base||patched) ${result.kl.patched.toFixed(4)}\nbase:      ${show(result.generations.base)}\nfinetuned: ${show(result.generations.finetuned)}\npatched:   ${show(result.generations.patched)}\n`,
      );
    }
    return 0;
  });
}

function describeDrift(d: {
  layers: number;
  segments: Record<string, { tokens: { text: string }[]; key: number[][]; mean: number }>;
  treft: number;
}): string {
  const lines = [`TReFT value (prefix K/V drift): ${d.treft.toExponential(3)}`];
  for (const [name, s] of Object.entries(d.segments)) {
    const perLayer = s.key.map((row) => (row.length ? row.reduce((a, b) => a + b, 0) / row.length : 0));
    lines.push(
      `${name.padEnd(8)} mean ${s.mean.toExponential(3)}  K drift by layer: ${perLayer.map((x) => x.toExponential(2)).join(' ')}  (${s.tokens.length} tokens)`,
    );
  }
  return lines.join('\n') + '\n';
}

function parseKwargs(text: string | undefined): Record<string, unknown> {
  if (!text) return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--kwargs must be a JSON object: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new UsageError('--kwargs must be a JSON object');
  return v as Record<string, unknown>;
}

const show = (s: string) => JSON.stringify(s);

function describeTemplate(p: PreparedTemplate): string {
  const lines: string[] = [];
  if (p.source)
    lines.push(
      `template: ${p.source.file} (${p.source.name})`,
      `tokenizer: ${p.tokenizer?.file ?? 'none (no token counts)'}`,
    );
  const seg = p.audit?.segments;
  if (seg) {
    for (const name of ['prefix', 'query', 'postfix'] as const) {
      const s = seg[name];
      lines.push(
        `${name.padEnd(8)} ${seg.tokenized ? `${String(s.tokens.length).padStart(4)} tokens ` : ''}${show(s.text)}`,
      );
    }
  }
  return lines.join('\n') + '\n' + describeFindings(p.findings);
}

function describeFindings(findings: Finding[]): string {
  if (findings.length === 0) return 'no findings\n';
  return (
    findings.map((f) => `${f.file ?? ''}:${f.line}:${f.column}: ${f.severity} ${f.code}: ${f.message}`).join('\n') +
    '\n'
  );
}

function describeSurface(r: DatasetReport): string {
  const s = r.surface;
  const lines = [`rows: ${r.rows} (${r.validRows} valid), format: ${r.format}`];
  if (s) {
    lines.push(
      `identical prefix share: ${(100 * s.identicalPrefixShare).toFixed(1)}% (${s.distinctPrefixes} distinct), identical postfix share: ${(100 * s.identicalPostfixShare).toFixed(1)}%`,
      `prefix tokens: ${s.prefixTokens ?? 'n/a'}, postfix tokens: ${s.postfixTokens ?? 'n/a'}, median query tokens: ${s.medianQueryTokens ?? 'n/a'}`,
      `prefix: ${show(s.prefix)}`,
      `postfix: ${show(s.postfix)}`,
    );
  }
  return lines.join('\n') + '\n';
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e) => {
      process.stderr.write(unexpected(e, process.argv.includes('--debug')));
      process.exitCode = 1;
    },
  );
}
