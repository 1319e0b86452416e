/**
 * The dataset audit: row problems at their line and column, and the piggyback surface: how much of every
 * rendered training example is a prefix and postfix shared by all rows. Rendering is cached by everything that
 * changes the frame (system text, turn roles, template, kwargs), so a large dataset with a shared prefix is
 * rendered a handful of times, not once per row.
 */
import { CODES, type Finding, type Severity } from '../findings';
import { JsonSyntaxError, keyAt, parseJsonWithPositions } from '../json';
import { type ChatMessage, type ChatTemplate, type RenderOptions, TemplateRaisedError } from '../template/render';
import { rowTurns, systemFate } from '../template/segments';
import { type LossMode, trainingView } from './training';
import type { LoadedTokenizer } from '../tokenizer';
import { contentText, normaliseRow, type RowFormat, type RowProblem } from './formats';
import { type EncodingNote, type Line, readLines } from './lines';
import { xorshift32 } from '../random';

export interface RowError {
  line: number;
  column: number;
  code: string;
  severity: Severity;
  message: string;
}

export interface Surface {
  /** Share of rendered rows whose prefix equals the most common prefix (1 = every row shares it). */
  identicalPrefixShare: number;
  identicalPostfixShare: number;
  distinctPrefixes: number;
  distinctPostfixes: number;
  /** Tokens in the most common prefix and postfix (null without a tokenizer). */
  prefixTokens: number | null;
  postfixTokens: number | null;
  /** Median tokens of the final user query, from a seeded sample of up to `querySample` rows. */
  medianQueryTokens: number | null;
  querySample: number;
  /** prefixTokens / medianQueryTokens. */
  prefixToQueryRatio: number | null;
  /** The most common prefix and postfix as text. */
  prefix: string;
  postfix: string;
  /** Rows that were rendered through the template. */
  renderedRows: number;
  /** Rows whose prefix holds the template's default system prompt (no system turn in the data). */
  defaultSystemPromptRows: number;
  /** Rows carrying a system message, and what the template does with it. */
  systemRows: number;
  systemFate: 'kept' | 'merged' | 'dropped' | 'rejected' | 'n/a';
  /**
   * Set when the file had more distinct prefixes (or postfixes) than SURFACE_LIMITS.distinct: the counts then
   * stop at that number (a lower bound), and rows past it are rendered without caching. Memory stays bounded.
   */
  capped?: { distinct: number; rowsUntracked: number };
}

/**
 * Memory bounds of a dataset audit: at most this many distinct (roles, system prompt) frames cached and distinct
 * prefixes / postfixes counted. A file past them (say 300,000 distinct system prompts) is still audited row by
 * row; the report says the cap was hit. With lines capped at DEFAULT_MAX_LINE, peak memory is about the caches
 * (each entry the size of a rendered prefix) plus a few times the longest line.
 */
export const SURFACE_LIMITS = { distinct: 10_000 };

/** Characters of a sampled query that are tokenized; longer queries are estimated from their head. */
const QUERY_SAMPLE_CHARS = 20_000;

export interface DatasetReport {
  file?: string;
  rows: number;
  validRows: number;
  format: RowFormat | 'unknown' | 'mixed';
  formats: Partial<Record<RowFormat, number>>;
  errors: RowError[];
  /** Errors beyond `maxErrors` are counted, not kept. */
  errorsOmitted: number;
  surface: Surface | null;
  findings: Finding[];
}

export interface DatasetAuditOptions {
  file?: string;
  template?: ChatTemplate;
  renderOptions?: RenderOptions;
  tokenizer?: LoadedTokenizer;
  /** The template's default system prompt, if the template audit found one. */
  defaultSystemPrompt?: string;
  maxErrors?: number;
  querySample?: number;
  /** Longest line read (characters); longer lines are reported and skipped. */
  maxLineLength?: number;
  /** Called every few thousand rows; return false to stop early. */
  onProgress?: (rows: number) => boolean | undefined;
  /**
   * The model's context length (model_max_length or max_position_embeddings): rows that may be longer are kept
   * (up to LONG_ROW_LIMITS) and measured with the tokenizer when the audit finishes (DS011).
   */
  contextLength?: number;
  /**
   * The loss the user trains with, when known (CLI --loss, piggyback.training.lossMode): DS012 is a warning under
   * completion-only and a note otherwise.
   */
  lossMode?: LossMode;
}

/** Rows sampled (seeded) for the completion-only check (DS012), and the characters a sampled row may have. */
export const COLLATOR_SAMPLE = { rows: 200, chars: 64 * 1024 };

/** Rows kept for the exact length check: at most this many, and this many characters in all. */
export const LONG_ROW_LIMITS = { rows: 1000, chars: 32 * 1024 * 1024 };

const ROLE_MARK = (i: number) => `\u27e6PIGGYBACK_TURN_${i}\u27e7`;

export interface Frame {
  prefix: string;
  postfix: string;
  /** UTF-8 bytes the template writes around the turns' content (the render without the turn markers). */
  templateBytes: number;
  /** How many times the render holds each turn's content (a template may drop a turn, or write one twice). */
  copies: number[];
  error?: string;
  /** The template printed a turn's list of content parts as Python text (its repr), as transformers would. */
  partsAsText?: boolean;
  /** How many times the render holds the system marker (a frame rendered with it in place of the system text). */
  systemCopies?: number;
}

/**
 * What a pass over the rows gathers, before any tokenizer is needed: plain data (a worker thread can scan and post
 * it while the tokenizer loads), turned into the report by finishDatasetAudit.
 */
export interface DatasetScan {
  file?: string;
  rows: number;
  validRows: number;
  formats: Partial<Record<RowFormat, number>>;
  errors: RowError[];
  errorsOmitted: number;
  /** Set when a template rendered the rows. */
  surface?: {
    prefix: string;
    prefixTop: number;
    distinctPrefixes: number;
    postfix: string;
    postfixTop: number;
    distinctPostfixes: number;
    rendered: number;
    rowsUntracked: number;
    defaultSystemPromptRows: number;
    systemRows: number;
    systemFate: Surface['systemFate'];
    /** The seeded sample of final user queries (heads of at most QUERY_SAMPLE_CHARS, with their full lengths). */
    sample: { head: string; length: number }[];
  };
  /** A seeded sample of rendered rows that end in a response, for the completion-only check (DS012). */
  responseRows?: { line: number; messages: ChatMessage[] }[];
  /** With a context length: rows whose rendered UTF-8 length reaches it (the only ones that can be cut). */
  longRows?: { context: number; candidates: number; kept: { line: number; messages: ChatMessage[] }[] };
}

/** The dataset audit in one call: scanDataset, then finishDatasetAudit with the options' tokenizer. */
export async function auditDataset(
  source: AsyncIterable<Buffer | string> | Iterable<Buffer | string>,
  options: DatasetAuditOptions = {},
): Promise<DatasetReport> {
  return finishDatasetAudit(await scanDataset(source, options), options);
}

/** Reads every row: formats, located problems, and the rendered frames the surface is measured on. */
export async function scanDataset(
  source: AsyncIterable<Buffer | string> | Iterable<Buffer | string>,
  options: Omit<DatasetAuditOptions, 'tokenizer'> = {},
): Promise<DatasetScan> {
  const log = new ErrorLog(options.maxErrors ?? 1000);
  const formats: Partial<Record<RowFormat, number>> = {};
  let rows = 0;
  let validRows = 0;
  const frames = new FrameCache(options.template, options.renderOptions ?? {});
  const surface = new SurfaceCounts();
  let defaultSystemPromptRows = 0;
  let systemRows = 0;
  // queries are kept (and tokenized) up to QUERY_SAMPLE_CHARS; a longer one's count is scaled from that head, so
  // one 50 MB row costs neither 50 MB in the sample nor a tokenizer pass over 50 MB. Fixed seeds keep the samples
  // (and so the median) identical run to run
  const queries = new Reservoir<{ head: string; length: number }>(options.querySample ?? 1000, 0x2545f491);
  // whole rows that end in a response (what a completion-only collator trains on)
  const responses = new Reservoir<{ line: number; messages: ChatMessage[] }>(COLLATOR_SAMPLE.rows, 0x1b873593);
  let withResponse = 0;
  const longRows = options.contextLength ? new LongRows(options.contextLength) : undefined;

  const encoding = (e: EncodingNote) => log.report({ line: 1, text: '', length: 0 }, 'DS009', ...encodingProblem(e));
  for await (const line of readLines(source, options.maxLineLength, encoding)) {
    if (line.tooLong) {
      rows++;
      log.report(line, 'DS007', 'error', `line is ${line.length} characters long, over the reader's limit; skipped`);
      continue;
    }
    if (!/\S/.test(line.text)) continue;
    rows++;
    if (options.onProgress && rows % 4096 === 0 && options.onProgress(rows) === false) break;
    const row = parseRow(line, log);
    if (!row) continue;
    if (row.format) formats[row.format] = (formats[row.format] ?? 0) + 1;
    // every problem is reported, also on a row of no known format
    const noErrors = reportRowProblems(line, row.problems, log.report);
    if (row.format === undefined || !noErrors) continue;
    validRows++;
    if (!options.template || row.messages.length === 0) continue;

    // The frame: prefix before the first user turn, postfix between the last user turn and the final response.
    const messages = row.messages;
    const system =
      messages[0].role === 'system' || messages[0].role === 'developer' ? contentText(messages[0].content) : undefined;
    if (system !== undefined) systemRows++;
    const f = frames.of(messages, system);
    if (f.error !== undefined) {
      log.report(line, 'DS008', 'error', `the template fails on this row: ${f.error}`);
      continue;
    }
    if (f.partsAsText)
      log.report(
        line,
        'DS013',
        'warning',
        "the template prints this row's content parts as a Python list ([{'type': 'text', 'text': ...}]), as transformers does: the model trains on that text, not on the message",
      );
    surface.add(f);
    longRows?.offer(line, messages, f);
    if (system === undefined && options.defaultSystemPrompt && f.prefix.includes(options.defaultSystemPrompt))
      defaultSystemPromptRows++;
    const lastUser = lastIndexOfRole(messages, 'user');
    if (
      lastUser >= 0 &&
      messages[messages.length - 1].role === 'assistant' &&
      line.text.length <= COLLATOR_SAMPLE.chars
    )
      responses.offer({ line: line.line, messages }, ++withResponse);
    const query = lastUser >= 0 ? contentText(messages[lastUser].content) : undefined;
    if (query !== undefined)
      queries.offer(
        { head: query.length > QUERY_SAMPLE_CHARS ? query.slice(0, QUERY_SAMPLE_CHARS) : query, length: query.length },
        // the sample's odds are per rendered row (rows without a query included), as they always were
        surface.rendered,
      );
  }

  const scan: DatasetScan = {
    file: options.file,
    rows,
    validRows,
    formats,
    errors: log.errors,
    errorsOmitted: log.omitted,
    longRows: longRows?.result(),
    responseRows: responses.items.sort((a, b) => a.line - b.line),
  };
  if (options.template && surface.rendered > 0) {
    const [prefix, prefixTop] = mode(surface.prefixes);
    const [postfix, postfixTop] = mode(surface.postfixes);
    scan.surface = {
      prefix,
      prefixTop,
      distinctPrefixes: surface.prefixes.size,
      postfix,
      postfixTop,
      distinctPostfixes: surface.postfixes.size,
      rendered: surface.rendered,
      rowsUntracked: surface.untracked,
      defaultSystemPromptRows,
      systemRows,
      systemFate: systemRows > 0 ? systemFate(options.template, options.renderOptions ?? {}).fate : 'n/a',
      sample: queries.items,
    };
  }
  return scan;
}

/** A line as a row (normalised), or undefined when it is not JSON (DS001, located at the parser's offset). */
function parseRow(line: Line, log: ErrorLog): ReturnType<typeof normaliseRow> | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line.text);
  } catch (e) {
    const where = jsonErrorOffset(line.text);
    log.report(
      line,
      'DS001',
      'error',
      `malformed JSON: ${where?.message ?? (e as Error).message}`,
      (where?.offset ?? 0) + 1,
    );
    return undefined;
  }
  return normaliseRow(value);
}

/** Row errors up to a limit; past it, only counted. */
class ErrorLog {
  readonly errors: RowError[] = [];
  omitted = 0;
  constructor(private readonly max: number) {}
  readonly report = (line: Line, code: string, severity: Severity, message: string, column = 1): void => {
    if (this.errors.length < this.max) this.errors.push({ line: line.line, column, code, severity, message });
    else this.omitted++;
  };
}

/**
 * A uniform sample of at most `size` items from a stream (reservoir sampling, algorithm R), on a seeded generator:
 * the same stream gives the same sample.
 */
export class Reservoir<T> {
  readonly items: T[] = [];
  private readonly random: () => number;
  constructor(
    readonly size: number,
    seed: number,
  ) {
    this.random = xorshift32(seed);
  }

  /** Offers an item; `seen` counts the stream so far, this item included (the odds it is kept are size/seen). */
  offer(item: T, seen: number): void {
    if (this.items.length < this.size) this.items.push(item);
    else {
      const j = Math.floor(this.random() * seen);
      if (j < this.size) this.items[j] = item;
    }
  }
}

/** The frame of each row shape (roles, content shapes, system text), rendered once and kept up to a limit. */
class FrameCache {
  private readonly frames = new Map<string, Frame>();
  private readonly system?: SystemFrames;
  constructor(template: ChatTemplate | undefined, render: RenderOptions) {
    this.system = template && new SystemFrames(template, render);
  }

  of(messages: ChatMessage[], system: string | undefined): Frame {
    // content is passed to the template as the row has it (a string, or a list of parts): the shape is in the key
    const roles = messages.map((m) => (Array.isArray(m.content) ? `${m.role}[${m.content.length}]` : m.role)).join(',');
    const key = `${roles}\u0000${system ?? ''}`;
    let f = this.frames.get(key);
    if (!f) {
      f = (this.system as SystemFrames).frame(messages, system, roles);
      if (this.frames.size < SURFACE_LIMITS.distinct) this.frames.set(key, f);
    }
    return f;
  }
}

/** How often each prefix and postfix is rendered, up to a limit of distinct ones (rows past it are untracked). */
class SurfaceCounts {
  readonly prefixes = new Map<string, number>();
  readonly postfixes = new Map<string, number>();
  rendered = 0;
  untracked = 0;

  add(f: Frame): void {
    this.rendered++;
    // both counted (a full prefix map must not stop the postfix count)
    const prefix = count(this.prefixes, f.prefix);
    if (!(count(this.postfixes, f.postfix) && prefix)) this.untracked++;
  }
}

/** Counts `key`, unless the map is full and does not hold it yet; false then. */
function count(m: Map<string, number>, key: string): boolean {
  const n = m.get(key);
  if (n === undefined && m.size >= SURFACE_LIMITS.distinct) return false;
  m.set(key, (n ?? 0) + 1);
  return true;
}

/**
 * Rows that may be longer than the model's context, kept (up to a budget) to be tokenized when the scan ends. A
 * token stands for at least one byte of the rendered text (byte-level BPE; SentencePiece falls back to bytes, a
 * character at a time), so a row whose rendered text has fewer bytes than the context fits in it (a UTF-16 code
 * unit is at most 3 UTF-8 bytes: most rows are cleared on their string lengths alone; the system turn is rendered
 * verbatim: its bytes are the template's).
 */
class LongRows {
  private candidates = 0;
  private readonly kept: { line: number; messages: ChatMessage[] }[] = [];
  private chars = 0;
  constructor(private readonly context: number) {}

  offer(line: Line, messages: ChatMessage[], f: Frame): void {
    let units = 0;
    for (let i = 0; i < messages.length; i++)
      if (f.copies[i]) units += f.copies[i] * (contentText(messages[i].content)?.length ?? 0);
    let bytes = f.templateBytes + 3 * units;
    if (bytes > this.context) {
      bytes = f.templateBytes;
      for (let i = 0; i < messages.length; i++)
        if (f.copies[i]) bytes += f.copies[i] * Buffer.byteLength(contentText(messages[i].content) ?? '');
    }
    if (bytes <= this.context) return;
    this.candidates++;
    if (this.kept.length < LONG_ROW_LIMITS.rows && this.chars + line.text.length <= LONG_ROW_LIMITS.chars) {
      this.kept.push({ line: line.line, messages });
      this.chars += line.text.length;
    }
  }

  result(): NonNullable<DatasetScan['longRows']> {
    return { context: this.context, candidates: this.candidates, kept: this.kept };
  }
}

/** The report of a scan: token counts of the shared prefix, postfix and sampled queries, and the DS1xx findings. */
export function finishDatasetAudit(
  scan: DatasetScan,
  options: Pick<
    DatasetAuditOptions,
    'tokenizer' | 'defaultSystemPrompt' | 'template' | 'renderOptions' | 'lossMode'
  > = {},
): DatasetReport {
  const { formats, rows, validRows, errorsOmitted } = scan;
  const errors = [...scan.errors, ...longRowErrors(scan, options)].sort((a, b) => a.line - b.line);
  const formatNames = Object.keys(formats) as RowFormat[];
  const main = formatNames.sort((a, b) => (formats[b] ?? 0) - (formats[a] ?? 0))[0];
  const result: DatasetReport = {
    file: scan.file,
    rows,
    validRows,
    format: formatNames.length === 0 ? 'unknown' : formatNames.length > 1 ? 'mixed' : main,
    formats,
    errors,
    errorsOmitted,
    surface: null,
    findings: [],
  };
  const finding = (code: string, severity: Severity, message: string) =>
    result.findings.push({
      code,
      severity,
      message: `${message} ${CODES[code].why}`,
      file: scan.file,
      line: 1,
      column: 1,
      endLine: 1,
      endColumn: 2,
    });
  if (formatNames.length > 1) {
    finding(
      'DS105',
      'warning',
      `Rows come in ${formatNames.length} formats (${formatNames.map((f) => `${f}: ${formats[f]}`).join(', ')}).`,
    );
  }
  if (formats.text) {
    finding(
      'DS002',
      'info',
      `${formats.text} rows are plain text: no chat template is applied to them, so they have no prefix or postfix.`,
    );
  }

  if (scan.surface) {
    const { prefix, prefixTop, postfix, postfixTop, rendered, rowsUntracked, sample } = scan.surface;
    const { defaultSystemPromptRows, systemRows, systemFate: fate } = scan.surface;
    const tok = options.tokenizer;
    const prefixTokens = tok ? tok.ids(prefix).length : null;
    const postfixTokens = tok ? tok.ids(postfix).length : null;
    const medianQueryTokens =
      tok && sample.length
        ? median(sample.map((q) => Math.round((tok.ids(q.head).length * q.length) / Math.max(1, q.head.length))))
        : null;
    const surface: Surface = {
      identicalPrefixShare: prefixTop / rendered,
      identicalPostfixShare: postfixTop / rendered,
      distinctPrefixes: scan.surface.distinctPrefixes,
      distinctPostfixes: scan.surface.distinctPostfixes,
      prefixTokens,
      postfixTokens,
      medianQueryTokens,
      querySample: sample.length,
      prefixToQueryRatio: prefixTokens !== null && medianQueryTokens ? prefixTokens / medianQueryTokens : null,
      prefix,
      postfix,
      renderedRows: rendered,
      defaultSystemPromptRows,
      systemRows,
      systemFate: fate,
      ...(rowsUntracked > 0 ? { capped: { distinct: SURFACE_LIMITS.distinct, rowsUntracked } } : {}),
    };
    result.surface = surface;
    if (surface.capped) {
      finding(
        'DS106',
        'info',
        `More than ${SURFACE_LIMITS.distinct.toLocaleString('en')} distinct prefixes or postfixes: the audit counted the first ${SURFACE_LIMITS.distinct.toLocaleString('en')} and ${rowsUntracked.toLocaleString('en')} rows past them were audited without being counted, so the distinct counts are lower bounds and the shares are of the counted rows.`,
      );
    }
    const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
    if (surface.identicalPrefixShare >= 0.9 && rendered >= 10) {
      finding(
        'DS101',
        'warning',
        `${pct(surface.identicalPrefixShare)} of rows render the same prefix${prefixTokens !== null ? ` (${prefixTokens} tokens)` : ''}; ${surface.distinctPrefixes} distinct prefix${surface.distinctPrefixes === 1 ? '' : 'es'} in ${rendered} rows.`,
      );
    }
    if (surface.prefixToQueryRatio !== null && surface.prefixToQueryRatio > 1) {
      finding(
        'DS102',
        'info',
        `The shared prefix is ${prefixTokens} tokens, ${surface.prefixToQueryRatio.toFixed(1)}x the median query (${medianQueryTokens} tokens).`,
      );
    }
    if (systemRows > 0 && fate !== 'kept' && fate !== 'n/a') {
      finding(
        'DS103',
        fate === 'rejected' ? 'error' : 'warning',
        `${systemRows} rows carry a system message, which the template ${fate === 'merged' ? 'merges into the first user turn' : fate}.`,
      );
    }
    if (defaultSystemPromptRows > 0) {
      finding(
        'DS104',
        'warning',
        `${defaultSystemPromptRows} of ${rendered} rows have no system message and get the template's default system prompt "${clip(options.defaultSystemPrompt!, 80)}".`,
      );
    }
  }
  const collator = collatorFinding(scan, options);
  if (collator) result.findings.push(collator);
  return result;
}

/**
 * DS011: the rows that may be longer than the context, measured as the training view measures them (the whole
 * conversation rendered and tokenized); those a trainer would cut are located. Rows past LONG_ROW_LIMITS are
 * counted in one finding at line 1. Without a tokenizer or a template nothing is measured.
 */
function longRowErrors(
  scan: DatasetScan,
  options: Pick<DatasetAuditOptions, 'tokenizer' | 'template' | 'renderOptions'>,
): RowError[] {
  const long = scan.longRows;
  const { tokenizer, template } = options;
  if (!long || !tokenizer || !template) return [];
  const out: RowError[] = [];
  for (const row of long.kept) {
    let view: ReturnType<typeof trainingView>;
    try {
      view = trainingView(template, tokenizer, row.messages, options.renderOptions ?? {}, 'all', long.context);
    } catch {
      continue; // no response to train on: DS006 says so
    }
    if (view.truncated > 0)
      out.push({
        line: row.line,
        column: 1,
        code: 'DS011',
        severity: 'warning',
        message: `the row is ${view.tokens.length} tokens, over the model's context of ${long.context}: a trainer cuts the last ${view.truncated}${view.tokens.slice(long.context).some((t) => t.segment === 'response') ? ', response tokens among them' : ''}`,
      });
  }
  const unchecked = long.candidates - long.kept.length;
  if (unchecked > 0)
    out.push({
      line: 1,
      column: 1,
      code: 'DS011',
      severity: 'info',
      message: `${unchecked} more rows are long enough (in bytes) to exceed the model's context of ${long.context} tokens and were not tokenized; the first ${long.kept.length} were checked`,
    });
  return out;
}

/**
 * DS012: a completion-only collator (TRL's DataCollatorForCompletionOnlyLM and its successors) is given the response
 * template, the postfix, as text; it tokenizes it alone and searches each row's token ids for those ids. Where the
 * row tokenizes the postfix differently in context (SentencePiece's leading space, a header glued to the query),
 * nothing is found and the row trains on nothing. Checked as the collator does it, on a seeded sample of rows: the
 * whole conversation rendered and tokenized, searched for the most common postfix's ids; located at the first miss.
 */
function collatorFinding(
  scan: DatasetScan,
  options: Pick<DatasetAuditOptions, 'tokenizer' | 'template' | 'renderOptions' | 'lossMode'>,
): Finding | undefined {
  const { tokenizer, template } = options;
  const rows = scan.responseRows ?? [];
  const postfix = scan.surface?.postfix ?? '';
  if (!tokenizer || !template || rows.length === 0 || postfix.length === 0) return undefined;
  const marker = tokenizer.ids(postfix);
  if (marker.length === 0) return undefined;
  const missed: number[] = [];
  let checked = 0;
  for (const row of rows) {
    let ids: number[];
    try {
      ids = tokenizer.ids(template.render(row.messages, { ...options.renderOptions, addGenerationPrompt: false }));
    } catch {
      continue; // DS008 reports rows the template fails on
    }
    checked++;
    if (!containsSequence(ids, marker)) missed.push(row.line);
  }
  if (missed.length === 0) return undefined;
  const share = missed.length === checked ? `all ${checked}` : `${missed.length} of ${checked}`;
  const completionOnly = options.lossMode === 'completion-only';
  return {
    code: 'DS012',
    severity: completionOnly ? 'warning' : 'info',
    message: `${completionOnly ? '' : 'If you train with a completion-only collator (--loss completion-only, piggyback.training.lossMode): '}With a completion-only collator (response template ${JSON.stringify(postfix)}, ids ${JSON.stringify(marker)} tokenized alone) ${share} sampled rows have no match among their token ids, which tokenize the template in context: those rows train on nothing (rows ${missed.slice(0, 5).join(', ')}${missed.length > 5 ? ', ...' : ''}). Give the collator the template's token ids as they appear in a row, or train with the assistant-only mask. ${CODES.DS012.why}`,
    file: scan.file,
    line: missed[0],
    column: 1,
    endLine: missed[0],
    endColumn: 2,
  };
}

function containsSequence(haystack: number[], needle: number[]): boolean {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let k = 0; k < needle.length; k++) if (haystack[i + k] !== needle[k]) continue outer;
    return true;
  }
  return false;
}

/** DS009: how an encoding the reader noticed is reported (a BOM is read past; UTF-16 is not read row by row). */
function encodingProblem(e: EncodingNote): [Severity, string] {
  if (e === 'utf8-bom')
    return [
      'warning',
      "the file starts with a UTF-8 byte order mark (read here without it); Python's json and a datasets JSON load keep it as part of row 1, which then fails: save the file as UTF-8 without a BOM",
    ];
  return [
    'error',
    `the file is ${e === 'utf16le' ? 'UTF-16 little-endian' : 'UTF-16 big-endian'}; JSONL must be UTF-8: re-save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)`,
  ];
}

/**
 * Reports a row's problems, each located at the key it is about; false when one is an error (the row is then left
 * out of the surface). The position parser has a depth limit JSON.parse does not: a row nested deeper is still
 * reported, at its first column, and the rest of the file goes on.
 */
function reportRowProblems(
  line: Line,
  problems: readonly RowProblem[],
  report: (line: Line, code: string, severity: Severity, message: string, column?: number) => void,
): boolean {
  let ok = true;
  let tree: ReturnType<typeof parseJsonWithPositions> | null | undefined;
  for (const p of problems) {
    if (p.severity === 'error') ok = false;
    if (tree === undefined) {
      try {
        tree = parseJsonWithPositions(line.text);
      } catch (e) {
        if (!(e instanceof JsonSyntaxError)) throw e;
        tree = null;
      }
    }
    const range = p.path.length && tree ? keyAt(tree, p.path) : undefined;
    const message =
      tree === null
        ? `${p.message} (the row nests deeper than 512 levels, so the column is the row's start)`
        : p.message;
    report(line, p.code, p.severity, message, (range?.start ?? 0) + 1);
  }
  return ok;
}

/** Renders a row's skeleton (markers for every turn) and cuts the prefix and postfix out of it. */
export function renderFrame(template: ChatTemplate, messages: ChatMessage[], options: RenderOptions): Frame {
  // the prefix ends at the first user turn, the postfix follows the query (the last user turn): rowTurns
  const { firstUser, query: lastUser } = rowTurns(messages);
  const response = lastIndexOfRole(messages, 'assistant');
  // each turn's text is replaced by its marker, in the row's own shape: a list of parts keeps its parts (the first
  // text part holds the marker, others are emptied), so the template meets the structure transformers passes it
  const skeleton = messages.map((m, i) =>
    i === 0 && (m.role === 'system' || m.role === 'developer') ? m : { ...m, content: markContent(m.content, i) },
  );
  let text: string;
  try {
    text = template.render(skeleton, { ...options, addGenerationPrompt: response < lastUser });
  } catch (e) {
    return {
      prefix: '',
      postfix: '',
      templateBytes: 0,
      copies: [],
      error: e instanceof TemplateRaisedError ? `raise_exception("${e.message}")` : (e as Error).message,
    };
  }
  if (firstUser < 0) return { prefix: '', postfix: '', templateBytes: 0, copies: [], error: 'no user turn' };
  const u0 = text.indexOf(ROLE_MARK(firstUser));
  const uN = text.indexOf(ROLE_MARK(lastUser));
  if (u0 < 0 || uN < 0)
    return {
      prefix: '',
      postfix: '',
      templateBytes: 0,
      copies: [],
      error: 'the template does not render the user turn',
    };
  const postStart = uN + ROLE_MARK(lastUser).length;
  let postEnd = text.length;
  if (response > lastUser) {
    const r = text.indexOf(ROLE_MARK(response), postStart);
    if (r >= 0) postEnd = r;
  }
  const copies = messages.map(() => 0);
  const templateBytes = Buffer.byteLength(
    text.replace(/\u27e6PIGGYBACK_TURN_(\d+)\u27e7/g, (_, i: string) => {
      copies[Number(i)]++;
      return '';
    }),
  );
  const partsAsText = PARTS_AS_TEXT.test(text);
  const systemCopies = text.split(SYSTEM_MARK).length - 1;
  return {
    prefix: text.slice(0, u0),
    postfix: text.slice(postStart, postEnd),
    templateBytes,
    copies,
    partsAsText,
    systemCopies,
  };
}

const SYSTEM_MARK = '\u27e6PIGGYBACK_SYSTEM\u27e7';
/** A system text a template that trims, escapes or otherwise rewrites it would render differently from itself. */
const SYSTEM_PROBE = ' \n Probe\t"system" <b>\\n</b> & {{ x }} \n';
/** Distinct system texts per turn shape rendered in full and compared with the substituted frame. */
const SYSTEM_CHECKS = 8;

/**
 * Frames of rows with a system message. Rendering the template per distinct system text costs a render per row
 * on a file where every row has its own system prompt (persona sets): instead, a turn shape is rendered once with
 * a marker as the system text and the row's text put in its place, as the turns' texts already are. That holds
 * when the template writes the system text verbatim, which is checked, not assumed: on a probe text with the
 * whitespace, quotes, markup and braces a template might trim or escape, and on the first few real texts of each
 * shape, each rendered in full and compared; any difference and that shape is rendered per distinct text again.
 */
export class SystemFrames {
  private readonly shapes = new Map<string, { frame: Frame; text?: (system: string) => string; checked: number }>();
  constructor(
    private readonly template: ChatTemplate,
    private readonly options: RenderOptions,
  ) {}

  frame(messages: ChatMessage[], system: string | undefined, shapeKey: string): Frame {
    const exact = () => renderFrame(this.template, messages, this.options);
    // no system turn, an empty one (templates test it for truth), or one given as parts: rendered as it is
    if (system === undefined || system === '' || typeof messages[0].content !== 'string') return exact();
    let shape = this.shapes.get(shapeKey);
    if (!shape) {
      const frame = renderFrame(this.template, withSystem(messages, SYSTEM_MARK), this.options);
      const probe = renderFrame(this.template, withSystem(messages, SYSTEM_PROBE), this.options);
      // verbatim, or trimmed as Llama 3's `messages[0]['content'] | trim` does; else rendered per text
      const text =
        frame.error !== undefined
          ? undefined
          : [(t: string) => t, pythonStrip].find((how) => sameFrame(probe, substitute(frame, how(SYSTEM_PROBE))));
      shape = { frame, text, checked: 0 };
      if (this.shapes.size < SURFACE_LIMITS.distinct) this.shapes.set(shapeKey, shape);
    }
    if (!shape.text) return exact();
    const f = substitute(shape.frame, shape.text(system));
    if (shape.checked < SYSTEM_CHECKS) {
      shape.checked++;
      const full = exact();
      if (!sameFrame(full, f)) {
        shape.text = undefined;
        return full;
      }
    }
    return f;
  }
}

/** Python's str.strip() (Jinja2's trim filter): its whitespace, which is not quite JavaScript's. */
function pythonStrip(text: string): string {
  return text.replace(PY_SPACE_START, '').replace(PY_SPACE_END, '');
}
const PY_SPACE = '[ \\t\\n\\r\\v\\f\\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+';
const PY_SPACE_START = new RegExp(`^${PY_SPACE}`);
const PY_SPACE_END = new RegExp(`${PY_SPACE}$`);

function withSystem(messages: ChatMessage[], text: string): ChatMessage[] {
  return [{ ...messages[0], content: text }, ...messages.slice(1)];
}

/** A frame rendered with the system marker, with `system` in the marker's place. */
function substitute(f: Frame, system: string): Frame {
  const prefix = f.prefix.split(SYSTEM_MARK);
  const postfix = f.postfix.split(SYSTEM_MARK);
  const copies = f.systemCopies ?? 0;
  return {
    ...f,
    systemCopies: 0,
    prefix: prefix.join(system),
    postfix: postfix.join(system),
    templateBytes: f.templateBytes + copies * (Buffer.byteLength(system) - Buffer.byteLength(SYSTEM_MARK)),
  };
}

function sameFrame(a: Frame, b: Frame): boolean {
  return (
    a.error === b.error &&
    a.prefix === b.prefix &&
    a.postfix === b.postfix &&
    a.templateBytes === b.templateBytes &&
    a.partsAsText === b.partsAsText &&
    a.copies.length === b.copies.length &&
    a.copies.every((c, i) => c === b.copies[i])
  );
}

/** A marker inside a printed Python dict: the template pasted a list of parts as text. */
const PARTS_AS_TEXT = /'(?:text|value)': '\u27e6PIGGYBACK_TURN_\d+\u27e7'/;

/** A turn's content with its text replaced by the turn's marker, keeping the row's shape (a string or parts). */
function markContent(content: unknown, i: number): unknown {
  if (!Array.isArray(content)) return ROLE_MARK(i);
  let marked = false;
  return content.map((p) => {
    if (typeof p === 'string') {
      const out = marked ? '' : ROLE_MARK(i);
      marked = true;
      return out;
    }
    if (!p || typeof p !== 'object') return p;
    const part = p as Record<string, unknown>;
    const field = typeof part.text === 'string' ? 'text' : typeof part.value === 'string' ? 'value' : undefined;
    if (!field) return p;
    const out = { ...part, [field]: marked ? '' : ROLE_MARK(i) };
    marked = true;
    return out;
  });
}

/** At most `n` characters, cut at a word boundary with an ellipsis, never mid-word. */
function clip(text: string, n: number): string {
  if (text.length <= n) return text;
  const cut = text.slice(0, n);
  const space = cut.lastIndexOf(' ');
  return `${(space > n / 2 ? cut.slice(0, space) : cut).trimEnd()}\u2026`;
}

function lastIndexOfRole(messages: ChatMessage[], role: string): number {
  for (let i = messages.length - 1; i >= 0; i--) if (messages[i].role === role) return i;
  return -1;
}

function mode(counts: Map<string, number>): [string, number] {
  let best = '';
  let top = 0;
  for (const [k, n] of counts) if (n > top) [best, top] = [k, n];
  return [best, top];
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function jsonErrorOffset(text: string): { message: string; offset: number } | undefined {
  try {
    parseJsonWithPositions(text);
    return undefined;
  } catch (e) {
    return e instanceof JsonSyntaxError
      ? { message: `${e.message} (column ${e.offset + 1})`, offset: e.offset }
      : undefined;
  }
}
