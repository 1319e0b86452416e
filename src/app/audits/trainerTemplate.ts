/**
 * A training config as a template source: which files it points at here (its model folder, its datasets) and the
 * template its trainer renders as a TemplateSource, found beside the model (so the model's tokenizer goes with
 * it). `piggyback template train.yaml`, `--template train.yaml` and a dataset paired with a config all render
 * with what the trainer renders.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILE_LIMITS, insideRoot, readTextChecked } from '../../domain/files';
import {
  isTemplateFileName,
  loadTemplate,
  parseTemplateText,
  TemplateLoadError,
  type TemplateSource,
} from '../../domain/template/source';
import {
  FRAMEWORK_NAMES,
  looksLikeTrainerConfig,
  readTrainerConfig,
  type TrainerConfig,
  TrainerConfigError,
  type TrainerTemplate,
} from '../../domain/trainers/config';

/** The model folder a config names, when it is a local folder with a tokenizer config (not a Hub id). */
export function localModel(config: TrainerConfig): string | undefined {
  if (!config.model) return undefined;
  const dir = path.isAbsolute(config.model) ? config.model : path.join(path.dirname(config.file), config.model);
  return fs.existsSync(path.join(dir, 'tokenizer_config.json')) ? dir : undefined;
}

/** The trainer's template as a source, with the tokenizer's special tokens (as the trainer renders it). */
export function trainerSource(
  t: TrainerTemplate,
  tokenizer: TemplateSource,
): { label: string; source: TemplateSource } {
  const tokens = (s: TemplateSource) => ({ ...s, specialTokens: { ...tokenizer.specialTokens, ...s.specialTokens } });
  switch (t.kind) {
    case 'tokenizer':
      return { label: "the tokenizer's template", source: tokenizer };
    case 'builtin':
      if (t.fallbackToTokenizer && tokenizer.text) return { label: "the tokenizer's template", source: tokenizer };
      return {
        label: `its built-in template "${t.name}" (version ${t.version})`,
        source: tokens(parseTemplateText(`${t.name}.jinja`, t.jinja)),
      };
    case 'jinja':
      return {
        label: 'the inline Jinja template of its config',
        source: tokens(parseTemplateText('inline.jinja', t.text)),
      };
    case 'file':
    case 'folder':
      return { label: `the template of ${path.basename(t.path)}`, source: tokens(loadTemplate(t.path)) };
  }
}

/**
 * A dataset the config names, as a file here: a path (axolotl's `path`, TRL's `dataset_name`) resolved against the
 * config's folder, or a LLaMA-Factory dataset name looked up in `<dataset_dir>/dataset_info.json` (its
 * `file_name`); undefined for Hub datasets.
 */
export function datasetFile(config: TrainerConfig, name: string): string | undefined {
  const dir = path.dirname(config.file);
  const direct = path.isAbsolute(name) ? name : path.join(dir, name);
  if (fs.existsSync(direct) && fs.statSync(direct).isFile()) return direct;
  if (config.framework !== 'llama-factory') return undefined;
  const dataDir = path.join(dir, config.datasetDir ?? 'data');
  const info = path.join(dataDir, 'dataset_info.json');
  if (!fs.existsSync(info)) return undefined;
  try {
    const entry = (JSON.parse(readTextChecked(info, FILE_LIMITS.config)) as Record<string, { file_name?: unknown }>)[
      name
    ];
    const fileName = typeof entry?.file_name === 'string' ? path.join(dataDir, entry.file_name) : undefined;
    return fileName && fs.existsSync(fileName) && fs.statSync(fileName).isFile() ? fileName : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether a path given as a template source is a training config: any YAML file (one that is not a config is then
 * said so), or a JSON file that names its model the way configs do (other JSON is a tokenizer or template file).
 */
export function isTrainerConfigPath(file: string, text?: string): boolean {
  if (/\.ya?ml$/i.test(file)) return true;
  if (!/\.json$/i.test(file) || isTemplateFileName(file)) return false;
  try {
    return looksLikeTrainerConfig(file, text ?? readTextChecked(file, FILE_LIMITS.config));
  } catch {
    return false; // not readable as a file: loading it as a template says why
  }
}

/** The dataset files a training config names (those that are files here). */
export function trainerDatasets(file: string, text?: string): string[] {
  let config: TrainerConfig | undefined;
  try {
    config = readTrainerConfig(file, text ?? readTextChecked(file, FILE_LIMITS.config));
  } catch {
    return [];
  }
  return config ? config.datasets.flatMap((d) => datasetFile(config, d.name) ?? []) : [];
}

/**
 * The template a training config's trainer renders, as a source in the model's folder. A config whose model is
 * not a local folder, or that is not a training config, is a TemplateLoadError located in the config.
 */
export function trainerTemplateSource(file: string, text?: string, root?: string): TemplateSource {
  const content = text ?? readTextChecked(file, FILE_LIMITS.config);
  let config: TrainerConfig | undefined;
  try {
    config = readTrainerConfig(file, content);
  } catch (e) {
    if (e instanceof TrainerConfigError) throw new TemplateLoadError(e.message, file, e.offset, content);
    throw e;
  }
  if (!config)
    throw new TemplateLoadError(
      `${path.basename(file)} is not an axolotl, LLaMA-Factory or TRL training config`,
      file,
      0,
      content,
    );
  const model = localModel(config);
  if (!model)
    throw new TemplateLoadError(
      `the model ${config.model ?? '(none named)'} of this ${FRAMEWORK_NAMES[config.framework]} config is not a local folder: the template its trainer renders needs the model's tokenizer`,
      file,
      config.templateAt.start,
      content,
    );
  // paths a workspace's config names stay inside the workspace (the editor gives its folder)
  const t = config.template;
  for (const p of [model, ...(t.kind === 'file' || t.kind === 'folder' ? [t.path] : [])])
    if (root !== undefined && !insideRoot(root, p))
      throw new TemplateLoadError(
        `${p}, named by this config, is outside the workspace folder ${root}: not read`,
        file,
        config.templateAt.start,
        content,
      );
  const tokenizer = loadTemplate(model);
  const { source } = trainerSource(config.template, tokenizer);
  // the template's text is not in the config (a built-in one, or another file): its findings are located on the
  // key that chose it
  const offsets = new Array<number>(Math.max(1, source.text.length)).fill(config.templateAt.start);
  return { ...source, folder: model, file, fileText: content, offsets, literal: undefined, alternates: [] };
}
