/**
 * The audit as one pipeline, shared by the CLI and the editor: a template with its tokenizer and audit, datasets
 * rendered through it, and a folder walk that pairs datasets with the model folder they belong to.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { inParallel } from './parallel';
import { checkpointFolder } from '../domain/checkpoints';
import { FILE_LIMITS, insideRoot, readTextChecked } from '../domain/files';
import {
  type DatasetAuditOptions,
  type DatasetReport,
  type DatasetScan,
  finishDatasetAudit,
  scanDataset,
} from '../domain/dataset/audit';
import { fileChunks } from '../domain/dataset/lines';
import { contextLength, type LossMode } from '../domain/dataset/training';
import { arrowLines } from '../domain/dataset/arrow';
import { ColumnarReadError, isArrow, isColumnar, splitOf } from '../domain/dataset/columnar';
import { CsvReadError, csvHasChatColumns, csvLines, isCsv } from '../domain/dataset/csv';
import {
  isJsonDataset,
  isJsonFile,
  JsonArrayReadError,
  jsonArrayLines,
  jsonArrayTextLines,
  type Start,
} from '../domain/dataset/jsonArray';
import { parquetLines } from '../domain/dataset/parquet';
import { CODES, type Finding, sortFindings } from '../domain/findings';
import {
  AUDIT_CLOCK,
  auditTemplate,
  loadErrorFinding,
  SAMPLE_QUERY,
  type TemplateAudit,
} from '../domain/template/audit';
import { ChatTemplate, type RenderOptions } from '../domain/template/render';
import { segmentPrompt } from '../domain/template/segments';
import {
  isTemplateFileName,
  loadTemplate,
  specialTokensOf,
  TemplateLoadError,
  type TemplateSource,
} from '../domain/template/source';
import { findTokenizerFile, type LoadedTokenizer, loadTokenizerCached, tokenizerConfigOf } from '../domain/tokenizer';

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

/**
 * Loads a template source and finds its tokenizer; no audit (findings: load and tokenizer problems only). With
 * `tokenizer: false` the tokenizer is not built (a second for a 150k vocabulary): only its tokenizer_config.json is
 * read, for the special tokens a bare .jinja takes from it, as a loaded tokenizer would give them.
 */
function loadTemplateAndTokenizer(
  templatePath: string,
  options: PrepareOptions,
  load: { tokenizer: boolean } = { tokenizer: true },
): PreparedTemplate {
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
  if (tokenizerFile && !load.tokenizer) {
    const special = specialTokensOf(tokenizerConfigOf(tokenizerFile));
    for (const [k, v] of Object.entries({ bos_token: special.bos_token, eos_token: special.eos_token })) {
      if (v !== undefined && source.specialTokens[k] === undefined) source.specialTokens[k] = v;
    }
  } else if (tokenizerFile) {
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
  lossMode?: LossMode,
): Promise<DatasetReport> {
  const scan = await scanDatasetFile(file, scanOptions(prepared), text);
  return finishDatasetAudit(scan, datasetAuditOptions(prepared, lossMode));
}

/** Everything a dataset audit takes from a prepared template (the editor adds its file and progress). */
export function datasetAuditOptions(
  prepared: PreparedTemplate,
  lossMode?: LossMode,
): Omit<DatasetAuditOptions, 'file'> {
  return { ...scanOptions(prepared), tokenizer: prepared.tokenizer, lossMode };
}

/** How a prepared template renders a dataset's rows (what a scan needs of it: no tokenizer). */
function scanOptions(prepared: PreparedTemplate): Omit<DatasetAuditOptions, 'tokenizer' | 'file'> {
  return {
    template: prepared.template,
    renderOptions: renderOptions(prepared),
    defaultSystemPrompt: prepared.audit?.defaultSystemPrompt,
    contextLength: prepared.source ? contextLength(prepared.source.folder, prepared.source.config) : undefined,
  };
}

/** Scans a JSONL, Parquet, Arrow or CSV file's rows (or the given text of it). */
async function scanDatasetFile(
  file: string,
  options: Omit<DatasetAuditOptions, 'tokenizer' | 'file'>,
  text?: string,
): Promise<DatasetScan> {
  if (text !== undefined ? !isJsonFile(file) : !(isColumnar(file) || isCsv(file) || isJsonFile(file)))
    return scanDataset(text !== undefined ? [text] : fileChunks(file), { ...options, file });
  // Parquet and Arrow: one JSON line per row, read a row group (record batch) at a time, located by row; CSV: one
  // per record, located at the line the record starts on; a JSON array: one per example, located where it starts.
  // Column 1 for the first two: a row has no JSON text to point into.
  const read: { error?: ColumnarReadError | CsvReadError | JsonArrayReadError } = {};
  const starts: (number | Start)[] = [];
  const rows =
    text !== undefined
      ? toAsync(jsonArrayTextLines(file, text, starts as Start[]))
      : (datasetRows(file, starts) as AsyncIterable<string>);
  const scan = await scanDataset(untilError(rows, read), { ...options, file });
  for (const e of scan.errors) Object.assign(e, rowLocation(starts, e.line));
  for (const r of scan.longRows?.kept ?? []) r.line = rowLocation(starts, r.line).line;
  if (read.error)
    scan.errors.push({
      line: read.error instanceof ColumnarReadError ? scan.rows + 1 : read.error.line,
      column: read.error instanceof JsonArrayReadError ? read.error.column : 1,
      code: 'DS010',
      severity: 'error',
      message: `${read.error.message} (${scan.rows.toLocaleString('en')} row${scan.rows === 1 ? '' : 's'} before it audited)`,
    });
  return scan;
}

/** What a dataset scan in a worker thread is asked: the file, and the template source to render it with. */
export interface ScanRequest {
  file: string;
  template?: string;
  options: PrepareOptions;
}

/** The worker's answer: the scan, and what it rendered with (compared with the template prepared meanwhile). */
export type ScanReply = { scan: DatasetScan; renderedWith: string } | { error: string };

/**
 * What decides a scan's frames: the template text (when it renders), its special tokens, kwargs and default system
 * prompt. A scan made with another key (a tokenizer that failed to load in one thread only) is not used.
 */
function renderKey(p: PreparedTemplate): string {
  return JSON.stringify([
    p.template ? p.source?.text : null,
    p.source?.specialTokens ?? null,
    p.kwargs,
    p.audit?.defaultSystemPrompt ?? null,
    p.source ? (contextLength(p.source.folder, p.source.config) ?? null) : null,
  ]);
}

/**
 * The worker thread's side of scanDatasetInWorker: the template loaded and audited without its tokenizer (the
 * frames and the default system prompt need none), then the rows scanned.
 */
export async function answerScanRequest(req: ScanRequest): Promise<ScanReply> {
  try {
    const p: PreparedTemplate = req.template
      ? prepareWithoutTokenizer(req.template, req.options)
      : { findings: [], kwargs: {} };
    return { scan: await scanDatasetFile(req.file, scanOptions(p)), renderedWith: renderKey(p) };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

function prepareWithoutTokenizer(templatePath: string, options: PrepareOptions): PreparedTemplate {
  const loaded = loadTemplateAndTokenizer(templatePath, options, { tokenizer: false });
  if (!loaded.source) return loaded;
  const audit = auditTemplate(loaded.source, { kwargs: loaded.kwargs });
  return { ...loaded, template: audit.template, audit };
}

/** Runs answerScanRequest in a worker thread (the bundle `workerFile`); undefined when the worker fails. */
export function scanDatasetInWorker(
  workerFile: string,
  req: ScanRequest,
  signal?: AbortSignal,
): Promise<ScanReply | undefined> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve(undefined);
      return;
    }
    let worker: Worker;
    try {
      worker = new Worker(workerFile, { workerData: req });
    } catch {
      resolve(undefined);
      return;
    }
    const stop = () => void worker.terminate();
    signal?.addEventListener('abort', stop, { once: true });
    const done = (reply: ScanReply | undefined) => {
      signal?.removeEventListener('abort', stop);
      resolve(reply);
    };
    worker.once('message', (reply: ScanReply) => done(reply));
    worker.once('error', () => done(undefined));
    worker.once('exit', () => done(undefined));
  });
}

/**
 * A dataset file audited with a template source. With `workerFile` (the dataset scan worker's bundle) the rows are
 * scanned in a worker thread while this thread loads and audits the template and its tokenizer, which for a
 * 150k-vocabulary tokenizer is a third of the work; the report is the same as auditDatasetWith's, which this falls
 * back to when the worker fails or rendered with something else.
 */
export async function auditDatasetFile(
  file: string,
  templatePath: string | undefined,
  options: PrepareOptions & { workerFile?: string; signal?: AbortSignal; lossMode?: LossMode },
  scanning?: Promise<ScanReply | undefined>,
): Promise<{ prepared: PreparedTemplate; report: DatasetReport }> {
  const { workerFile, signal, lossMode, ...prepareOptions } = options;
  const reply =
    scanning ??
    (workerFile
      ? scanDatasetInWorker(workerFile, { file, template: templatePath, options: prepareOptions }, signal)
      : undefined);
  const prepared = templatePath ? prepareTemplate(templatePath, prepareOptions) : { findings: [], kwargs: {} };
  return { prepared, report: await reportFrom(await reply, file, prepared, lossMode) };
}

async function reportFrom(reply: ScanReply | undefined, file: string, prepared: PreparedTemplate, lossMode?: LossMode) {
  if (reply && 'scan' in reply && reply.renderedWith === renderKey(prepared))
    return finishDatasetAudit(reply.scan, datasetAuditOptions(prepared, lossMode));
  return auditDatasetWith(file, prepared, undefined, lossMode);
}

/**
 * Where row `row` (1-based) of a dataset file starts, from what datasetRows recorded: a JSON-array example's line
 * and column, a CSV record's line, else the row number itself (JSONL lines; Parquet and Arrow rows).
 */
export function rowLocation(starts: (number | Start)[], row: number): Start {
  const s = starts[row - 1];
  return typeof s === 'object' ? s : { line: s ?? row, column: 1 };
}

/**
 * A dataset file as the audit reads it: a JSONL file's chunks, or one JSON line per Parquet or Arrow row or CSV
 * record (`csvStarts` receives the line each CSV record starts on). readLines makes lines of either.
 */
export function datasetRows(file: string, starts: (number | Start)[] = []): AsyncIterable<Buffer | string> {
  if (isCsv(file)) return csvLines(file, starts as number[]);
  if (isJsonFile(file)) return jsonArrayLines(file, starts as Start[]);
  if (isColumnar(file)) return isArrow(file) ? arrowLines(file) : parquetLines(file);
  return fileChunks(file);
}

async function* toAsync<T>(items: Iterable<T>): AsyncGenerator<T> {
  yield* items;
}

/** The lines of `source` up to a read error, which is kept in `read` (the rows before it are audited). */
async function* untilError(
  source: AsyncIterable<string>,
  read: { error?: ColumnarReadError | CsvReadError | JsonArrayReadError },
): AsyncGenerator<string> {
  try {
    yield* source;
  } catch (e) {
    if (!(e instanceof ColumnarReadError || e instanceof CsvReadError || e instanceof JsonArrayReadError)) throw e;
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
  /** The walk stopped at its budget of entries: what lies past it was not looked at. */
  truncated?: { maxFiles: number };
}

/** Finds model folders (with a chat template) and JSONL datasets under a folder. */
export function scanFolder(root: string, maxFiles = 20000): WorkspaceScan {
  const templates: string[] = [];
  const datasets: string[] = [];
  let seen = 0;
  let truncated = false;
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
      if (++seen > maxFiles) {
        truncated = true;
        return;
      }
      const full = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (!SKIP_DIRS.has(e.name) && !e.name.startsWith('.')) walk(full);
      } else if (e.isFile()) {
        if (
          /\.(jsonl|parquet|arrow)$/i.test(e.name) ||
          (isCsv(e.name) && csvHasChatColumns(full)) ||
          (isJsonFile(e.name) && !isTemplateFileName(e.name) && isJsonDataset(full))
        )
          datasets.push(full);
        else if (isTemplateFileName(e.name) && hasTemplate(full)) {
          if (/\.(jinja2?|j2)$/i.test(e.name) && e.name !== 'chat_template.jinja') templates.push(full);
          else folderHasTemplate = true;
        }
      }
    }
    if (folderHasTemplate) templates.push(dir);
  };
  walk(root);
  return { templates: templates.sort(), datasets: datasets.sort(), ...(truncated ? { truncated: { maxFiles } } : {}) };
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
  options: PrepareOptions & {
    template?: string;
    signal?: AbortSignal;
    workerFile?: string;
    lossMode?: LossMode;
    /** The folder walk's budget of entries (default 20,000); past it, WS002. */
    maxFiles?: number;
  } = {},
): Promise<FolderAudit> {
  const { workerFile, signal, template, lossMode, maxFiles, ...prepareOptions } = options;
  const scan = scanFolder(root, maxFiles);
  const templatePaths = template ? [path.resolve(root, template)] : scan.templates;
  const result: FolderAudit = { root, templates: [], datasets: [], findings: [] };
  const jobs = scan.datasets.map((file) => ({ file, association: associate(file, root, templatePaths, template) }));
  // datasets are scanned in worker threads (a few at a time) while the templates and their tokenizers load here;
  // each job's scan is a promise the loop below takes in order (scanDatasetInWorker never rejects)
  const answered: ((reply: ScanReply | undefined) => void)[] = [];
  const scans = workerFile
    ? jobs.map(() => new Promise<ScanReply | undefined>((resolve) => answered.push(resolve)))
    : [];
  if (workerFile)
    void inParallel([...jobs.keys()], Math.max(1, Math.min(4, os.availableParallelism() - 1)), async (i) =>
      answered[i](
        await scanDatasetInWorker(
          workerFile,
          { file: jobs[i].file, template: jobs[i].association.template, options: prepareOptions },
          signal,
        ),
      ),
    );
  const prepared = new Map<string, PreparedTemplate>();
  const prepare = (t: string) => {
    let p = prepared.get(t);
    if (!p) {
      p = prepareTemplate(t, prepareOptions);
      prepared.set(t, p);
    }
    return p;
  };
  for (const t of templatePaths) {
    const p = prepare(t);
    result.templates.push({ path: t, prepared: p });
    result.findings.push(...p.findings);
  }
  for (const [i, { file, association: a }] of jobs.entries()) {
    if (signal?.aborted) break;
    const p = a.template ? prepare(a.template) : { findings: [], kwargs: {} };
    const scanned = await scans[i];
    // cancelled while the worker scanned (it was stopped): no scan in this thread either
    if (signal?.aborted) break;
    const report = await reportFrom(scanned, file, p, lossMode);
    result.datasets.push({ file, template: a.template, association: a.source, report, split: splitOf(file) });
    result.findings.push(...datasetFindings(report));
    if (a.refused && !result.findings.some((f) => f.code === 'WS001' && f.message === a.refused!.message))
      result.findings.push(a.refused);
  }
  // a walk that stopped at its budget says so: what it did not look at is not "none found"
  if (scan.truncated)
    result.findings.push({
      code: 'WS002',
      severity: 'warning',
      message: `the folder has more than ${scan.truncated.maxFiles.toLocaleString('en')} files and folders; the audit looked at the first ${scan.truncated.maxFiles.toLocaleString('en')} (in name order) and none past them. Audit the model and data folders themselves (piggyback audit <folder>). ${CODES.WS002.why}`,
      file: root,
      line: 1,
      column: 1,
      endLine: 1,
      endColumn: 2,
    });
  sortFindings(result.findings);
  return result;
}
