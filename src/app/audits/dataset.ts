/**
 * The dataset-file audit: rows of any supported format rendered through a template, in a worker thread when one
 * is at hand, and the DS findings of its report.
 */
import { Worker } from 'node:worker_threads';
import {
  type DatasetAuditOptions,
  type DatasetReport,
  type DatasetScan,
  finishDatasetAudit,
  scanDataset,
} from '../../domain/dataset/audit';
import { fileChunks } from '../../domain/dataset/lines';
import { contextLength, type LossMode } from '../../domain/dataset/training';
import { arrowLines } from '../../domain/dataset/arrow';
import { ColumnarReadError, isArrow, isColumnar } from '../../domain/dataset/columnar';
import { CsvReadError, csvLines, isCsv } from '../../domain/dataset/csv';
import {
  isJsonFile,
  JsonArrayReadError,
  jsonArrayLines,
  jsonArrayTextLines,
  type Start,
} from '../../domain/dataset/jsonArray';
import { parquetLines } from '../../domain/dataset/parquet';
import type { Finding } from '../../domain/findings';
import { auditTemplate } from '../../domain/template/audit';
import {
  loadTemplateAndTokenizer,
  type PrepareOptions,
  type PreparedTemplate,
  prepareTemplate,
  renderOptions,
} from './template';

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

export async function reportFrom(
  reply: ScanReply | undefined,
  file: string,
  prepared: PreparedTemplate,
  lossMode?: LossMode,
) {
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
