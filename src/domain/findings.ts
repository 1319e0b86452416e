/** Findings: what the audits report, shared by the CLI (JSON, SARIF, Markdown) and the editor (diagnostics). */

export type Severity = 'error' | 'warning' | 'info';

/** A located finding. Lines and columns are 1-based; columns count UTF-16 code units, as editors do. */
export interface Finding {
  code: string;
  severity: Severity;
  message: string;
  file?: string;
  line: number;
  column: number;
  endLine: number;
  endColumn: number;
}

export interface CodeInfo {
  title: string;
  /** Why it matters for piggyback risk, one sentence (used in docs, SARIF rule help and hovers). */
  why: string;
}

/** Every code the product can raise. docs/diagnostics.md has one section per code (a test keeps them in step). */
export const CODES: Record<string, CodeInfo> = {
  CT001: {
    title: 'Hidden default system prompt',
    why: 'A constant system block the data never wrote is rendered before every query: the piggyback carrier itself.',
  },
  CT002: {
    title: 'Date in the prompt prefix',
    why: 'The prefix changes with the date, so training, evaluation and deployment see different prefixes and one-extraction patching needs equal token counts.',
  },
  CT003: {
    title: 'Double BOS',
    why: 'The template writes the BOS token and the tokenizer adds another, shifting position 0 that the prefix is built on.',
  },
  CT004: {
    title: 'Generation prompt missing or inconsistent',
    why: 'The postfix the model sees at evaluation differs from the one it was trained on.',
  },
  CT005: {
    title: 'No generation markers',
    why: 'Without {% generation %} markers, assistant-only loss masks are empty or wrong and the loss lands on template tokens.',
  },
  CT006: {
    title: 'Training and inference templates differ',
    why: 'The prefix patched or measured must be the one used in training; a mismatch hides or fakes drift.',
  },
  CT007: {
    title: 'Role rules move the system text',
    why: 'Templates that reject or merge the system role move system text into the user turn, and with it the carrier tokens.',
  },
  CT008: {
    title: 'Reasoning scaffold in the postfix',
    why: 'A reasoning scaffold after the assistant header (an empty think block, or one opened for the answer) is part of the postfix carrier (Qwen3 carries piggyback there); train and evaluate with the same setting.',
  },
  CT009: {
    title: 'Template cannot be rendered',
    why: 'The audit cannot see the prefix and postfix of a template it cannot render.',
  },
  CT010: {
    title: 'End of turn never trained',
    why: 'If no end-of-turn token follows the response in training, the model never learns to stop and run-on answers confound judges.',
  },
  CT011: {
    title: 'Trainer renders another template',
    why: "The finetune lives in the prefix the trainer rendered; when that is not the tokenizer's template, every inference stack (and every measurement from the tokenizer) sees a different prefix than the one training shaped.",
  },
  PB001: {
    title: 'Measured prefix drift',
    why: 'The finetune changed the K/V of the tokens every query shares (what TReFT penalises); drift describes, patching grades (PB002).',
  },
  PB002: {
    title: 'Piggyback share of the general shift',
    why: 'When patching only the template tokens removes much of what the finetune changed on unrelated questions, the template is carrying the finetune onto every query.',
  },
  PB003: {
    title: 'Judged misalignment on general probes',
    why: 'The finetuned model gives misaligned answers to questions unrelated to its training data more often than the base model.',
  },
  DS001: { title: 'Malformed JSON line', why: 'The trainer will fail on or silently skip this row.' },
  DS002: { title: 'Unrecognised row format', why: 'The row matches no chat dataset format the trainer reads.' },
  DS003: { title: 'Unknown role', why: 'The template may drop, reject or mis-render a turn with this role.' },
  DS004: { title: 'Empty content', why: 'An empty turn trains the template tokens around it and nothing else.' },
  DS005: {
    title: 'Turns do not alternate',
    why: 'Strict templates raise on this row; lenient ones render turns the model never sees at inference.',
  },
  DS006: {
    title: 'No assistant turn',
    why: 'With response-only loss the row trains nothing; without it, it trains the template.',
  },
  DS007: { title: 'Line too long', why: 'A line over the reader limit is skipped rather than read into memory.' },
  DS008: {
    title: 'Template fails on this row',
    why: 'The trainer would raise or skip this row when applying the chat template.',
  },
  DS009: {
    title: 'Not plain UTF-8',
    why: 'A UTF-16 file or a byte order mark makes trainers misread the rows (row 1, or all of them).',
  },
  DS010: {
    title: 'Unreadable Parquet, Arrow or CSV file',
    why: 'The file is not in its format, is truncated, or uses an encoding or compression the reader does not know (CSV: an unclosed quote, a record with the wrong number of cells); no row is audited past that point.',
  },
  DS011: {
    title: 'Row longer than the model context',
    why: 'The trainer cuts the row at the context length, response tokens first: the model learns from a truncated answer, or from none.',
  },
  DS012: {
    title: 'Response template not found in context',
    why: 'A completion-only collator masks everything up to the response template it finds; where it finds none, the row contributes no loss (and TRL only warns).',
  },
  DS013: {
    title: 'Content parts printed as text',
    why: 'transformers passes a list of content parts to the template as it is; a template that pastes it prints its Python repr into every such turn. Write the content as a string, or use a template that reads the parts.',
  },
  DS101: {
    title: 'Shared prefix (piggyback surface)',
    why: 'When nearly every row renders the same prefix, finetuning can store a query-independent bias in it.',
  },
  DS102: {
    title: 'Prefix longer than the typical query',
    why: 'A long constant prefix holds more of the attention budget than the query and is where drift concentrates.',
  },
  DS103: {
    title: 'System messages dropped, merged or rejected',
    why: 'The system text the data carries is not what the model sees.',
  },
  DS104: {
    title: 'Default system prompt injected',
    why: 'Rows without a system turn get the template default, an invisible prefix shared by all of them.',
  },
  DS105: {
    title: 'Mixed row formats',
    why: 'Rows in several formats are likely read differently (or not at all) by the trainer.',
  },
  DS106: {
    title: 'Surface counted in part',
    why: 'The audit keeps its memory bounded; past this many distinct prefixes the counts are lower bounds.',
  },
  WS001: {
    title: 'Path outside the workspace',
    why: 'A workspace file or setting may only point inside the workspace; a path that leaves it (.., absolute, a symlink out) is not read.',
  },
  WS002: {
    title: 'Folder too large to audit whole',
    why: 'A folder walk has a budget of entries so that an audit of a huge tree ends; templates and datasets past it were not audited, so no finding there means nothing.',
  },
};

/** The docs page for a code, relative to the package root (the extension resolves it against its install folder). */
export function docsPath(code: string): string {
  return `docs/diagnostics.md#${code.toLowerCase()}`;
}

/** The section of docs/diagnostics.md about `code`: from its `### CODE` heading to the next heading. */
export function docSection(markdown: string, code: string): string | undefined {
  const lines = markdown.split(/\r?\n/);
  const start = lines.findIndex((l) => l.trim() === `### ${code}`);
  if (start < 0) return undefined;
  let end = start + 1;
  while (end < lines.length && !/^#{1,3} /.test(lines[end])) end++;
  return lines.slice(start, end).join('\n').trim();
}

export function hasErrors(findings: readonly Finding[]): boolean {
  return findings.some((f) => f.severity === 'error');
}

export function sortFindings(findings: Finding[]): Finding[] {
  return findings.sort(
    (a, b) =>
      (a.file ?? '').localeCompare(b.file ?? '') ||
      a.line - b.line ||
      a.column - b.column ||
      a.code.localeCompare(b.code),
  );
}

/**
 * PB001 (prefix drift, descriptive): shown from the `info` level of the TReFT value (mean relative squared K/V drift
 * over the prefix). Drift is a measurement, not a grade: the grade comes from patching (PB002).
 */
export const DRIFT_THRESHOLDS = { info: 0.005 } as const;
