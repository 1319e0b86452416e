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
  auditDatasetFile,
  datasetRows,
  rowLocation,
  auditFolder,
  datasetFindings,
  prepareTemplate,
  type PreparedTemplate,
  type PrepareOptions,
  pairTemplateSource,
  preparePromptTemplate,
  type PromptTemplate,
  PromptTemplateError,
  renderOptions,
} from '../app/audits';
import { HostClient, HostCrashedError, HostRequestError } from '../app/hostClient';
import { ProbeFileError } from '../app/eval/probes';
import { type EvalPlan, EvalRequestError, parseShard, planEval } from '../app/eval/request';
import { Judge, JudgeConfigError } from '../app/eval/judge';
import { compareMarkdown, evalMarkdown, loadRunPair, quantizedNote, writeRunReports } from '../app/eval/evalReport';
import { EvalSettingsError } from '../app/eval/run';
import { MergeError, type MergeResult, mergeRuns } from '../app/eval/merge';
import { DEFAULT_QUERY, LensSession } from '../app/session';
import { type TreftExportResult, treftOutputProblem, writeTreftExport } from '../app/treft';
import { assertRegularFile } from '../domain/files';
import { normaliseRow } from '../domain/dataset/formats';
import { readLines } from '../domain/dataset/lines';
import {
  auditLoss,
  contextLength,
  LOSS_MODES,
  LOSS_SETTINGS,
  type LossMode,
  type LossSetting,
  resolveLoss,
  trainingView,
} from '../domain/dataset/training';
import {
  type HostSettings,
  type LoadParams,
  type LoadResult,
  type PatchSpan,
  WEIGHTS_DTYPES,
  type WeightsDtypeSetting,
} from '../contracts/modelHost';
import {
  datasetJson,
  folderJson,
  templateJson,
  toMarkdown,
  toSarif,
  toTerminal,
  TOOL_VERSION,
} from '../app/auditReport';

const USAGE = `piggyback ${TOOL_VERSION}: where a chat template carries a finetune's behaviour onto every query

Usage (piggyback help <command> for one command's options):
  piggyback template <source> [--tokenizer <dir|tokenizer.json>] [--name <template>] [--kwargs <json>] [--json]
  piggyback dataset <file.jsonl> --template <source> [--tokenizer ...] [--kwargs <json>] [--json]
  piggyback audit <folder> [--template <source>] [--sarif <out.sarif>] [--md <out.md>] [--json]
  piggyback drift --base <dir> --finetuned <dir> [--template <source>] [--prompt <text>] [--json]
  piggyback patch --base <dir> --finetuned <dir> --prompt <text> [--span prefix|postfix|both|query] [--template <source>] [--json]
  piggyback eval --base <dir> --finetuned <dir> --out <dir> [--probes <file.jsonl|.yaml> ...] [--dataset <train.jsonl>] [--other-dataset <other.jsonl>]
                 [--extra name=<dir>] [--max-new-tokens N] [--temperature T --samples N] [--seed N] [--perturb-trials N] [--layer-sweep]
                 [--judge-endpoint <url> --judge-model <id> [--judge-timeout <s>] [--judge-concurrency 4]] [--sarif <out.sarif>] [--shard i/N]
  piggyback merge <shard-run-dir>... --out <dir> [--sarif <out.sarif>]
  piggyback compare <run-dir> <run-dir> [--md <out.md>]
  piggyback treft-export <train.jsonl> --out <dir> [--base <dir>] [--template <source>]

<source> is tokenizer_config.json, chat_template.jinja, chat_template.json, any .jinja file, or a model folder.
A checkpoint (--base, --finetuned, --extra) is a Hugging Face folder (config.json + safetensors; llama, mistral, qwen2,
qwen3), a PEFT LoRA adapter folder over --base, or an ONNX decoder export. --cache-dir <dir> (default
PIGGYBACK_CACHE_DIR or ~/.cache/piggyback-lens) keeps weights converted to the dtype the graph runs in (the same
folder keeps parsed tokenizers, keyed by their files' content, for every command). Model commands
run with --threads N (default: every core) and --execution-provider auto|cpu|cuda; --model-file picks one graph of
an ONNX folder with several (onnx/model_q4.onnx, or just q4); --weights-dtype auto|float32|float16|int8|int4 sets
the dtype of a Hugging Face model's matrices (auto: float16 on CUDA; on the CPU float32 when it fits in memory, else
int8, else int4, quantized once into the cache); --no-memory-check loads even when memory looks short.
--kwargs passes template variables as the trainer does, e.g. '{"enable_thinking": false}'.
eval: re-running with the same --out resumes (--resume: continue, and fail when there is no run to continue);
--perturb-trials 0 leaves out the perturbation conditions; --layer-sweep adds the prefix patch per layer and per layer
range (scored, not generated); --shard i/N runs share i (from 0) of N, chosen by a hash of each probe id, into its own
run folder, and merge joins the shards' folders into the run one process would have written. A judge is
any OpenAI-compatible endpoint (e.g. http://127.0.0.1:11434/v1); its key comes from PIGGYBACK_JUDGE_API_KEY.
Exit code 1 when an error-level finding exists (eval: the shift mostly in the template) or a command fails, 2 on bad usage;
--debug adds the stack trace to an unexpected error.`;

class UsageError extends Error {
  constructor(
    message: string,
    /** The command whose help the short usage line points to. */
    readonly command?: string,
  ) {
    super(message);
  }
}

type OptionName = keyof typeof OPTIONS;

/** The dataset scan worker's bundle beside this one (dist/); without it datasets are scanned in this thread. */
const SCAN_WORKER = fs.existsSync(path.join(__dirname, 'datasetScanWorker.js'))
  ? path.join(__dirname, 'datasetScanWorker.js')
  : undefined;

const TEMPLATE_OPTIONS: OptionName[] = ['tokenizer', 'name', 'kwargs'];
const HOST_OPTIONS: OptionName[] = [
  'cache-dir',
  'threads',
  'execution-provider',
  'model-file',
  'weights-dtype',
  'no-memory-check',
];
const GLOBAL_OPTIONS: OptionName[] = ['debug', 'help', 'version', 'no-color'];

/** Each command: its usage lines and the options it takes (anything else is a usage error naming the option). */
const COMMANDS: Record<string, { usage: string; about: string; options: OptionName[] }> = {
  template: {
    usage:
      'piggyback template <source> [--tokenizer <dir|tokenizer.json>] [--name <template>] [--kwargs <json>] [--json]',
    about: 'Audits a chat template: its rendered prefix and postfix with token counts, and the CT findings.',
    options: [...TEMPLATE_OPTIONS, 'json'],
  },
  dataset: {
    usage:
      'piggyback dataset <file.jsonl|.parquet|.arrow|.csv|folder> --template <source> [--tokenizer ...] [--kwargs <json>] [--loss auto|assistant-only|completion-only|completion|all] [--row N] [--json]',
    about:
      "Audits a finetuning set against a template: the piggyback surface and the DS findings, located by row. A folder (datasets.save_to_disk, a Hub download) is audited file by file, each with its split. --loss says how you train (DS012 is a warning under completion-only). With --row N, the training view of row N: every token with its segment and whether it carries loss under the trainer's masking (default auto: TRL SFTTrainer's, the completion for prompt/completion rows and every token otherwise), and the length check against the model's context.",
    options: ['template', ...TEMPLATE_OPTIONS, 'json', 'row', 'loss'],
  },
  audit: {
    usage: 'piggyback audit <folder> [--template <source>] [--sarif <out.sarif>] [--md <out.md|->] [--json]',
    about:
      'Audits every model folder and dataset under a folder: a table on the terminal; SARIF, Markdown (--md - to stdout) and JSON for CI.',
    options: ['template', ...TEMPLATE_OPTIONS, 'sarif', 'md', 'json'],
  },
  drift: {
    usage: 'piggyback drift --base <dir> --finetuned <dir> [--template <source>] [--prompt <text>] [--json]',
    about: 'Measures the K/V drift between base and finetuned per layer and segment, with the TReFT value.',
    options: ['base', 'finetuned', 'template', ...TEMPLATE_OPTIONS, 'prompt', 'json', ...HOST_OPTIONS],
  },
  patch: {
    usage:
      'piggyback patch --base <dir> --finetuned <dir> --prompt <text> [--span prefix|postfix|both|query] [--max-new-tokens N] [--template <source>] [--json]',
    about: "Patches the finetuned model's K/V with the base model's on a span and compares the three answers.",
    options: [
      'base',
      'finetuned',
      'template',
      ...TEMPLATE_OPTIONS,
      'prompt',
      'span',
      'max-new-tokens',
      'json',
      ...HOST_OPTIONS,
    ],
  },
  eval: {
    usage: `piggyback eval --base <dir> --finetuned <dir> --out <dir> [--probes <file.jsonl|.yaml> ...] [--dataset <train.jsonl>]
       [--other-dataset <other.jsonl>] [--extra name=<dir>] [--max-new-tokens N] [--temperature T --samples N] [--seed N]
       [--perturb-trials N] [--layer-sweep] [--resume] [--judge-endpoint <url> --judge-model <id> [--judge-timeout <s>]
       [--judge-concurrency 4]] [--sarif <out.sarif>] [--shard i/N]`,
    about:
      'Runs probes under every condition (base, finetuned, patched, perturbed) into a run folder; re-running resumes it. With --shard i/N, only share i (counted from 0) of N: each probe belongs to the shard a hash of its id names, so shards are stable when probes are added; run the N shards anywhere (a Slurm array, a Kubernetes Indexed Job) and join them with merge.',
    options: [
      'base',
      'finetuned',
      'out',
      'probes',
      'dataset',
      'other-dataset',
      'extra',
      'max-new-tokens',
      'temperature',
      'samples',
      'seed',
      'perturb-trials',
      'layer-sweep',
      'resume',
      'judge-endpoint',
      'judge-model',
      'judge-timeout',
      'judge-concurrency',
      'sarif',
      'shard',
      'template',
      ...TEMPLATE_OPTIONS,
      ...HOST_OPTIONS,
    ],
  },
  merge: {
    usage: 'piggyback merge <shard-run-dir>... --out <dir> [--sarif <out.sarif>]',
    about:
      "Joins the run folders of an eval's shards (piggyback eval --shard i/N) into one run folder: the run, summary, reports and SARIF one unsharded run would have written. Refuses shards of different checkpoints, template, conditions, settings or probe set, naming the difference; keeps a row given twice once; names the probes no shard finished (exit 1; re-run eval without --shard on the merged folder to finish them).",
    options: ['out', 'sarif'],
  },
  compare: {
    usage: 'piggyback compare <run-dir> <run-dir> [--md <out.md>]',
    about: 'Compares two eval runs side by side.',
    options: ['md'],
  },
  'treft-export': {
    usage: 'piggyback treft-export <train.jsonl> --out <dir> [--base <dir>] [--template <source>]',
    about: "Writes the TReFT data for a finetuning set: prefix positions, the base model's prefix K/V, a recipe.",
    options: ['out', 'base', 'template', ...TEMPLATE_OPTIONS, ...HOST_OPTIONS],
  },
};

/** The nearest of `names` to `typed` (edit distance at most 3), for "did you mean". */
function nearest(typed: string, names: readonly string[]): string | undefined {
  const distance = (a: string, b: string) => {
    const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
    for (let j = 1; j <= b.length; j++) d[0][j] = j;
    for (let i = 1; i <= a.length; i++)
      for (let j = 1; j <= b.length; j++)
        d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    return d[a.length][b.length];
  };
  const best = names.map((n) => [n, distance(typed, n)] as const).sort((a, b) => a[1] - b[1])[0];
  return best && best[1] <= 3 ? best[0] : undefined;
}

function commandHelp(name: string): string {
  const c = COMMANDS[name];
  return `${c.usage}\n\n${c.about}\n\n${USAGE.slice(USAGE.indexOf('<source> is'))}`;
}

/** One line and a pointer to help, never the whole usage again. */
function shortUsage(message: string, command?: string): string {
  if (command && message.startsWith(`${command} `)) message = message.slice(command.length + 1);
  return `piggyback${command ? ` ${command}` : ''}: ${message}\nRun 'piggyback help${command ? ` ${command}` : ''}' for usage.\n`;
}

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
  shard: { type: 'string' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
  'no-color': { type: 'boolean' },
  row: { type: 'string' },
  loss: { type: 'string' },
} as const;

const defaultOut = (s: string) => {
  process.stdout.write(s);
};

export async function main(argv: string[], out: (s: string) => void = defaultOut): Promise<number> {
  let parsed: ReturnType<typeof parseArgs<{ args: string[]; allowPositionals: true; options: typeof OPTIONS }>>;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: OPTIONS,
    });
  } catch (e) {
    const command = argv.find((a) => !a.startsWith('-'));
    const unknown = /Unknown option '(-{1,2}[^']+)'/.exec((e as Error).message)?.[1];
    if (unknown) {
      const allowed =
        command && COMMANDS[command] ? [...COMMANDS[command].options, ...GLOBAL_OPTIONS] : Object.keys(OPTIONS);
      const typed = unknown.replace(/^-+/, '');
      const guess = nearest(typed, allowed) ?? nearest(typed, Object.keys(OPTIONS));
      process.stderr.write(
        shortUsage(
          `unknown option ${unknown}${guess ? ` (did you mean --${guess}?)` : ''}`,
          command && COMMANDS[command] ? command : undefined,
        ),
      );
    } else
      process.stderr.write(
        shortUsage((e as Error).message.split('\n')[0], command && COMMANDS[command] ? command : undefined),
      );
    return 2;
  }
  const { values, positionals } = parsed;
  const terminal = process.stdout.isTTY === true || (!!process.env.FORCE_COLOR && process.env.FORCE_COLOR !== '0');
  colour = out === defaultOut && terminal && !process.env.NO_COLOR && values['no-color'] !== true;
  if (values.version) {
    out(`${TOOL_VERSION}\n`);
    return 0;
  }
  const [command, target] = positionals;
  // piggyback help [command], piggyback <command> --help
  if (command === 'help' || (values.help && (!command || COMMANDS[command]))) {
    const about = command === 'help' ? target : command;
    if (about && !COMMANDS[about]) {
      process.stderr.write(
        shortUsage(
          `no command "${about}"${nearest(about, Object.keys(COMMANDS)) ? ` (did you mean ${nearest(about, Object.keys(COMMANDS))}?)` : ''}`,
        ),
      );
      return 2;
    }
    out(`${about ? commandHelp(about) : USAGE}\n`);
    return 0;
  }
  if (!command) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  if (!COMMANDS[command]) {
    const guess = nearest(command, Object.keys(COMMANDS));
    process.stderr.write(shortUsage(`unknown command "${command}"${guess ? ` (did you mean ${guess}?)` : ''}`));
    return 2;
  }
  // an option another command takes is a usage error here, not silently ignored
  const allowed = new Set<string>([...COMMANDS[command].options, ...GLOBAL_OPTIONS]);
  const foreign = Object.keys(values).filter((k) => !allowed.has(k));
  if (foreign.length) {
    process.stderr.write(
      shortUsage(
        `${foreign.map((f) => `--${f}`).join(', ')} ${foreign.length > 1 ? 'are not options' : 'is not an option'} of ${command}`,
        command,
      ),
    );
    return 2;
  }
  try {
    const kwargs = parseKwargs(values.kwargs);
    const common = { tokenizer: values.tokenizer, name: values.name, kwargs };
    switch (command) {
      case 'template': {
        if (!target) throw new UsageError('template needs a <source>');
        if (!fs.existsSync(target)) throw new UsageError(`no such file or folder: ${target}`);
        const p = prepareTemplate(path.resolve(target), common);
        out(values.json ? JSON.stringify(templateJson(p), null, 2) + '\n' : describeTemplate(p));
        return hasErrors(p.findings) ? 1 : 0;
      }
      case 'dataset': {
        if (!target) throw new UsageError('dataset needs a <file.jsonl>');
        if (!values.template) throw new UsageError('dataset needs --template <source>');
        if (!fs.existsSync(target)) throw new UsageError(`no such file: ${target}`);
        const lossMode = auditLoss(lossSetting(values));
        // a dataset folder (datasets.save_to_disk, a Hub download): every dataset file in it, each with its split
        if (fs.statSync(target).isDirectory() && values.row === undefined)
          return await datasetFolderCommand(
            path.resolve(target),
            path.resolve(values.template),
            { ...common, lossMode },
            values,
            out,
          );
        try {
          assertRegularFile(target);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        if (values.row !== undefined)
          return await trainingViewCommand(target, prepareTemplate(path.resolve(values.template), common), values, out);
        const { prepared: p, report } = await auditDatasetFile(path.resolve(target), path.resolve(values.template), {
          ...common,
          workerFile: SCAN_WORKER,
          lossMode,
        });
        const findings = [...p.findings.filter((f) => f.severity === 'error'), ...datasetFindings(report)];
        if (values.json) out(JSON.stringify({ ...datasetJson(report), template: templateJson(p) }, null, 2) + '\n');
        else out(describeFindings(findings) + describeSurface(report));
        return hasErrors(findings) ? 1 : 0;
      }
      case 'audit': {
        const root = path.resolve(target ?? '.');
        if (!fs.existsSync(root) || !fs.statSync(root).isDirectory()) throw new UsageError(`not a folder: ${root}`);
        // a relative --template is relative to where the command runs, like every other path argument
        const a = await auditFolder(root, {
          ...common,
          template: values.template ? path.resolve(values.template) : undefined,
          workerFile: SCAN_WORKER,
        });
        if (values.sarif) fs.writeFileSync(values.sarif, JSON.stringify(toSarif(a.findings, root), null, 2) + '\n');
        if (values.md && values.md !== '-') fs.writeFileSync(values.md, toMarkdown(a));
        // JSON with --json, Markdown with --md - (to stdout), else a table for the terminal
        if (values.json) out(JSON.stringify(folderJson(a), null, 2) + '\n');
        else if (values.md === '-') out(toMarkdown(a));
        else out(toTerminal(a, describeFinding));
        return hasErrors(a.findings) ? 1 : 0;
      }
      case 'eval':
        return await evalCommand(values, out);
      case 'compare':
        return compareCommand(positionals.slice(1), values, out);
      case 'merge':
        return mergeCommand(positionals.slice(1), values, out);
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
      // "template needs a <source>" already names the command: point to its help without repeating it
      process.stderr.write(shortUsage(e.message, e.command ?? command));
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
    // the name ends at the first "=": a folder may hold one (ckpt/lr=1e-4)
    const at = e.indexOf('=');
    const [name, folder] = at > 0 ? [e.slice(0, at), e.slice(at + 1)] : ['', ''];
    if (!name || !folder) throw new UsageError(`--extra wants name=<dir>, got "${e}"`);
    if (name in extra) throw new UsageError(`--extra "${name}" is given twice`);
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
  let plan: EvalPlan;
  try {
    plan = planEval({
      probeFiles: (values.probes as string[] | undefined) ?? [],
      dataset: values.dataset as string | undefined,
      otherDatasets: (values['other-dataset'] as string[] | undefined) ?? [],
      extra,
      maxNewTokens: number('max-new-tokens'),
      temperature: number('temperature'),
      samples: number('samples'),
      seed: number('seed'),
      perturbationTrials: number('perturb-trials'),
      layerSweep: values['layer-sweep'] === true,
      judge,
      judgeConcurrency: number('judge-concurrency'),
      shard: values.shard === undefined ? undefined : parseShard(values.shard as string),
    });
  } catch (e) {
    if (e instanceof ProbeFileError) {
      process.stderr.write(`piggyback: ${e.message}\n`);
      return 1;
    }
    if (e instanceof EvalRequestError) throw new UsageError(e.message);
    throw e;
  }
  const settings = hostSettings(values);
  const p = modelPromptTemplate(values, finetuned, base);
  return withHost(async (host) => {
    const loaded = await loadWithProgress(host, {
      base: path.resolve(base),
      finetuned: path.resolve(finetuned),
      extra,
      cacheDir: cacheDir(values),
      settings,
    });
    try {
      const run = await new LensSession(host, loaded, p).eval({
        ...plan.options,
        probes: plan.probes,
        shard: plan.shardOf,
        conditions: plan.conditions(loaded.finetuned.layers),
        out: dir,
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
    const { manifest, summary, findings, skipped, progress } = writeRunReports(dir, process.cwd());
    if (values.sarif) fs.copyFileSync(path.join(dir, 'findings.sarif'), values.sarif as string);
    out(evalMarkdown(manifest, summary, skipped, progress));
    out(describeFindings(findings));
    return hasErrors(findings) ? 1 : 0;
  });
}

/** merge: shard run folders into one run folder, with its reports; exit 1 when probes are missing. */
function mergeCommand(dirs: string[], values: Values, out: (s: string) => void): number {
  const dir = values.out as string | undefined;
  if (dirs.length === 0 || !dir) throw new UsageError('merge needs shard run folders and --out <dir>');
  let merged: MergeResult;
  try {
    merged = mergeRuns(dirs, dir);
  } catch (e) {
    if (e instanceof MergeError) {
      process.stderr.write(`piggyback merge: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  for (const { dir: d, problem } of merged.problems)
    process.stderr.write(`${path.join(d, 'results.jsonl')}:${problem.line}: ${problem.message}\n`);
  const { manifest, summary, findings, skipped, progress } = writeRunReports(dir, process.cwd());
  if (values.sarif) fs.copyFileSync(path.join(dir, 'findings.sarif'), values.sarif as string);
  const count = manifest.probes.count;
  process.stderr.write(
    `merged shards ${merged.shards.join(', ')} of ${merged.shards.length + merged.absentShards.length} into ${dir}: ${merged.rows} rows for ${count} probes${merged.duplicates ? ` (${merged.duplicates} rows given twice, kept once)` : ''}\n`,
  );
  if (merged.absentShards.length)
    process.stderr.write(
      `no folder holds shard${merged.absentShards.length > 1 ? 's' : ''} ${merged.absentShards.join(', ')}\n`,
    );
  if (merged.missing.length)
    process.stderr.write(
      `${merged.missing.length} of ${count} probes are not finished: ${merged.missing.slice(0, 10).join(', ')}${merged.missing.length > 10 ? ', ...' : ''}; run the same eval without --shard with --out ${dir} to finish them\n`,
    );
  out(evalMarkdown(manifest, summary, skipped, progress));
  out(describeFindings(findings));
  return merged.missing.length || hasErrors(findings) ? 1 : 0;
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
  const overwrite = treftOutputProblem(dir, [common.dataset, common.templateFile]);
  if (overwrite) throw new UsageError(overwrite);
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
    const loaded = await loadWithProgress(host, {
      base: path.resolve(base),
      finetuned: path.resolve(base),
      cacheDir: cacheDir(values),
      settings,
    });
    return report(await new LensSession(host, loaded, p).treftExport({ dataset: common.dataset, out: dir }));
  });
}

/** dataset --row N: the training view of one row (its tokens, segments and loss mask) and the length check. */
async function trainingViewCommand(
  file: string,
  p: PreparedTemplate,
  values: Values,
  out: (s: string) => void,
): Promise<number> {
  const n = Number(values.row);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--row wants a row number from 1, got "${values.row}"`);
  const setting = lossSetting(values);
  if (!p.template || !p.tokenizer || !p.source) {
    process.stderr.write(describeFindings(p.findings));
    throw new UsageError('the training view needs a template that renders and its tokenizer.json (see above)');
  }
  let line: string | undefined;
  let i = 0;
  // row N: the Nth JSONL line, Parquet or Arrow row, CSV record or JSON-array example (located where it starts)
  const starts: Parameters<typeof rowLocation>[0] = [];
  for await (const l of readLines(datasetRows(file, starts))) {
    if (++i === n) {
      line = l.text;
      break;
    }
  }
  if (line === undefined) throw new UsageError(`${file} has ${i} rows, no row ${n}`);
  const at = rowLocation(starts, n);
  const where = `${file}:${at.line}:${at.column}`;
  let view: ReturnType<typeof trainingView>;
  let loss: ReturnType<typeof resolveLoss>;
  try {
    const row = normaliseRow(JSON.parse(line));
    loss = resolveLoss(setting, row.format);
    const mode = loss.mode;
    view = trainingView(
      p.template,
      p.tokenizer,
      row.messages,
      renderOptions(p),
      mode,
      contextLength(p.source.folder, p.source.config),
    );
  } catch (e) {
    process.stderr.write(`${where}: ${(e as Error).message}\n`);
    return 1;
  }
  if (values.json) {
    out(`${JSON.stringify({ file, row: n, ...view }, null, 2)}\n`);
    return view.problems.length ? 1 : 0;
  }
  const lines = [
    `row ${n} of ${file}, rendered with ${p.source.file}; loss: ${view.mode} (${loss.why}; --loss ${LOSS_MODES.join('|')} to change), ${view.lossTokens} of ${view.tokens.length} tokens${view.maxLength ? ` (context ${view.maxLength})` : ''}`,
    `${'#'.padStart(5)}  ${'id'.padEnd(8)}${'segment'.padEnd(10)}loss  token`,
    ...view.tokens.map(
      (t, k) =>
        `${String(k).padStart(5)}  ${String(t.id).padEnd(8)}${t.segment.padEnd(10)}${t.loss ? paint('32', 'yes ') : '    '}  ${JSON.stringify(t.text)}`,
    ),
    ...view.problems.map((m) => `${where}: ${paint('33', 'warning')} training view: ${m}`),
  ];
  out(`${lines.join('\n')}\n`);
  return view.problems.length ? 1 : 0;
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
    if (wd !== 'auto' && !(WEIGHTS_DTYPES as readonly string[]).includes(wd))
      throw new UsageError(`--weights-dtype must be auto, ${WEIGHTS_DTYPES.join(', ')}, got "${wd}"`);
    s.weightsDtype = wd as WeightsDtypeSetting;
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

/** Loads checkpoints with a progress line on stderr: what is loading, then how long it took. */
async function loadWithProgress(host: HostClient, params: LoadParams): Promise<LoadResult> {
  const names = [...new Set([params.base, params.finetuned, ...Object.values(params.extra ?? {})])].map((p) =>
    path.basename(p),
  );
  process.stderr.write(`loading ${names.join(', ')}...\n`);
  const t0 = Date.now();
  const loaded = await host.load(params);
  process.stderr.write(
    `loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s (${loaded.base.device}, ${loaded.base.threads} threads${loaded.base.weightsDtype ? `, ${loaded.base.weightsDtype} weights` : ''})\n`,
  );
  const quantized = quantizedNote(loaded);
  if (quantized) process.stderr.write(`${quantized.replaceAll('**', '')}\n`);
  return loaded;
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
    const loaded = await loadWithProgress(host, {
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

/** --loss, checked against the settings it takes; auto (the trainer's defaults) when absent. */
function lossSetting(values: Values): LossSetting {
  const setting = ((values.loss as string | undefined) ?? 'auto') as LossSetting;
  if (!LOSS_SETTINGS.includes(setting))
    throw new UsageError(`--loss must be ${LOSS_SETTINGS.join(', ')}, got "${setting}"`);
  return setting;
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

/** Colour on a terminal (or with FORCE_COLOR), never with NO_COLOR (https://no-color.org) or --no-color. */
let colour = false;
const SEVERITY_COLOUR: Record<string, string> = { error: '31', warning: '33', info: '36' };
const paint = (code: string, text: string) => (colour ? `\x1b[${code}m${text}\x1b[0m` : text);

function describeFinding(f: Finding): string {
  return `${f.file ?? ''}:${f.line}:${f.column}: ${paint(SEVERITY_COLOUR[f.severity] ?? '0', f.severity)} ${paint('1', f.code)}: ${f.message}`;
}

function describeFindings(findings: Finding[]): string {
  if (findings.length === 0) return 'no findings\n';
  return (
    findings
      .map(
        (f) =>
          `${f.file ?? ''}:${f.line}:${f.column}: ${paint(SEVERITY_COLOUR[f.severity] ?? '0', f.severity)} ${paint('1', f.code)}: ${f.message}`,
      )
      .join('\n') + '\n'
  );
}

/** `dataset <folder>`: the dataset files under a folder audited with one template, each with its split. */
async function datasetFolderCommand(
  root: string,
  template: string,
  common: PrepareOptions & { lossMode?: LossMode },
  values: Values,
  out: (s: string) => void,
): Promise<number> {
  const a = await auditFolder(root, { ...common, template, workerFile: SCAN_WORKER });
  if (a.datasets.length === 0)
    throw new UsageError(`${root} holds no dataset files (.jsonl, .parquet, .arrow, or .csv with chat columns)`);
  const templateErrors = a.templates.flatMap((t) => t.prepared.findings.filter((f) => f.severity === 'error'));
  const findings = [...templateErrors, ...a.datasets.flatMap((d) => datasetFindings(d.report))];
  if (values.json)
    out(
      JSON.stringify(
        {
          root,
          datasets: a.datasets.map((d) => ({ split: d.split ?? null, ...datasetJson(d.report) })),
          template: templateJson(a.templates[0].prepared),
        },
        null,
        2,
      ) + '\n',
    );
  else {
    const parts = a.datasets.map(
      (d) => `${path.relative(root, d.file)}${d.split ? ` (split ${d.split})` : ''}\n${describeSurface(d.report)}`,
    );
    out(describeFindings(findings) + parts.join('\n'));
  }
  return hasErrors(findings) ? 1 : 0;
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
