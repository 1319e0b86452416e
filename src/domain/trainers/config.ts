/**
 * Training configurations as template sources: which chat template a trainer renders, read from the config file a
 * workspace holds. The prefix that carries a finetune is the one the trainer rendered, often not the tokenizer's.
 *
 * - axolotl (YAML): `chat_template: <name>` is one of axolotl's built-in templates; `jinja` takes
 *   `chat_template_jinja` (inline Jinja or a file); `tokenizer_default` (axolotl's default) the tokenizer's;
 *   `tokenizer_default_fallback_<name>` the tokenizer's when it has one, else the built-in. A dataset entry's own
 *   `chat_template` overrides the top-level one for that dataset.
 * - LLaMA-Factory (YAML or JSON): `template: <name>` is one of its built-in templates (Python in its source; shipped
 *   here as the Jinja of what it renders, see scripts/trainer-templates/make.py); `default_system` replaces the
 *   template's default system prompt.
 * - TRL (`trl sft --config <yaml>`, SFTConfig arguments): `chat_template_path` (a Jinja file or a tokenizer folder),
 *   else the tokenizer's template.
 * The built-in templates are those of the framework versions in builtinTemplates.json (named in every finding).
 */
import * as path from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node as YamlNode } from 'yaml';
import { isTemplateFileName } from '../template/source';
import builtins from './builtinTemplates.json';

export type TrainerFramework = 'axolotl' | 'llama-factory' | 'trl';

export const FRAMEWORK_NAMES: Record<TrainerFramework, string> = {
  axolotl: 'axolotl',
  'llama-factory': 'LLaMA-Factory',
  trl: 'TRL',
};

/** Which template the trainer renders. */
export type TrainerTemplate =
  | { kind: 'tokenizer' }
  | { kind: 'builtin'; name: string; version: string; jinja: string; fallbackToTokenizer?: boolean }
  | { kind: 'jinja'; text: string }
  | { kind: 'file'; path: string }
  | { kind: 'folder'; path: string };

export interface TrainerDataset {
  /** As the config writes it (a Hub id, a file, a LLaMA-Factory dataset name). */
  name: string;
  /** A local file or folder, resolved against the config's folder, when one exists there. */
  template: TrainerTemplate;
  /** Where the dataset is named in the config file (offset). */
  at: number;
}

export interface TrainerConfig {
  file: string;
  framework: TrainerFramework;
  /** The model as the config names it (base_model, model_name_or_path). */
  model?: string;
  template: TrainerTemplate;
  datasets: TrainerDataset[];
  /** LLaMA-Factory's dataset_dir (where dataset_info.json names each dataset's file). */
  datasetDir?: string;
  /** TRL's assistant_only_loss / axolotl's roles_to_train: what the loss covers, when the config says. */
  assistantOnlyLoss?: boolean;
  /** Where the template is chosen (its key, or the model key when the tokenizer's is used by default): offsets. */
  templateAt: { start: number; end: number };
  /** Settings the config has that the audit cannot follow (an unknown built-in name), in words. */
  problems: { message: string; start: number; end: number }[];
}

/** A config file that names a trainer's template but is broken (not YAML, not an object). */
export class TrainerConfigError extends Error {
  constructor(
    message: string,
    readonly file: string,
    readonly offset: number,
  ) {
    super(message);
    this.name = 'TrainerConfigError';
  }
}

type Builtins = Record<string, { version: string; commit: string; templates: Record<string, { jinja: string }> }>;
const BUILTINS = builtins as unknown as Builtins;

/** A framework's built-in template by name, with the framework version it comes from. */
export function builtinTemplate(
  framework: 'axolotl' | 'llama-factory',
  name: string,
): { jinja: string; version: string } | undefined {
  const t = BUILTINS[framework].templates[name];
  return t ? { jinja: t.jinja, version: BUILTINS[framework].version } : undefined;
}

/** The names of a framework's built-in templates (for "did you mean"). */
export const builtinNames = (framework: 'axolotl' | 'llama-factory') => Object.keys(BUILTINS[framework].templates);

/**
 * Whether a file looks like a training config (what the workspace scan, the editor and a template source look at
 * before reading it as one): a YAML or JSON file (not a tokenizer or template file) that names its model the way
 * these configs do (`base_model`, `model_name_or_path`; a model's config.json has `_name_or_path`, an adapter's
 * `base_model_name_or_path`: neither matches).
 */
export function looksLikeTrainerConfig(file: string, text: string): boolean {
  if (/\.ya?ml$/i.test(file)) return /^["']?(base_model|model_name_or_path)["']?\s*:/m.test(text);
  return /\.json$/i.test(file) && !isTemplateFileName(file) && /"(base_model|model_name_or_path)"\s*:/.test(text);
}

/**
 * Reads `text` (the file's content) as a trainer config; undefined when it is not one (any other YAML or JSON file).
 * Throws TrainerConfigError for a file that looks like one but is broken.
 */
export function readTrainerConfig(file: string, text: string): TrainerConfig | undefined {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: false });
  if (doc.errors.length) {
    // only a file that names a trainer's keys is worth an error: other broken YAML is not ours to report
    if (!/^\s*"?(base_model|model_name_or_path)"?\s*:/m.test(text)) return undefined;
    const e = doc.errors[0];
    throw new TrainerConfigError(`not valid YAML: ${e.message.split('\n')[0]}`, file, e.pos[0]);
  }
  const root = doc.contents;
  if (!isMap(root)) return undefined;
  const entry = (key: string) => root.items.find((p) => isScalar(p.key) && p.key.value === key);
  const str = (key: string) => {
    const v = entry(key)?.value;
    return isScalar(v) && v.value !== null && v.value !== undefined ? String(v.value) : undefined;
  };
  const range = (n: unknown): { start: number; end: number } => {
    const r = (n as YamlNode | undefined)?.range;
    return r ? { start: r[0], end: r[1] } : { start: 0, end: 0 };
  };
  const keyRange = (key: string) => range(entry(key)?.key);
  const dir = path.dirname(file);
  const local = (p: string) => (path.isAbsolute(p) ? p : path.join(dir, p));
  const problems: TrainerConfig['problems'] = [];

  if (str('base_model') !== undefined && (entry('datasets') || entry('chat_template') || entry('adapter'))) {
    const named = (choice: string | undefined, jinja: string | undefined, at: { start: number; end: number }) =>
      axolotlTemplate(choice, jinja, local, (m) => problems.push({ message: m, ...at }));
    const template = named(str('chat_template'), str('chat_template_jinja'), keyRange('chat_template'));
    const datasets: TrainerDataset[] = [];
    const list = entry('datasets')?.value;
    if (isSeq(list))
      for (const item of list.items) {
        if (!isMap(item)) continue;
        const get = (k: string) => {
          const v = item.items.find((p) => isScalar(p.key) && p.key.value === k)?.value;
          return isScalar(v) && v.value !== null && v.value !== undefined ? String(v.value) : undefined;
        };
        const own = get('chat_template');
        const at = range(item);
        datasets.push({
          name: get('path') ?? '',
          template: own ? named(own, get('chat_template_jinja'), at) : template,
          at: at.start,
        });
      }
    const roles = entry('roles_to_train')?.value;
    return {
      file,
      framework: 'axolotl',
      model: str('base_model'),
      template,
      datasets,
      // axolotl trains on assistant turns unless told otherwise (roles_to_train: ["assistant"] is the default)
      assistantOnlyLoss: isSeq(roles) ? roles.items.every((r) => isScalar(r) && r.value === 'assistant') : true,
      templateAt: entry('chat_template') ? keyRange('chat_template') : keyRange('base_model'),
      problems,
    };
  }

  if (str('model_name_or_path') !== undefined && str('template') !== undefined) {
    const name = str('template')!;
    const found = builtinTemplate('llama-factory', name);
    const at = range(entry('template')?.value);
    let template: TrainerTemplate = { kind: 'tokenizer' };
    if (!found)
      problems.push({
        message: `LLaMA-Factory ${BUILTINS['llama-factory'].version} has no built-in template "${name}"${suggest(name, builtinNames('llama-factory'))}`,
        ...at,
      });
    else {
      const system = str('default_system');
      template = {
        kind: 'builtin',
        name,
        version: found.version,
        jinja: system === undefined ? found.jinja : withDefaultSystem(found.jinja, system),
      };
    }
    const datasets = (str('dataset') ?? '')
      .split(',')
      .map((d) => d.trim())
      .filter(Boolean)
      .map((d) => ({ name: d, template, at: range(entry('dataset')?.value).start }));
    return {
      file,
      framework: 'llama-factory',
      model: str('model_name_or_path'),
      template,
      datasets,
      datasetDir: str('dataset_dir'),
      // LLaMA-Factory masks the prompt unless train_on_prompt
      assistantOnlyLoss: str('train_on_prompt') !== 'true',
      templateAt: keyRange('template'),
      problems,
    };
  }

  const trlKeys = ['dataset_name', 'chat_template_path', 'assistant_only_loss', 'completion_only_loss', 'packing'];
  if (str('model_name_or_path') !== undefined && trlKeys.some((k) => entry(k))) {
    const p = str('chat_template_path');
    const template: TrainerTemplate = !p
      ? { kind: 'tokenizer' }
      : /\.(jinja2?|j2)$/i.test(p)
        ? { kind: 'file', path: local(p) }
        : { kind: 'folder', path: local(p) };
    const dataset = str('dataset_name');
    return {
      file,
      framework: 'trl',
      model: str('model_name_or_path'),
      template,
      datasets: dataset ? [{ name: dataset, template, at: range(entry('dataset_name')?.value).start }] : [],
      assistantOnlyLoss: str('assistant_only_loss') === 'true',
      templateAt: p ? keyRange('chat_template_path') : keyRange('model_name_or_path'),
      problems,
    };
  }
  return undefined;
}

function axolotlTemplate(
  choice: string | undefined,
  jinja: string | undefined,
  local: (p: string) => string,
  problem: (message: string) => void,
): TrainerTemplate {
  const version = BUILTINS.axolotl.version;
  if (choice === undefined || choice === 'tokenizer_default') return { kind: 'tokenizer' };
  if (choice === 'jinja') {
    if (!jinja) {
      problem('chat_template: jinja needs chat_template_jinja (a Jinja template, or the path of one)');
      return { kind: 'tokenizer' };
    }
    // axolotl reads it as a file when such a file exists, else as the template itself
    return /\{[{%]/.test(jinja) ? { kind: 'jinja', text: jinja } : { kind: 'file', path: local(jinja) };
  }
  const fallback = choice.startsWith('tokenizer_default_fallback_');
  const name = fallback ? choice.slice('tokenizer_default_fallback_'.length) : choice;
  const found = builtinTemplate('axolotl', name);
  if (!found) {
    problem(`axolotl ${version} has no built-in chat template "${name}"${suggest(name, builtinNames('axolotl'))}`);
    return { kind: 'tokenizer' };
  }
  return { kind: 'builtin', name, version: found.version, jinja: found.jinja, fallbackToTokenizer: fallback };
}

/** LLaMA-Factory's `default_system` setting in place of the template's own default system prompt. */
function withDefaultSystem(jinja: string, system: string): string {
  const literal = `'${system.replace(/\\/g, '\\\\').replace(/'/g, "\\'").replace(/\n/g, '\\n')}'`;
  const set = `{% set system_message = ${literal} %}`;
  return jinja.includes('{% set system_message = ')
    ? jinja.replace(/\{% set system_message = '(?:[^'\\]|\\.)*' %\}/, set)
    : jinja.replace("{% if messages[0]['role'] == 'system' %}", `${set}{% if messages[0]['role'] == 'system' %}`);
}

function suggest(name: string, names: string[]): string {
  const near = names.filter((n) => n.includes(name) || name.includes(n)).slice(0, 5);
  return near.length ? ` (did you mean ${near.map((n) => `"${n}"`).join(', ')}?)` : '';
}
