/**
 * The CLI's options, each declared once with its type, range or choices, and the parsed values behind typed
 * accessors that check them: a bad value is a UsageError naming the option, before any work starts. Which command
 * takes which option is the command's own business (src/cli/commands).
 */
import * as path from 'node:path';
import { WEIGHTS_DTYPES } from '../contracts/modelHost';
import { LOSS_SETTINGS } from '../domain/dataset/training';

export interface OptionSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  short?: string;
  /** A number in this range (whole when `integer`). */
  number?: { integer: boolean; min: number; max: number };
  /** One of these values. */
  choices?: readonly string[];
}

export const OPTIONS = {
  tokenizer: { type: 'string' },
  template: { type: 'string' },
  name: { type: 'string' },
  kwargs: { type: 'string' },
  json: { type: 'boolean' },
  sarif: { type: 'string' },
  'inspect-log': { type: 'string' },
  'add-generation-markers': { type: 'boolean' },
  model: { type: 'string' },
  md: { type: 'string' },
  base: { type: 'string' },
  finetuned: { type: 'string' },
  prompt: { type: 'string' },
  span: { type: 'string', choices: ['prefix', 'postfix', 'both', 'query'] },
  'max-new-tokens': { type: 'string', number: { integer: true, min: 1, max: 100_000 } },
  out: { type: 'string' },
  probes: { type: 'string', multiple: true },
  dataset: { type: 'string' },
  'other-dataset': { type: 'string', multiple: true },
  extra: { type: 'string', multiple: true },
  temperature: { type: 'string', number: { integer: false, min: 0, max: 10 } },
  samples: { type: 'string', number: { integer: true, min: 1, max: 1000 } },
  seed: { type: 'string', number: { integer: true, min: 0, max: 2 ** 32 - 1 } },
  'perturb-trials': { type: 'string', number: { integer: true, min: 0, max: 10_000 } },
  'judge-endpoint': { type: 'string' },
  'judge-model': { type: 'string' },
  'judge-timeout': { type: 'string', number: { integer: false, min: 0.001, max: 86_400 } },
  'judge-concurrency': { type: 'string', number: { integer: true, min: 1, max: 64 } },
  'cache-dir': { type: 'string' },
  // the host caps threads at the machine's cores; this range only refuses what is not a thread count at all
  threads: { type: 'string', number: { integer: true, min: 1, max: 65_536 } },
  'execution-provider': { type: 'string', choices: ['auto', 'cpu', 'cuda'] },
  'model-file': { type: 'string' },
  'weights-dtype': { type: 'string', choices: ['auto', ...WEIGHTS_DTYPES] },
  'no-memory-check': { type: 'boolean' },
  resume: { type: 'boolean' },
  'layer-sweep': { type: 'boolean' },
  shard: { type: 'string' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
  'no-color': { type: 'boolean' },
  row: { type: 'string', number: { integer: true, min: 1, max: Number.MAX_SAFE_INTEGER } },
  loss: { type: 'string', choices: LOSS_SETTINGS },
} as const satisfies Record<string, OptionSpec>;

export type OptionName = keyof typeof OPTIONS;
type Spec<N extends OptionName> = (typeof OPTIONS)[N];
type StringOption = { [N in OptionName]: Spec<N> extends { type: 'string' } ? N : never }[OptionName];
type BooleanOption = Exclude<OptionName, StringOption>;
type NumberOption = { [N in OptionName]: Spec<N> extends { number: object } ? N : never }[OptionName];
type ChoiceOption = { [N in OptionName]: Spec<N> extends { choices: readonly string[] } ? N : never }[OptionName];
type Choice<N extends ChoiceOption> = Spec<N> extends { choices: readonly (infer C)[] } ? C : never;

/** Options every command takes. */
export const GLOBAL_OPTIONS: OptionName[] = ['debug', 'help', 'version', 'no-color'];
export const TEMPLATE_OPTIONS: OptionName[] = ['tokenizer', 'name', 'kwargs'];
export const HOST_OPTIONS: OptionName[] = [
  'cache-dir',
  'threads',
  'execution-provider',
  'model-file',
  'weights-dtype',
  'no-memory-check',
];

/** Bad usage: exit code 2, with a pointer to the command's help. */
export class UsageError extends Error {
  constructor(
    message: string,
    /** The command whose help the short usage line points to. */
    readonly command?: string,
  ) {
    super(message);
  }
}

export type RawValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** The parsed options of one command line, read through checks. */
export class Args {
  constructor(
    readonly values: RawValues,
    readonly positionals: string[],
  ) {}

  string(name: StringOption): string | undefined {
    const v = this.values[name];
    return Array.isArray(v) ? (v.at(-1) as string | undefined) : (v as string | undefined);
  }
  strings(name: StringOption): string[] {
    const v = this.values[name];
    return v === undefined ? [] : Array.isArray(v) ? (v as string[]) : [v as string];
  }
  flag(name: BooleanOption): boolean {
    return this.values[name] === true;
  }
  /** A path option resolved against the working directory, as every path argument is. */
  path(name: StringOption): string | undefined {
    const v = this.string(name);
    return v === undefined ? undefined : path.resolve(v);
  }
  number(name: NumberOption): number | undefined {
    const v = this.string(name);
    if (v === undefined) return undefined;
    const r = OPTIONS[name].number;
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || (r.integer && !Number.isInteger(n)) || n < r.min || n > r.max)
      throw new UsageError(
        `--${name} wants ${r.integer ? 'a whole number' : 'a number'} from ${r.min} to ${r.max}, got "${v}"`,
      );
    return n;
  }
  choice<N extends ChoiceOption>(name: N): Choice<N> | undefined {
    const v = this.string(name);
    if (v === undefined) return undefined;
    const choices = OPTIONS[name].choices as readonly string[];
    if (!choices.includes(v)) throw new UsageError(`--${name} must be one of ${choices.join(', ')}, got "${v}"`);
    return v as Choice<N>;
  }
  /** --kwargs: template variables as the trainer passes them, a JSON object. */
  kwargs(): Record<string, unknown> {
    const text = this.string('kwargs');
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
}
