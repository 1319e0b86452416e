/**
 * The audit as one pipeline, shared by the CLI and the editor: a template with its tokenizer and audit, datasets
 * rendered through it, and a folder walk that pairs datasets with the model folder they belong to.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkpointFolder } from '../domain/checkpoints';
import { FILE_LIMITS, insideRoot, readTextChecked } from '../domain/files';
import { auditDataset, type DatasetReport } from '../domain/dataset/audit';
import { fileChunks } from '../domain/dataset/lines';
import { isParquet, ParquetReadError, parquetLines, splitOf } from '../domain/dataset/parquet';
import { type Finding, sortFindings } from '../domain/findings';
import {
  AUDIT_CLOCK,
  auditTemplate,
  loadErrorFinding,
  SAMPLE_QUERY,
  type TemplateAudit,
} from '../domain/template/audit';
import { ChatTemplate, type RenderOptions } from '../domain/template/render';
import { segmentPrompt } from '../domain/template/segments';
import { isTemplateFileName, loadTemplate, TemplateLoadError, type TemplateSource } from '../domain/template/source';
import { findTokenizerFile, type LoadedTokenizer, loadTokenizerCached } from '../domain/tokenizer';

export interface PrepareOptions {
  /** tokenizer.json or a folder holding it; default: beside the template. */
  tokenizer?: string;
  /** Named template in a list-valued chat_template. */
  name?: string;
  /** Template kwargs the trainer uses (enable_thinking, date_string, ...). */
  kwargs?: Record<string, unknown>;
  /** Special tokens for a bare .jinja with no tokenizer_config beside it. */
  specialTokens?: Record<string, string>;
  /** Unsaved text of the template file (editor buffers). */
  text?: string;
}

export interface PreparedTemplate {
  source?: TemplateSource;
  template?: ChatTemplate;
  tokenizer?: LoadedTokenizer;
  audit?: TemplateAudit;
  /** Findings when loading failed (the audit's findings otherwise). */
  findings: Finding[];
  kwargs: Record<string, unknown>;
}

/** A template and its tokenizer, audited (the ten CT checks): what the editor's diagnostics and `template` show. */
export function prepareTemplate(templatePath: string, options: PrepareOptions = {}): PreparedTemplate {
  const loaded = loadTemplateAndTokenizer(templatePath, options);
  if (!loaded.source) return loaded;
  const { source, tokenizer, kwargs, findings } = loaded;
  const audit = auditTemplate(source, { tokenizer, kwargs });
  return { source, template: audit.template, tokenizer, audit, findings: [...findings, ...audit.findings], kwargs };
}

/** Loads a template source and finds its tokenizer; no audit (findings: load and tokenizer problems only). */
function loadTemplateAndTokenizer(templatePath: string, options: PrepareOptions): PreparedTemplate {
  const kwargs = options.kwargs ?? {};
  let source: TemplateSource;
  try {
    source = loadTemplate(templatePath, { name: options.name, specialTokens: options.specialTokens }, options.text);
  } catch (e) {
    if (e instanceof TemplateLoadError) return { findings: [loadErrorFinding(e)], kwargs };
    throw e;
  }
  let tokenizer: LoadedTokenizer | undefined;
  const findings: Finding[] = [];
  const tokenizerFile = findTokenizerFile(options.tokenizer, source.folder);
  if (tokenizerFile) {
    try {
      tokenizer = loadTokenizerCached(tokenizerFile);
      // a bare .jinja takes its special tokens from the chosen tokenizer's config when nothing else gave them
      for (const [k, v] of Object.entries({ bos_token: tokenizer.bosToken, eos_token: tokenizer.eosToken })) {
        if (v !== undefined && source.specialTokens[k] === undefined) source.specialTokens[k] = v;
      }
    } catch (e) {
      findings.push({
        code: 'CT009',
        severity: 'warning',
        message: `cannot load the tokenizer ${tokenizerFile}: ${(e as Error).message}; token counts are unavailable`,
        file: tokenizerFile,
        line: 1,
        column: 1,
        endLine: 1,
        endColumn: 2,
      });
    }
  } else if (options.tokenizer) {
    findings.push({
      code: 'CT009',
      severity: 'warning',
      message: `no tokenizer.json at ${options.tokenizer}; token counts are unavailable`,
      file: source.file,
      line: 1,
      column: 1,
      endLine: 1,
      endColumn: 2,
    });
  }
  return { source, tokenizer, findings, kwargs };
}

/** A prepared template that can render and tokenize prompts (what the model commands, evals and exports need). */
export type PromptTemplate = PreparedTemplate & { template: ChatTemplate; tokenizer: LoadedTokenizer };

/** Why a template cannot serve model prompts: it did not load, or no tokenizer.json was found for it. */
export class PromptTemplateError extends Error {
  constructor(
    readonly source: string,
    readonly missing: 'template' | 'tokenizer',
    readonly prepared: PreparedTemplate,
  ) {
    super(
      `cannot render prompts with ${source}: ${missing === 'tokenizer' ? 'no tokenizer.json found' : (prepared.findings[0]?.message ?? 'the template did not load')}`,
    );
    this.name = 'PromptTemplateError';
  }
}

/**
 * Where a checkpoint pair's chat template and tokenizer come from: the finetuned checkpoint when it has its own
 * (a tokenizer re-saved with the finetune), else the base (a PEFT adapter folder usually has neither).
 */
export function pairTemplateSource(finetuned: string, base: string | undefined): string {
  const hasTemplate = (dir: string) =>
    ['tokenizer_config.json', 'chat_template.jinja', 'chat_template.json', 'tokenizer.json'].some((f) =>
      fs.existsSync(path.join(dir, f)),
    );
  // a checkpoint given as an .onnx file or an onnx/ folder keeps its tokenizer files with its config.json
  const ft = checkpointFolder(finetuned);
  const b = base === undefined ? undefined : checkpointFolder(base);
  return b && !hasTemplate(ft) && hasTemplate(b) ? b : ft;
}

/** prepareTemplate for model prompts: throws PromptTemplateError unless both the template and a tokenizer load. */
/**
 * A template ready to render model prompts (drift, patch, evals, the TReFT export): loaded, parsed and checked with
 * one segmented render, without the audit's ten checks (the editor and `template` run those).
 */
export function preparePromptTemplate(source: string, options: PrepareOptions = {}): PromptTemplate {
  const p = loadTemplateAndTokenizer(source, options);
  if (p.source) {
    const failure = (message: string): Finding => ({
      code: 'CT009',
      severity: 'error',
      message,
      file: p.source!.file,
      line: 1,
      column: 1,
      endLine: 1,
      endColumn: 2,
    });
    try {
      const template = new ChatTemplate(p.source.text);
      segmentPrompt(template, { ...renderOptions(p), query: SAMPLE_QUERY });
      p.template = template;
    } catch (e) {
      p.findings.push(failure(`The template cannot render a one-turn prompt: ${(e as Error).message}`));
    }
  }
  if (!p.template) throw new PromptTemplateError(source, 'template', p);
  if (!p.tokenizer) throw new PromptTemplateError(source, 'tokenizer', p);
  return p as PromptTemplate;
}

/**
 * How a prepared template renders everywhere (audits, model prompts, exports): its special tokens as template
 * variables (bos_token, ...), the trainer's kwargs, and the fixed audit clock for strftime_now.
 */
export function renderOptions(prepared: PreparedTemplate): RenderOptions {
  return { specialTokens: prepared.source?.specialTokens, kwargs: prepared.kwargs, now: AUDIT_CLOCK };
}

export async function auditDatasetWith(
  file: string,
  prepared: PreparedTemplate,
  text?: string,
): Promise<DatasetReport> {
  const options = {
    file,
    template: prepared.template,
    tokenizer: prepared.tokenizer,
    renderOptions: renderOptions(prepared),
    defaultSystemPrompt: prepared.audit?.defaultSystemPrompt,
  };
  if (text !== undefined || !isParquet(file))
    return auditDataset(text !== undefined ? [text] : fileChunks(file), options);
  // Parquet: one JSON line per row, read a row group at a time; findings are located by row, column 1
  const read: { error?: ParquetReadError } = {};
  const report = await auditDataset(untilError(parquetLines(file), read), options);
  for (const e of report.errors) e.column = 1;
  if (read.error)
    report.errors.push({
      line: report.rows + 1,
      column: 1,
      code: 'DS010',
      severity: 'error',
      message: read.error.message,
    });
  return report;
}

/** The lines of `source` up to a ParquetReadError, which is kept in `read` (the rows before it are audited). */
async function* untilError(source: AsyncIterable<string>, read: { error?: ParquetReadError }): AsyncGenerator<string> {
  try {
    yield* source;
  } catch (e) {
    if (!(e instanceof ParquetReadError)) throw e;
    read.error = e;
  }
}

/**
 * Dataset errors as findings (one list for SARIF, Markdown and the Problems view). A probe file (rows with a
 * `question`) is not training data: its rows are checked, but the findings about what a finetune would learn from
 * the rows (DS1xx: shared prefixes, default system prompts, lengths) are not raised on it.
 */
export function datasetFindings(report: DatasetReport): Finding[] {
  const rows = report.errors.map<Finding>((e) => ({
    code: e.code,
    severity: e.severity,
    message: e.message,
    file: report.file,
    line: e.line,
    column: e.column,
    endLine: e.line,
    endColumn: e.column + 1,
  }));
  const surface =
    report.format === 'probes' ? report.findings.filter((f) => !/^DS1\d\d$/.test(f.code)) : report.findings;
  return [...rows, ...surface];
}

const SKIP_DIRS = new Set([
  'node_modules',
  '.git',
  'dist',
  'out',
  '.cache',
  '.venv',
  'venv',
  '__pycache__',
  '.vscode-test',
]);

export interface WorkspaceScan {
  /** Template sources: model folders (holding a template) and standalone .jinja files. */
  templates: string[];
  datasets: string[];
}

/** Finds model folders (with a chat template) and JSONL datasets under a folder. */
export function scanFolder(root: string, maxFiles = 20000): WorkspaceScan {
  const templates: string[] = [];
  const datasets: string[] = [];
  let seen = 0;
  const walk = (dir: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    entries.sort((a, b) => a.name.localeCompare(b.name));
    let folderHasTemplate = false;
    for (const e of entries) {
      if (++seen > maxFiles) return;
      const full = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (!SKIP_DIRS.has(e.name) && !e.name.startsWith('.')) walk(full);
      } else if (e.isFile()) {
        if (/\.(jsonl|parquet)$/i.test(e.name)) datasets.push(full);
        else if (isTemplateFileName(e.name) && hasTemplate(full)) {
          if (/\.(jinja2?|j2)$/i.test(e.name) && e.name !== 'chat_template.jinja') templates.push(full);
          else folderHasTemplate = true;
        }
      }
    }
    if (folderHasTemplate) templates.push(dir);
  };
  walk(root);
  return { templates: templates.sort(), datasets: datasets.sort() };
}

function hasTemplate(file: string): boolean {
  if (!file.endsWith('.json')) return true;
  try {
    const v = JSON.parse(readTextChecked(file, FILE_LIMITS.config)) as { chat_template?: unknown };
    return v.chat_template !== undefined && v.chat_template !== null;
  } catch {
    return file.endsWith('tokenizer_config.json'); // broken JSON: still report it, as CT009
  }
}

/** The workspace file that pairs datasets with templates: { "datasets": { "data/train.jsonl": "models/base" } }. */
export const ASSOCIATION_FILE = '.piggyback.json';

export type AssociationSource = 'explicit' | 'workspace file' | 'nearest model folder' | 'only template' | 'none';

/**
 * Which template a dataset is rendered with, and why (shown to the user, who can change it). An entry of
 * .piggyback.json that leaves the workspace is not used: `refused` says so (a WS001 finding).
 */
export function associate(
  dataset: string,
  root: string,
  templates: string[],
  explicit?: string,
): { template?: string; source: AssociationSource; refused?: Finding } {
  if (explicit) return { template: path.resolve(root, explicit), source: 'explicit' };
  const assocFile = path.join(root, ASSOCIATION_FILE);
  let refused: Finding | undefined;
  if (fs.existsSync(assocFile)) {
    try {
      const text = readTextChecked(assocFile, FILE_LIMITS.association);
      const map = (JSON.parse(text) as { datasets?: Record<string, string> }).datasets ?? {};
      const rel = path.relative(root, dataset).split(path.sep).join('/');
      const entry = map[rel];
      if (typeof entry === 'string' && entry) {
        if (insideRoot(root, entry)) return { template: path.resolve(root, entry), source: 'workspace file' };
        refused = outsideWorkspace(
          assocFile,
          text,
          entry,
          `${ASSOCIATION_FILE} pairs ${rel} with ${entry}, which is outside the workspace folder ${root}: ignored`,
        );
      }
    } catch {
      // a broken or refused association file falls through to the guess
    }
  }
  const guess = nearestTemplate(dataset, templates);
  return refused ? { ...guess, refused } : guess;
}

/** A WS001 finding at the first place `value` appears (JSON-quoted) in a workspace file. */
export function outsideWorkspace(file: string, text: string, value: string, message: string): Finding {
  const at = Math.max(0, text.indexOf(JSON.stringify(value)));
  const before = text.slice(0, at).split('\n');
  const line = before.length;
  const column = before[before.length - 1].length + 1;
  return {
    code: 'WS001',
    severity: 'error',
    message,
    file,
    line,
    column,
    endLine: line,
    endColumn: column + JSON.stringify(value).length,
  };
}

function nearestTemplate(dataset: string, templates: string[]): { template?: string; source: AssociationSource } {
  // nearest: a template in the dataset's folder or an ancestor, else the closest by shared path
  let best: string | undefined;
  let bestScore = -1;
  const dsParts = path.dirname(path.resolve(dataset)).split(path.sep);
  for (const t of templates) {
    const folder = fs.existsSync(t) && fs.statSync(t).isDirectory() ? t : path.dirname(t);
    const parts = path.resolve(folder).split(path.sep);
    let shared = 0;
    while (shared < parts.length && shared < dsParts.length && parts[shared] === dsParts[shared]) shared++;
    const score = shared * 1000 - (parts.length - shared);
    if (score > bestScore) [best, bestScore] = [t, score];
  }
  if (best) return { template: best, source: templates.length === 1 ? 'only template' : 'nearest model folder' };
  return { source: 'none' };
}

export interface FolderAudit {
  root: string;
  templates: { path: string; prepared: PreparedTemplate }[];
  datasets: {
    file: string;
    template?: string;
    association: AssociationSource;
    report: DatasetReport;
    /** The split its Hub-style name says it holds (train-00000-of-00002.parquet: train). */
    split?: string;
  }[];
  findings: Finding[];
}

export async function auditFolder(
  root: string,
  options: PrepareOptions & { template?: string; signal?: AbortSignal } = {},
): Promise<FolderAudit> {
  const scan = scanFolder(root);
  const templatePaths = options.template ? [path.resolve(root, options.template)] : scan.templates;
  const prepared = new Map<string, PreparedTemplate>();
  const result: FolderAudit = { root, templates: [], datasets: [], findings: [] };
  for (const t of templatePaths) {
    const p = prepareTemplate(t, options);
    prepared.set(t, p);
    result.templates.push({ path: t, prepared: p });
    result.findings.push(...p.findings);
  }
  for (const d of scan.datasets) {
    if (options.signal?.aborted) break;
    const a = associate(d, root, templatePaths, options.template);
    let p = a.template ? prepared.get(a.template) : undefined;
    if (a.template && !p) {
      p = prepareTemplate(a.template, options);
      prepared.set(a.template, p);
    }
    const report = await auditDatasetWith(d, p ?? { findings: [], kwargs: {} });
    result.datasets.push({ file: d, template: a.template, association: a.source, report, split: splitOf(d) });
    result.findings.push(...datasetFindings(report));
    if (a.refused && !result.findings.some((f) => f.code === 'WS001' && f.message === a.refused!.message))
      result.findings.push(a.refused);
  }
  sortFindings(result.findings);
  return result;
}
