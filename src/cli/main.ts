/**
 * piggyback: the headless audit for CI. Same core as the extension; JSON output is a public interface.
 * Exit codes: 0 clean, 1 an error-level finding, 2 bad usage or an unexpected failure.
 * main parses the command line, dispatches to the command's module (src/cli/commands) and returns its exit code;
 * every usage text is generated from the commands' own declarations.
 */
import { parseArgs } from 'node:util';
import { TOOL_VERSION } from '../app/auditReport';
import type { Command } from './command';
import { audit } from './commands/audit';
import { dataset } from './commands/dataset';
import { evalRun } from './commands/eval';
import { drift, patch } from './commands/models';
import { compare, merge } from './commands/runs';
import { template } from './commands/template';
import { trainer } from './commands/trainer';
import { treftExport } from './commands/treftExport';
import { Args, GLOBAL_OPTIONS, OPTIONS, UsageError } from './options';
import { useColour } from './output';

const COMMANDS: Record<string, Command> = Object.fromEntries(
  [template, trainer, dataset, audit, drift, patch, evalRun, merge, compare, treftExport].map((c) => [c.name, c]),
);

/** What every command's help ends with: sources, checkpoints, the host's options, exit codes. */
const NOTES = `<source> is tokenizer_config.json, chat_template.jinja, chat_template.json, any .jinja file, or a model folder.
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

const USAGE = `piggyback ${TOOL_VERSION}: where a chat template carries a finetune's behaviour onto every query

Usage (piggyback help <command> for one command's options):
${Object.values(COMMANDS)
  .map((c) => `  ${c.usage.replaceAll('\n       ', '\n                 ')}`)
  .join('\n')}

${NOTES}`;

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

const commandHelp = (c: Command) => `${c.usage}\n\n${c.about}\n\n${NOTES}`;

/** One line and a pointer to help, never the whole usage again. */
function shortUsage(message: string, command?: string): string {
  if (command && message.startsWith(`${command} `)) message = message.slice(command.length + 1);
  return `piggyback${command ? ` ${command}` : ''}: ${message}\nRun 'piggyback help${command ? ` ${command}` : ''}' for usage.\n`;
}

/** A parse error in words: an unknown option with the nearest one this command takes. */
function parseProblem(e: Error, argv: string[]): string {
  const name = argv.find((a) => !a.startsWith('-'));
  const command = name && COMMANDS[name] ? COMMANDS[name] : undefined;
  const unknown = /Unknown option '(-{1,2}[^']+)'/.exec(e.message)?.[1];
  if (!unknown) return shortUsage(e.message.split('\n')[0], command?.name);
  const allowed = command ? [...command.options, ...GLOBAL_OPTIONS] : Object.keys(OPTIONS);
  const typed = unknown.replace(/^-+/, '');
  const guess = nearest(typed, allowed) ?? nearest(typed, Object.keys(OPTIONS));
  return shortUsage(`unknown option ${unknown}${guess ? ` (did you mean --${guess}?)` : ''}`, command?.name);
}

const defaultOut = (s: string) => {
  process.stdout.write(s);
};

export async function main(argv: string[], out: (s: string) => void = defaultOut): Promise<number> {
  let parsed: { values: Record<string, string | boolean | (string | boolean)[] | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: OPTIONS });
  } catch (e) {
    process.stderr.write(parseProblem(e as Error, argv));
    return 2;
  }
  const { values, positionals } = parsed;
  const terminal = process.stdout.isTTY === true || (!!process.env.FORCE_COLOR && process.env.FORCE_COLOR !== '0');
  useColour(out === defaultOut && terminal && !process.env.NO_COLOR && values['no-color'] !== true);
  if (values.version) {
    out(`${TOOL_VERSION}\n`);
    return 0;
  }
  const [name, target] = positionals;
  // piggyback help [command], piggyback <command> --help
  if (name === 'help' || (values.help && (!name || COMMANDS[name]))) {
    const about = name === 'help' ? target : name;
    if (about && !COMMANDS[about]) {
      const guess = nearest(about, Object.keys(COMMANDS));
      process.stderr.write(shortUsage(`no command "${about}"${guess ? ` (did you mean ${guess}?)` : ''}`));
      return 2;
    }
    out(`${about ? commandHelp(COMMANDS[about]) : USAGE}\n`);
    return 0;
  }
  if (!name) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const command = COMMANDS[name];
  if (!command) {
    const guess = nearest(name, Object.keys(COMMANDS));
    process.stderr.write(shortUsage(`unknown command "${name}"${guess ? ` (did you mean ${guess}?)` : ''}`));
    return 2;
  }
  // an option another command takes is a usage error here, not silently ignored
  const allowed = new Set<string>([...command.options, ...GLOBAL_OPTIONS]);
  const foreign = Object.keys(values).filter((k) => !allowed.has(k));
  if (foreign.length) {
    const list = foreign.map((f) => `--${f}`).join(', ');
    process.stderr.write(
      shortUsage(`${list} ${foreign.length > 1 ? 'are not options' : 'is not an option'} of ${name}`, name),
    );
    return 2;
  }
  try {
    return await command.run(new Args(values, positionals.slice(1)), out);
  } catch (e) {
    if (e instanceof UsageError) {
      // "template needs a <source>" already names the command: point to its help without repeating it
      process.stderr.write(shortUsage(e.message, e.command ?? name));
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

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e) => {
      process.stderr.write(unexpected(e, process.argv.includes('--debug')));
      process.exitCode = 1;
    },
  );
}
