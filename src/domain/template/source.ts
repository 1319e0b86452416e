/**
 * Where a chat template comes from: tokenizer_config.json (`chat_template` as a string or a list of named
 * templates), chat_template.jinja, chat_template.json, a standalone .jinja file, or a model folder holding these.
 * Pure parsing is separate from disk access so the editor can audit unsaved text.
 */
import * as fs from 'node:fs';
import { FILE_LIMITS, readTextChecked } from '../files';
import * as path from 'node:path';
import { jsonStringOffsets, type JsonNode, JsonSyntaxError, nodeAt, parseJsonWithPositions } from '../json';

export type SpecialTokens = Record<string, string>;

export interface TemplateSource {
  /** The Jinja source. */
  text: string;
  /** 'default', a named template from a list, or the file's base name. */
  name: string;
  /** Names of every template in the file (for a list-valued chat_template), else [name]. */
  names: string[];
  /** The file the template text lives in, and that file's text (to locate findings). */
  file?: string;
  fileText?: string;
  /** offsets[i] = offset in fileText of template char i (JSON-escaped templates); identity when undefined. */
  offsets?: number[];
  /** Where the template's JSON string literal is in fileText, quotes included (JSON sources only). */
  literal?: { start: number; end: number };
  /** tokenizer_config.json content that came with the template ({} when none). */
  config: Record<string, unknown>;
  configFile?: string;
  /** bos_token, eos_token, ... as strings, as transformers passes them to the template. */
  specialTokens: SpecialTokens;
  /** Folder the template belongs to (where tokenizer.json is looked for). */
  folder?: string;
  /** Other templates found beside this one that a different tool would pick (CT006). */
  alternates: { file: string; text: string }[];
}

/** A problem loading a template, located in the file (1-based line/column come from the offset at use). */
export class TemplateLoadError extends Error {
  constructor(
    message: string,
    readonly file: string | undefined,
    readonly offset: number,
    readonly fileText?: string,
  ) {
    super(message);
    this.name = 'TemplateLoadError';
  }
}

export const SPECIAL_TOKEN_KEYS = [
  'bos_token',
  'eos_token',
  'unk_token',
  'sep_token',
  'pad_token',
  'cls_token',
  'mask_token',
];

/** Reads bos_token etc. from a tokenizer_config object; values may be strings or AddedToken objects. */
export function specialTokensOf(config: Record<string, unknown>): SpecialTokens {
  const out: SpecialTokens = {};
  for (const key of SPECIAL_TOKEN_KEYS) {
    const v = config[key];
    if (typeof v === 'string') out[key] = v;
    else if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string')
      out[key] = (v as { content: string }).content;
  }
  return out;
}

export function isTemplateFileName(file: string): boolean {
  const base = path.basename(file).toLowerCase();
  return (
    base === 'tokenizer_config.json' ||
    base === 'chat_template.json' ||
    base.endsWith('.jinja') ||
    base.endsWith('.jinja2') ||
    base.endsWith('.j2')
  );
}

/**
 * Parses a template file's text. JSON files must hold `chat_template`; other files are Jinja source.
 * `name` picks a named template from a list (default: 'default', else the first).
 */
export function parseTemplateText(file: string, fileText: string, name?: string): TemplateSource {
  const base = path.basename(file);
  if (!base.toLowerCase().endsWith('.json')) {
    if (name !== undefined && name !== 'default' && name !== base)
      throw new TemplateLoadError(`no chat template named "${name}": ${base} is a single template`, file, 0, fileText);
    return {
      text: fileText,
      name: base,
      names: [base],
      file,
      fileText,
      config: {},
      specialTokens: {},
      folder: path.dirname(file),
      alternates: [],
    };
  }
  let root: JsonNode;
  let config: Record<string, unknown>;
  try {
    root = parseJsonWithPositions(fileText);
    config = JSON.parse(fileText) as Record<string, unknown>;
  } catch (e) {
    const offset = e instanceof JsonSyntaxError ? e.offset : 0;
    throw new TemplateLoadError(`${base} is not valid JSON: ${(e as Error).message}`, file, offset, fileText);
  }
  if (root.kind !== 'object')
    throw new TemplateLoadError(`${base} must hold a JSON object`, file, root.start, fileText);
  const isConfig = base.toLowerCase() !== 'chat_template.json';
  const specialTokens = isConfig ? specialTokensOf(config) : {};
  const node = nodeAt(root, ['chat_template']);
  if (!node || (node.kind === 'literal' && node.value === null)) {
    throw new TemplateLoadError(`${base} has no chat_template`, file, root.start, fileText);
  }
  if (node.kind === 'string') {
    if (name !== undefined && name !== 'default')
      throw new TemplateLoadError(
        `no chat template named "${name}": ${base} holds a single template (named templates come as a list of { "name", "template" })`,
        file,
        node.start,
        fileText,
      );
    return {
      text: node.value,
      name: 'default',
      names: ['default'],
      file,
      fileText,
      offsets: jsonStringOffsets(fileText, node),
      literal: { start: node.start, end: node.end },
      config: isConfig ? config : {},
      configFile: isConfig ? file : undefined,
      specialTokens,
      folder: path.dirname(file),
      alternates: [],
    };
  }
  if (node.kind === 'array') {
    // transformers' list form: [{ "name": "default", "template": "..." }, { "name": "tool_use", ... }]
    const named: { name: string; node: Extract<JsonNode, { kind: 'string' }> }[] = [];
    for (const item of node.items) {
      const n = nodeAt(item, ['name']);
      const t = nodeAt(item, ['template']);
      if (n?.kind !== 'string' || t?.kind !== 'string') {
        throw new TemplateLoadError(
          `each chat_template entry needs a string "name" and "template"`,
          file,
          item.start,
          fileText,
        );
      }
      named.push({ name: n.value, node: t });
    }
    if (named.length === 0) throw new TemplateLoadError('chat_template is an empty list', file, node.start, fileText);
    const wanted = name ?? 'default';
    const pick = named.find((t) => t.name === wanted) ?? (name === undefined ? named[0] : undefined);
    if (!pick) {
      throw new TemplateLoadError(
        `no chat template named "${wanted}" (have: ${named.map((t) => t.name).join(', ')})`,
        file,
        node.start,
        fileText,
      );
    }
    return {
      text: pick.node.value,
      name: pick.name,
      names: named.map((t) => t.name),
      file,
      fileText,
      offsets: jsonStringOffsets(fileText, pick.node),
      literal: { start: pick.node.start, end: pick.node.end },
      config: isConfig ? config : {},
      configFile: isConfig ? file : undefined,
      specialTokens,
      folder: path.dirname(file),
      alternates: [],
    };
  }
  throw new TemplateLoadError(
    'chat_template must be a string or a list of {name, template}',
    file,
    node.start,
    fileText,
  );
}

export interface LoadTemplateOptions {
  /** Named template to pick from a list-valued chat_template. */
  name?: string;
  /** Special tokens to use when the template has no tokenizer_config beside it (e.g. from settings). */
  specialTokens?: SpecialTokens;
}

/**
 * Loads a template from a file or a model folder. In a folder, chat_template.jinja wins over the
 * tokenizer_config.json entry (as transformers loads it); the other is kept as an alternate for CT006.
 * Special tokens come from the folder's tokenizer_config.json even when the template is a .jinja file.
 */
export function loadTemplate(p: string, options: LoadTemplateOptions = {}, overrideText?: string): TemplateSource {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(p);
  } catch {
    throw new TemplateLoadError(`no such file or folder: ${p}`, p, 0);
  }
  if (stat.isDirectory()) return loadTemplateFolder(p, options);
  const fileText = overrideText ?? readText(p);
  const source = parseTemplateText(p, fileText, options.name);
  const folder = path.dirname(p);
  const configFile = path.join(folder, 'tokenizer_config.json');
  if (!source.configFile && path.resolve(configFile) !== path.resolve(p) && fs.existsSync(configFile)) {
    const config = readJsonQuiet(configFile);
    if (config) {
      source.config = config;
      source.configFile = configFile;
      source.specialTokens = specialTokensOf(config);
    }
  }
  source.specialTokens = { ...options.specialTokens, ...source.specialTokens };
  source.alternates = alternatesIn(folder, source);
  return source;
}

function loadTemplateFolder(folder: string, options: LoadTemplateOptions): TemplateSource {
  for (const candidate of ['chat_template.jinja', 'tokenizer_config.json', 'chat_template.json']) {
    const file = path.join(folder, candidate);
    if (!fs.existsSync(file)) continue;
    if (candidate === 'tokenizer_config.json') {
      const config = readJsonQuiet(file);
      if (config && (config.chat_template === undefined || config.chat_template === null)) continue;
    }
    return loadTemplate(file, options);
  }
  const jinja = fs
    .readdirSync(folder)
    .filter((f) => /\.(jinja2?|j2)$/i.test(f))
    .sort();
  if (jinja.length > 0) return loadTemplate(path.join(folder, jinja[0]), options);
  throw new TemplateLoadError(
    `no chat template in ${folder} (looked for chat_template.jinja, tokenizer_config.json with chat_template, chat_template.json, *.jinja)`,
    folder,
    0,
  );
}

/** Templates beside this one that another loader would pick instead. */
function alternatesIn(folder: string, chosen: TemplateSource): { file: string; text: string }[] {
  const out: { file: string; text: string }[] = [];
  for (const candidate of ['chat_template.jinja', 'tokenizer_config.json', 'chat_template.json']) {
    const file = path.join(folder, candidate);
    if (chosen.file && path.resolve(file) === path.resolve(chosen.file)) continue;
    if (!fs.existsSync(file)) continue;
    try {
      const other = parseTemplateText(file, readText(file), chosen.names.length > 1 ? chosen.name : undefined);
      if (other.text !== chosen.text) out.push({ file, text: other.text });
    } catch {
      // no template there, or unreadable: not an alternate
    }
  }
  return out;
}

function readText(file: string): string {
  try {
    return readTextChecked(file, FILE_LIMITS.config);
  } catch (e) {
    throw new TemplateLoadError(`cannot read ${file}: ${(e as Error).message}`, file, 0);
  }
}

function readJsonQuiet(file: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(readTextChecked(file, FILE_LIMITS.config)) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The edit of the template's file that makes its template `text`: the JSON string literal replaced (a
 * tokenizer_config.json keeps every other key and byte), or the whole file for a Jinja file.
 */
export function templateFileEdit(source: TemplateSource, text: string): { start: number; end: number; text: string } {
  if (source.literal) return { ...source.literal, text: JSON.stringify(text) };
  return { start: 0, end: source.fileText?.length ?? source.text.length, text };
}

/** Maps an offset in the template text to an offset in its file. */
export function fileOffset(source: TemplateSource, offset: number): number {
  if (!source.offsets) return offset;
  return source.offsets[Math.max(0, Math.min(offset, source.offsets.length - 1))];
}
