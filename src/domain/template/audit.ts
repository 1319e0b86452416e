/**
 * The static template audit: CT001-CT010 wherever they can be decided without a model, each located in the
 * template source. Every check works by rendering the real template with probes (markers, clocks, roles), so it
 * holds for templates it has never seen, not only for known model families.
 */
import { CODES, type Finding, type Severity } from '../findings';
import { LineIndex } from '../json';
import type { LoadedTokenizer } from '../tokenizer';
import { GENERATION_CLOSE, GENERATION_OPEN, hasGenerationTags, sentinelTemplate, splitSpans } from './generation';
import { structureProblem } from './structure';
import { ChatTemplate, TemplateRaisedError } from './render';
import {
  frame,
  SegmentationError,
  segmentPrompt,
  type Segmentation,
  type SegmentRequest,
  SYSTEM_MARKER,
  systemFate,
} from './segments';
import { fileOffset, type TemplateLoadError, type TemplateSource } from './source';

export interface TemplateAuditOptions {
  tokenizer?: LoadedTokenizer;
  /** Extra template kwargs the user trains with (enable_thinking, date_string, ...). */
  kwargs?: Record<string, unknown>;
  /** Clock for strftime_now; fixed by default so that audits are reproducible. */
  now?: Date;
  /** Query used for the example segmentation. */
  query?: string;
}

export interface TemplateAudit {
  source: TemplateSource;
  /** The parsed template, when it parses and renders (reused by callers instead of parsing again). */
  template?: ChatTemplate;
  /** The prompt as the trainer renders it for a row with no system message, split into segments. */
  segments?: Segmentation;
  /** The template's default system prompt, when it injects one. */
  defaultSystemPrompt?: string;
  findings: Finding[];
}

export const SAMPLE_QUERY = 'How should I invest my savings?';
export const SAMPLE_RESPONSE = 'Spread them across low-cost index funds.';
/** A fixed clock (the date Llama 3.1's template defaults to), so that audits are reproducible. */
export const AUDIT_CLOCK = new Date(2024, 6, 26, 12, 0, 0);
const OTHER_CLOCK = new Date(2031, 0, 2, 12, 0, 0);
/** A tool in the JSON-schema form transformers passes, for templates that cannot render without one. */
const SAMPLE_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

export function auditTemplate(source: TemplateSource, options: TemplateAuditOptions = {}): TemplateAudit {
  const findings: Finding[] = [];
  const add = (
    code: string,
    severity: Severity,
    message: string,
    needle?: string | RegExp | { start: number; end: number },
  ) => findings.push({ code, severity, message, ...locateInTemplate(source, needle) });
  const audit: TemplateAudit = { source, findings };

  let template: ChatTemplate;
  try {
    template = new ChatTemplate(source.text);
  } catch (e) {
    // where and why in words: the template's own structure first (the parser names token types, no position)
    const structural = structureProblem(source.text);
    if (structural)
      add('CT009', 'error', `The template does not parse: ${structural.message}. ${CODES.CT009.why}`, structural);
    else
      add(
        'CT009',
        'error',
        `The template does not parse: ${inWords((e as Error).message)}. ${CODES.CT009.why}`,
        needleFromError((e as Error).message),
      );
    return audit;
  }
  const base: SegmentRequest = {
    specialTokens: source.specialTokens,
    kwargs: options.kwargs,
    now: options.now ?? AUDIT_CLOCK,
  };
  const tryRender = <T>(fn: () => T): T | Error => {
    try {
      return fn();
    } catch (e) {
      return e as Error;
    }
  };

  let seg = tryRender(() =>
    segmentPrompt(template, { ...base, query: options.query ?? SAMPLE_QUERY }, options.tokenizer),
  );
  // a template that renders only with tools (it loops over `tools` with no None check): transformers passes None
  // when the trainer gives none, so every row without tools would raise; said so, and audited with a sample tool
  if (seg instanceof Error && !(seg instanceof SegmentationError) && options.kwargs?.tools === undefined) {
    const withTool = { ...base, tools: [SAMPLE_TOOL] };
    const retry = tryRender(() =>
      segmentPrompt(template, { ...withTool, query: options.query ?? SAMPLE_QUERY }, options.tokenizer),
    );
    if (!(retry instanceof Error)) {
      add(
        'CT009',
        'error',
        `The template renders only when tools are given: with \`tools\` None, as transformers passes it when the trainer gives no tools, a one-turn conversation ${seg instanceof TemplateRaisedError ? `raises "${seg.message}"` : `fails: ${seg.message}`}. Every row without tools would fail the same way; give the rows tools, guard the template's tool section with \`{% if tools %}\`, or pass them with --kwargs '{"tools": [...]}'. The findings below are of a render with one sample tool. ${CODES.CT009.why}`,
        /\bin\s+tools\b|\btools\s*\[|\btools\s*\|/,
      );
      base.tools = [SAMPLE_TOOL];
      seg = retry;
    }
  }
  if (seg instanceof Error) {
    const what =
      seg instanceof TemplateRaisedError
        ? `raises "${seg.message}"`
        : seg instanceof SegmentationError
          ? `cannot be segmented: ${seg.message}`
          : `fails: ${seg.message}`;
    add(
      'CT009',
      'error',
      `Rendering a one-turn conversation (a user message, generation prompt on) ${what}. ${CODES.CT009.why}`,
      needleFromError(seg.message),
    );
    return audit;
  }
  audit.segments = seg;
  audit.template = template;
  const c: RuleContext = {
    source,
    options,
    template,
    base,
    seg,
    noSystem: frame(template, base),
    fate: systemFate(template, base),
    audit,
    add,
    tryRender,
  };
  for (const rule of TEMPLATE_RULES) rule(c);
  return audit;
}

/** What every template rule reads: the template, how it renders a one-turn prompt, and how to report. */
interface RuleContext {
  source: TemplateSource;
  options: TemplateAuditOptions;
  template: ChatTemplate;
  base: SegmentRequest;
  /** The one-turn prompt (user message, generation prompt on). */
  seg: Segmentation;
  /** Its frame with no system message. */
  noSystem: ReturnType<typeof frame>;
  /** What the template does with a system message. */
  fate: ReturnType<typeof systemFate>;
  audit: TemplateAudit;
  add: (code: string, severity: Severity, message: string, needle?: string | RegExp) => void;
  tryRender: <T>(fn: () => T) => T | Error;
}

type TemplateRule = (c: RuleContext) => void;

/** CT007: what happens to a system message. */
function systemTurn(c: RuleContext): void {
  if (c.fate.fate === 'rejected') {
    c.add(
      'CT007',
      'warning',
      `The template rejects a system message (${c.fate.message}). Pipelines then merge system text into the user turn, which moves the carrier tokens. ${CODES.CT007.why}`,
      needleFromError(c.fate.message ?? '') ?? /system/,
    );
  } else if (c.fate.fate === 'dropped') {
    c.add(
      'CT007',
      'warning',
      `The template drops the system message: its text never reaches the model. ${CODES.CT007.why}`,
      /system/,
    );
  } else if (c.fate.fate === 'merged') {
    c.add(
      'CT007',
      'info',
      'The template has no system turn: it merges the system text into the first user turn, so the "system" tokens sit after the user header.',
      /system/,
    );
  }
}

/**
 * Text of a prefix that is neither a special token nor a role header: what a person would read as words.
 * Special tokens of the tokenizer config, token-like markup (<|im_start|>, <｜User｜>, <start_of_turn>, [INST],
 * <<SYS>>) and role names are blanked out.
 */
function wordsOf(text: string, specialTokens: Record<string, unknown>): string {
  let t = text;
  for (const tok of Object.values(specialTokens)) if (typeof tok === 'string' && tok) t = t.split(tok).join(' ');
  return t
    .replace(/<\|[^|>]*\|>|<｜[^｜]*｜>|<\/?[a-z_]+>|\[\/?[A-Z_]+\]|<<\/?SYS>>/g, ' ')
    .replace(/\b(system|user|assistant|human|model|developer)\b/gi, ' ');
}

/**
 * CT001, the fixed kind: words the template writes around the system slot that a system message does not replace
 * (a vendor preamble, an identity line, a knowledge-cutoff line): every conversation carries them, whatever its
 * system message, which makes them the most constant carrier there is.
 */
function fixedPreamble(c: RuleContext, left: string, right: string): void {
  const lines = `${left}\n${right}`
    .split('\n')
    .map((line) => {
      const text = wordsOf(line, c.source.specialTokens).trim();
      return { line, text, words: text.match(/\p{L}{2,}/gu)?.length ?? 0 };
    })
    .filter((l) => l.words > 0);
  if (lines.reduce((n, l) => n + l.words, 0) < 3) return;
  const text = lines.map((l) => l.text).join(' / ');
  const tokens = c.options.tokenizer
    ? `, ${c.options.tokenizer.ids(lines.map((l) => l.line).join('\n')).length} tokens`
    : '';
  c.add(
    'CT001',
    'warning',
    `Every conversation gets this fixed text in its prefix, and a system message does not replace it (${text.length} characters${tokens}): "${clip(text)}". ${CODES.CT001.why}`,
    lines[0].text.slice(0, 40),
  );
}

/**
 * CT001: render with a marker as the system text; if the no-system render fills the same slot with text, that text
 * is the template's default system prompt.
 */
function defaultSystemPrompt(c: RuleContext): void {
  const withSystem = c.fate.fate === 'rejected' ? undefined : frame(c.template, { ...c.base, system: SYSTEM_MARKER });
  const at = withSystem ? withSystem.prefix.indexOf(SYSTEM_MARKER) : -1;
  if (withSystem && at >= 0) {
    const left = withSystem.prefix.slice(0, at);
    const right = withSystem.prefix.slice(at + SYSTEM_MARKER.length);
    fixedPreamble(c, left, right);
    const p0 = c.noSystem.prefix;
    if (p0.length >= left.length + right.length && p0.startsWith(left) && p0.endsWith(right)) {
      const fill = p0.slice(left.length, p0.length - right.length);
      if (fill.trim().length > 0) {
        c.audit.defaultSystemPrompt = fill;
        const tokens = c.options.tokenizer ? `, ${c.options.tokenizer.ids(fill).length} tokens` : '';
        c.add(
          'CT001',
          'warning',
          `Rows without a system message get this default system prompt (${fill.length} characters${tokens}): "${clip(fill)}". ${CODES.CT001.why}`,
          fill.trim().slice(0, 40),
        );
      }
    }
  }
}

/**
 * CT002: the prefix read under two clocks and two date strings. A date_string the user passes (as the finding
 * advises) is kept: only the clock moves then, and a prefix that holds still is no warning, only a note to pass the
 * same date everywhere.
 */
function dateInPrefix(c: RuleContext): void {
  const pinned = c.options.kwargs?.date_string;
  const otherDate = c.tryRender(() =>
    frame(c.template, {
      ...c.base,
      now: OTHER_CLOCK,
      kwargs: { ...c.options.kwargs, ...(pinned === undefined ? { date_string: '02 Jan 2031' } : {}) },
    }),
  );
  if (otherDate instanceof Error) return;
  if (pinned !== undefined && otherDate.prefix === c.noSystem.prefix) {
    if (typeof pinned === 'string' && pinned && c.noSystem.prefix.includes(pinned))
      c.add(
        'CT002',
        'info',
        `The prefix holds the date you pass ("${pinned}", date_string): it stays put across clocks. Pass the same date_string in training, evaluation and deployment, or the prefix (and its token count) differs between them.`,
        /strftime_now|date_string|Today Date|Current date/i,
      );
    return;
  }
  if (otherDate.prefix !== c.noSystem.prefix) {
    const date = firstDifference(c.noSystem.prefix, otherDate.prefix);
    const defaulted =
      /date_string/.test(c.source.text) &&
      c.options.kwargs?.date_string === undefined &&
      /26 Jul 2024/.test(c.source.text);
    c.add(
      'CT002',
      'warning',
      `The prefix contains a date ("${date}")${defaulted ? ', defaulting to 26 Jul 2024 unless date_string is passed' : ''}. ${CODES.CT002.why}`,
      /strftime_now|date_string|Today Date|Current date/i,
    );
  }
}

/** CT003: the template writes BOS and the tokenizer adds one when the text is tokenized with special tokens. */
function doubleBos(c: RuleContext): void {
  const bos = c.source.specialTokens.bos_token;
  if (bos && c.seg.rendered.startsWith(bos)) {
    const addsBos = c.options.tokenizer ? c.options.tokenizer.addsBos : c.source.config.add_bos_token === true;
    if (addsBos) {
      c.add(
        'CT003',
        'warning',
        `The template writes ${bos} and the tokenizer adds another when the rendered text is tokenized with special tokens (tokenizer(text), as several trainers do): two BOS tokens. Tokenize with add_special_tokens=False or strip the leading ${bos}. ${CODES.CT003.why}`,
        /bos_token/,
      );
    }
  }
}

/** CT004: the generation prompt is the postfix at inference; the training render has its own postfix. */
function generationPrompt(c: RuleContext): void {
  const withoutGen = c.tryRender(() => frame(c.template, { ...c.base, addGenerationPrompt: false }));
  const ignoresGen =
    !/add_generation_prompt/.test(c.source.text) ||
    (!(withoutGen instanceof Error) && withoutGen.postfix === c.noSystem.postfix);
  if (c.noSystem.postfix.trim().length === 0)
    // the real defect: at inference the model reads the user's text and then nothing that says it should answer
    c.add(
      'CT004',
      'warning',
      `Nothing follows the user's text at inference${ignoresGen ? ' (the template ignores add_generation_prompt)' : ''}: no assistant header announces the turn. ${CODES.CT004.why}`,
      /add_generation_prompt|assistant/,
    );
  else if (ignoresGen)
    // [INST] templates write " [/INST]" after every user turn: that is the announcement, at training and inference
    c.add(
      'CT004',
      'info',
      `The template writes "${clip(c.noSystem.postfix)}" after every user turn whether or not add_generation_prompt is set: training and inference share that postfix, but add_generation_prompt=False cannot leave it out (continuing a partial assistant message).`,
      /add_generation_prompt|\[\/INST\]|assistant/,
    );
  const training = c.tryRender(() => frame(c.template, { ...c.base, response: SAMPLE_RESPONSE }));
  if (training instanceof Error) {
    c.add(
      'CT009',
      'error',
      `Rendering a training example (user + assistant) fails: ${training.message}. ${CODES.CT009.why}`,
      needleFromError(training.message),
    );
  } else {
    if (training.postfix !== c.noSystem.postfix && /add_generation_prompt/.test(c.source.text)) {
      c.add(
        'CT004',
        'warning',
        `The postfix at training ("${clip(training.postfix)}") differs from the generation prompt at inference ("${clip(c.noSystem.postfix)}"). ${CODES.CT004.why}`,
        /add_generation_prompt/,
      );
    }
    // CT010: something must follow the response for the model to learn to stop.
    if ((training.tail ?? '').trim().length === 0) {
      c.add(
        'CT010',
        'warning',
        `Nothing follows the assistant's response in a training example: no end-of-turn or EOS token is trained. ${CODES.CT010.why}`,
        /assistant/,
      );
    }
  }
}

/** CT005 and CT010 with generation markers: which tokens the assistant mask covers. */
function generationMarkers(c: RuleContext): void {
  if (!hasGenerationTags(c.source.text)) {
    c.add(
      'CT005',
      'info',
      'No {% generation %} markers: return_assistant_tokens_mask and assistant_only_loss get an all-zero mask, so a trainer that relies on them puts the loss on every token, template tokens included, or on none.',
    );
  } else {
    const masked = generationMask(c.source.text, c.template, c.base);
    if (masked instanceof Error) {
      c.add('CT005', 'warning', `The {% generation %} markers cannot be evaluated: ${masked.message}`, /generation/);
    } else if (masked.tail.trim().length > 0 && !masked.inside.includes(masked.tail.trim().split(/\s/)[0])) {
      c.add(
        'CT010',
        'warning',
        `The end-of-turn text after the response ("${clip(masked.tail)}") lies outside the {% generation %} block, so the assistant mask never trains the stop token. ${CODES.CT010.why}`,
        /endgeneration/,
      );
    }
  }
}

/** CT006: another file in the folder holds a different template. */
function otherTemplates(c: RuleContext): void {
  for (const alt of c.source.alternates) {
    c.add(
      'CT006',
      'warning',
      `${alt.file.split(/[\\/]/).pop()} beside this file holds a different chat template; transformers loads chat_template.jinja first, other tools read tokenizer_config.json. ${CODES.CT006.why}`,
    );
  }
}

/** CT008: a reasoning scaffold in the postfix. */
function reasoningScaffold(c: RuleContext): void {
  if (/enable_thinking/.test(c.source.text)) {
    const off = c.tryRender(() =>
      frame(c.template, { ...c.base, kwargs: { ...c.options.kwargs, enable_thinking: false } }),
    );
    const on = c.tryRender(() =>
      frame(c.template, { ...c.base, kwargs: { ...c.options.kwargs, enable_thinking: true } }),
    );
    if (!(off instanceof Error) && !(on instanceof Error) && off.postfix !== on.postfix) {
      // which setting the render without the kwarg matches: the one the trainer gets unless told
      const byDefault =
        c.noSystem.postfix === off.postfix
          ? 'off by default'
          : c.noSystem.postfix === on.postfix
            ? 'on by default'
            : '';
      let message: string;
      if (off.postfix.startsWith(on.postfix))
        // Qwen3: thinking off writes an empty <think></think> block after the assistant header
        message = `With enable_thinking=False the postfix carries an empty reasoning block ("${clip(off.postfix.slice(on.postfix.length))}")${byDefault ? ` (thinking is ${byDefault})` : ''}.`;
      else if (on.postfix.startsWith(off.postfix))
        // opt-in thinking: enabling it opens a reasoning block that the postfix then ends with
        message = `Thinking is opt-in: with enable_thinking=True the postfix ends with an opened reasoning block ("${clip(on.postfix.slice(off.postfix.length))}")${byDefault ? `, ${byDefault}` : ''}.`;
      else
        message = `The postfix depends on enable_thinking: "${clip(off.postfix)}" with it off, "${clip(on.postfix)}" with it on${byDefault ? ` (${byDefault})` : ''}.`;
      c.add('CT008', 'info', `${message} ${CODES.CT008.why}`, /enable_thinking/);
    }
  }
}

/** The template checks, each a rule over one context; the order is the order findings are reported in. */
const TEMPLATE_RULES: readonly TemplateRule[] = [
  systemTurn,
  defaultSystemPrompt,
  dateInPrefix,
  doubleBos,
  generationPrompt,
  generationMarkers,
  otherTemplates,
  reasoningScaffold,
];

/** Renders a training example with the generation tags turned into markers, to see what the mask covers. */
function generationMask(
  text: string,
  _template: ChatTemplate,
  base: SegmentRequest,
): { inside: string; tail: string } | Error {
  try {
    const marked = new ChatTemplate(sentinelTemplate(text));
    const f = frame(marked, { ...base, response: SAMPLE_RESPONSE });
    const tail = f.tail ?? '';
    const closeAt = tail.indexOf(GENERATION_CLOSE);
    const inside = closeAt >= 0 ? tail.slice(0, closeAt).replace(GENERATION_OPEN, '') : '';
    return { inside, tail: splitSpans(tail).text };
  } catch (e) {
    return e as Error;
  }
}

function clip(s: string, n = 80): string {
  const flat = s.replace(/\n/g, '\\n');
  return flat.length > n ? flat.slice(0, n - 1) + '\u2026' : flat;
}

function firstDifference(a: string, b: string): string {
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  const lineStart = a.lastIndexOf('\n', i) + 1;
  const lineEnd = a.indexOf('\n', i);
  return a.slice(lineStart, lineEnd < 0 ? a.length : lineEnd);
}

/** Something to search for in the template source, from a Jinja error message. */
/** The engine's token-type names as the characters they stand for. */
const TOKEN_WORDS: Record<string, string> = {
  OpenExpression: '{{',
  CloseExpression: '}}',
  OpenStatement: '{%',
  CloseStatement: '%}',
  OpenCurlyBracket: '{',
  CloseCurlyBracket: '}',
  OpenSquareBracket: '[',
  CloseSquareBracket: ']',
  OpenParen: '(',
  CloseParen: ')',
  Comma: ',',
  Dot: '.',
  Colon: ':',
  Pipe: '|',
  Equals: '=',
  StringLiteral: 'a string',
  NumericLiteral: 'a number',
  Identifier: 'a name',
};

/** A parser message without its internals: "Expected ... X !== Y." as "expected Y, found X". */
function inWords(message: string): string {
  const m = /(\w+) !== (\w+)\.?\s*$/.exec(message);
  const word = (t: string) => TOKEN_WORDS[t] ?? t;
  if (m) return `expected ${word(m[2])}, found ${word(m[1])}`;
  return message
    .replace(/^Parser Error:\s*/, '')
    .replace(/\b(\w+)\b/g, (w) => (TOKEN_WORDS[w] && /[A-Z]/.test(w[0]) ? word(w) : w));
}

function needleFromError(message: string): RegExp | undefined {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  let m = /filter "(\w+)"/.exec(message) ?? /Unknown (?:\w+ )?filter: (\w+)/.exec(message);
  if (m) return new RegExp(`\\|\\s*${esc(m[1])}\\b`);
  m = /Unknown statement type: (\w+)/.exec(message);
  if (m) return new RegExp(`\\{%-?\\s*${esc(m[1])}\\b`);
  m = /Unknown test: (\w+)/.exec(message);
  if (m) return new RegExp(`\\bis\\s+(?:not\\s+)?${esc(m[1])}\\b`);
  m = /Unknown variable: (\w+)/.exec(message);
  if (m) return new RegExp(`\\b${esc(m[1])}\\b`);
  m = /Unexpected character: (.)/.exec(message);
  if (m) return new RegExp(esc(m[1]));
  m = /^(.{6,60})$/.exec(message.trim());
  if (m) return new RegExp(esc(m[1]).slice(0, 60));
  return undefined;
}

/** Locates a needle in the template and returns a 1-based range in the template's file. */
export function locateInTemplate(
  source: TemplateSource,
  needle?: string | RegExp | { start: number; end: number },
): Pick<Finding, 'file' | 'line' | 'column' | 'endLine' | 'endColumn'> {
  let start = 0;
  let end = 0;
  if (needle !== undefined) {
    if (typeof needle === 'object' && !(needle instanceof RegExp)) [start, end] = [needle.start, needle.end];
    else if (typeof needle === 'string') {
      const at = needle ? source.text.indexOf(needle) : -1;
      if (at >= 0) [start, end] = [at, at + needle.length];
    } else {
      const m = needle.exec(source.text);
      if (m) [start, end] = [m.index, m.index + m[0].length];
    }
  }
  const fileText = source.fileText ?? source.text;
  const index = new LineIndex(fileText);
  const s = index.position(fileOffset(source, start));
  const e = end > start ? index.position(fileOffset(source, end)) : { line: s.line, column: s.column + 1 };
  return { file: source.file, line: s.line, column: s.column, endLine: e.line, endColumn: e.column };
}

/** A finding for a template that could not even be loaded. */
export function loadErrorFinding(e: TemplateLoadError): Finding {
  const pos = e.fileText !== undefined ? new LineIndex(e.fileText).position(e.offset) : { line: 1, column: 1 };
  return {
    code: 'CT009',
    severity: 'error',
    message: e.message,
    file: e.file,
    line: pos.line,
    column: pos.column,
    endLine: pos.line,
    endColumn: pos.column + 1,
  };
}
