/**
 * Renders a chat template the way transformers' apply_chat_template does: the template sees `messages`,
 * `add_generation_prompt`, `tools`, `documents`, the special tokens as strings, any extra kwargs
 * (enable_thinking, date_string, ...), `raise_exception` and `strftime_now`. @huggingface/jinja already uses
 * trim_blocks and lstrip_blocks, as transformers does.
 */
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import type { SpecialTokens } from './source';

export interface ChatMessage {
  role: string;
  content: unknown;
  [key: string]: unknown;
}

export interface RenderOptions {
  addGenerationPrompt?: boolean;
  tools?: unknown[];
  documents?: unknown[];
  specialTokens?: SpecialTokens;
  /** Extra template variables, e.g. { enable_thinking: false, date_string: '26 Jul 2024' }. */
  kwargs?: Record<string, unknown>;
  /** The clock strftime_now reads; fixed in tests and audits so that renders are reproducible. */
  now?: Date;
}

/** The template said no: raise_exception(...) was called. */
export class TemplateRaisedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TemplateRaisedError';
  }
}

/** The template could not be parsed or evaluated by the JS engine. */
export class TemplateRenderError extends Error {
  constructor(
    message: string,
    readonly phase: 'parse' | 'render',
  ) {
    super(message);
    this.name = 'TemplateRenderError';
  }
}

/** A parsed template, reusable across renders (parsing is the expensive part). */
export class ChatTemplate {
  private readonly compiled: Template;
  /**
   * Once a render of a small conversation ran past the budget, the template itself loops: it is not run again (an
   * audit renders it a dozen times). A large row over the budget is that row's fault, and the next row is rendered.
   */
  private overBudget?: TemplateBudgetError;
  constructor(readonly text: string) {
    try {
      this.compiled = new Template(text);
    } catch (e) {
      throw new TemplateRenderError((e as Error).message, 'parse');
    }
  }

  render(messages: readonly ChatMessage[], options: RenderOptions = {}): string {
    if (this.overBudget) throw this.overBudget;
    const now = options.now ?? new Date();
    // Template.render declares its own raise_exception and strftime_now (current clock); we need a typed
    // exception and a settable clock, so the globals are declared here and the parsed program run directly.
    const env = new Environment();
    const globals: Record<string, unknown> = {
      true: true,
      false: false,
      none: null,
      True: true,
      False: false,
      None: null,
      raise_exception: (message: unknown) => {
        throw new TemplateRaisedError(String(message));
      },
      strftime_now: (format: unknown) => strftime(now, String(format)),
      ...options.specialTokens,
      ...options.kwargs,
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? false,
    };
    // transformers passes tools and documents always, None when there are none: `tools is not none` is false then
    globals.tools = options.tools ?? globals.tools ?? null;
    globals.documents = options.documents ?? globals.documents ?? null;
    for (const [key, value] of Object.entries(globals)) env.set(key, value);
    // a template is code from the user's workspace: every render runs on a budget of steps, time and output
    const inputChars =
      JSON.stringify(messages).length +
      JSON.stringify(options.tools ?? null).length +
      JSON.stringify(options.documents ?? null).length;
    const budget = new RenderBudget(inputChars, messages.length);
    env.set('range', (start: number, stop?: number, step?: number) => range(budget, start, stop, step));
    try {
      const out = new BudgetedInterpreter(env, budget).run(this.compiled.parsed).value as string;
      budget.checkOutput(out.length);
      return out;
    } catch (e) {
      if (e instanceof TemplateBudgetError) {
        if (inputChars <= RENDER_LIMITS.stickyInputChars && messages.length <= RENDER_LIMITS.stickyMessages)
          this.overBudget = e;
        throw e;
      }
      if (e instanceof TemplateRaisedError) throw e;
      throw new TemplateRenderError((e as Error).message, 'render');
    }
  }
}

/** The template ran past its budget (a loop too long, an output too large): bounded, never a hang. */
export class TemplateBudgetError extends TemplateRenderError {
  constructor(message: string) {
    super(message, 'render');
    this.name = 'TemplateBudgetError';
  }
}

/**
 * Limits for one render. Real chat templates take a few thousand evaluation steps (Qwen3's, 40 turns with a tool:
 * about 2,000) and produce output of the order of their input; these limits are two orders of magnitude above
 * that. Steps are counted (a deterministic bound, about 0.2 s of interpretation) and the clock is a backstop.
 */
export const RENDER_LIMITS = {
  steps: 300_000,
  /** More steps per message: the budget is per row, and a long conversation is not a loop. */
  stepsPerMessage: 1_000,
  ms: 3_000,
  msPerMessage: 10,
  rangeItems: 100_000,
  outputFactor: 8,
  outputSlack: 1_000_000,
  /** A render over budget on input this small is the template's own doing: it is not run again. */
  stickyInputChars: 10_000,
  stickyMessages: 20,
};

class RenderBudget {
  steps = 0;
  rangeItems = 0;
  private readonly deadline: number;
  private readonly maxSteps: number;
  readonly maxOutput: number;
  constructor(inputChars: number, messages: number) {
    this.maxOutput = RENDER_LIMITS.outputFactor * inputChars + RENDER_LIMITS.outputSlack;
    this.maxSteps = RENDER_LIMITS.steps + RENDER_LIMITS.stepsPerMessage * messages;
    this.deadline = Date.now() + RENDER_LIMITS.ms + RENDER_LIMITS.msPerMessage * messages;
  }
  step(): void {
    if (++this.steps > this.maxSteps)
      throw new TemplateBudgetError(
        `the template did not finish within ${this.maxSteps.toLocaleString('en')} evaluation steps (a loop that never ends, or far too long)`,
      );
    if ((this.steps & 1023) === 0 && Date.now() > this.deadline)
      throw new TemplateBudgetError(`the template did not finish within its time budget`);
  }
  checkOutput(chars: number): void {
    if (chars > this.maxOutput)
      throw new TemplateBudgetError(
        `the template produced ${chars.toLocaleString('en')} characters from ${Math.round((this.maxOutput - RENDER_LIMITS.outputSlack) / RENDER_LIMITS.outputFactor).toLocaleString('en')} of input (limit ${this.maxOutput.toLocaleString('en')})`,
      );
  }
}

/** @huggingface/jinja's interpreter, counting every evaluation against the budget and checking string sizes. */
type Value = ReturnType<Interpreter['evaluate']>;
type Node = Parameters<Interpreter['evaluate']>[0];

/** Filters that iterate their operand: on None, Jinja2 yields nothing where @huggingface/jinja raises. */
const ITERATING_FILTERS = new Set(['selectattr', 'rejectattr', 'select', 'reject', 'map']);

/** Filters that read their operand as a string: Jinja2 applies str() to any other value first. */
const STRING_FILTERS = new Set(['trim', 'upper', 'lower', 'title', 'capitalize', 'replace', 'indent', 'center']);

/** Statements whose value is not output: the library answers None for them. */
const SILENT_STATEMENTS = new Set(['Set', 'Macro', 'Comment', 'Break', 'Continue']);

type ApplyFilter = (
  operand: Value,
  filterNode: { type: string; value?: string; callee?: { value?: string } },
  environment: Environment,
) => Value;

/** A value already computed, standing in for an operand node (so the library's own arithmetic runs on it). */
const PRECOMPUTED = 'PiggybackPrecomputed';

/**
 * The library's interpreter with a budget, and the places where it departs from Jinja2 as transformers runs it
 * brought back (checked against python3-jinja2 in test/unit/jinjaParity.test.ts):
 * - booleans print as Python prints them (True, False), not as JavaScript does;
 * - a string plus a non-string raises, as Python's str + dict does, instead of pasting "[object Map]";
 * - selectattr / rejectattr / select / reject / map on None give an empty sequence;
 * - what a template prints is what Python's str() gives: None as "None", a list or a dict (content given as a list
 *   of parts, say) as its Python repr, and string filters (trim, upper, ...) and `~` on such values do the same,
 *   so that a template that pastes content parts into the prompt pastes what transformers pastes;
 * - dict literals may have integer keys, read back with d[1] and `1 in d`.
 */
class BudgetedInterpreter extends Interpreter {
  constructor(
    env: Environment,
    private readonly budget: RenderBudget,
  ) {
    super(env);
    // the stand-ins the filters below pass on, made once a render
    const empty = runtimeValue([]);
    // applyFilter is private in the library's types: wrapped on the instance
    const self = this as unknown as { applyFilter: ApplyFilter };
    const library = self.applyFilter.bind(this);
    self.applyFilter = (operand, filterNode, environment) => {
      const name = filterNode.type === 'Identifier' ? filterNode.value : filterNode.callee?.value;
      // str(True) is "True", str([..]) a Python repr: the library's string filter prints JavaScript's forms
      if (name === 'string' && operand.type !== 'StringValue') return runtimeValue(pythonStr(operand));
      if (name && STRING_FILTERS.has(name) && operand.type !== 'StringValue')
        return library(runtimeValue(pythonStr(operand)), filterNode, environment);
      if (operand.type === 'NullValue' && name && ITERATING_FILTERS.has(name))
        return library(empty, filterNode, environment);
      return library(operand, filterNode, environment);
    };
    // what a block outputs: str() of each expression, None included (the library drops None and prints JSON)
    const blocks = this as unknown as { evaluateBlock: (statements: Node[], environment: Environment) => Value };
    blocks.evaluateBlock = (statements, environment) => {
      let out = '';
      for (const statement of statements) {
        const v = this.evaluate(statement, environment);
        if (!SILENT_STATEMENTS.has((statement as { type: string }).type)) out += pythonStr(v);
      }
      return runtimeValue(out);
    };
  }

  override evaluate(node: Node, environment: Environment): Value {
    // the library evaluates absent nodes too (a slice's missing bound) and answers undefined for them
    if ((node as { type?: string } | undefined)?.type === PRECOMPUTED)
      return (node as unknown as { value: Value }).value;
    this.budget.step();
    const v = this.pythonic(node, environment);
    if (typeof v.value === 'string' && v.value.length > this.budget.maxOutput) this.budget.checkOutput(v.value.length);
    return v;
  }

  private pythonic(node: Node, environment: Environment): Value {
    const n = node as unknown as {
      type: string;
      operator?: { value: string };
      left?: Node;
      right?: Node;
      object?: Node;
      property?: Node;
      computed?: boolean;
      value?: Map<Node, Node>;
    };
    const pre = (value: Value) => ({ type: PRECOMPUTED, value }) as unknown as Node;
    // a method the value does not have: Python's own message, not the library's "not a function"
    type Callee = { type: string; computed?: boolean; object?: Node; property?: { value?: string } };
    const callee = (n as { callee?: Callee } | undefined)?.callee;
    if (n?.type === 'CallExpression' && callee?.type === 'MemberExpression' && !callee.computed) {
      const object = defined(this.evaluate(callee.object!, environment), callee.object!);
      const fn = super.evaluate({ ...callee, object: pre(object) } as unknown as Node, environment);
      if (fn.type === 'UndefinedValue')
        throw new TemplateRenderError(
          `'${pythonType(object)} object' has no attribute '${callee.property?.value}'`,
          'render',
        );
      return super.evaluate({ ...(node as object), callee: pre(fn) } as unknown as Node, environment);
    }
    if (n?.type === 'BinaryExpression' && n.operator?.value === '~')
      return runtimeValue(
        pythonStr(this.evaluate(n.left!, environment)) + pythonStr(this.evaluate(n.right!, environment)),
      );
    // integer keys: a dict literal {1: 'a'} keeps them as their decimal text, read back by d[1] and `1 in d`
    if (n?.type === 'ObjectLiteral' && n.value) {
      const entries = new Map(
        [...n.value].map(([key, value]): [Node, Node] => {
          const k = this.evaluate(key, environment);
          return [k.type === 'IntegerValue' ? pre(runtimeValue(String(k.value))) : pre(k), value];
        }),
      );
      return super.evaluate({ ...(node as object), value: entries } as unknown as Node, environment);
    }
    if (n?.type === 'MemberExpression') {
      const object = defined(this.evaluate(n.object!, environment), n.object!);
      if (!n.computed || n.property?.type === 'SliceExpression')
        return super.evaluate({ ...(node as object), object: pre(object) } as unknown as Node, environment);
      let property = this.evaluate(n.property!, environment);
      if (object.type === 'ObjectValue' && property.type === 'IntegerValue')
        property = runtimeValue(String(property.value));
      return super.evaluate(
        { ...(node as object), object: pre(object), property: pre(property) } as unknown as Node,
        environment,
      );
    }
    // a for loop iterates an undefined value as nothing and a string by its characters; None raises
    if (n?.type === 'For') {
      const it = (n as unknown as { iterable: { type: string; lhs?: Node } }).iterable;
      const select = it.type === 'SelectExpression';
      let v = this.evaluate(select ? it.lhs! : (it as unknown as Node), environment);
      if (v.type === 'UndefinedValue') v = runtimeValue([]);
      else if (v.type === 'StringValue') v = runtimeValue([...(v.value as string)]);
      else if (v.type === 'NullValue') throw new TemplateRenderError("'NoneType' object is not iterable", 'render');
      return super.evaluate(
        { ...(node as object), iterable: select ? { ...it, lhs: pre(v) } : pre(v) } as unknown as Node,
        environment,
      );
    }
    if (n?.type === 'BinaryExpression' && (n.operator?.value === 'in' || n.operator?.value === 'not in')) {
      let left = this.evaluate(n.left!, environment);
      const right = this.evaluate(n.right!, environment);
      if (right.type === 'ObjectValue' && left.type === 'IntegerValue') left = runtimeValue(String(left.value));
      const v = super.evaluate(
        { ...(node as object), left: pre(left), right: pre(right) } as unknown as Node,
        environment,
      );
      return pythonBool(v);
    }
    if (n?.type === 'BinaryExpression' && n.operator?.value === '+') {
      const left = this.evaluate(n.left!, environment);
      const right = this.evaluate(n.right!, environment);
      const isStr = (v: Value) => v.type === 'StringValue';
      if (isStr(left) !== isStr(right) && left.type !== 'UndefinedValue' && right.type !== 'UndefinedValue')
        throw new TemplateRenderError(
          `can only concatenate str (not "${pythonType(isStr(left) ? right : left)}") to str`,
          'render',
        );
      return super.evaluate(
        { ...(node as object), left: pre(left), right: pre(right) } as unknown as Node,
        environment,
      );
    }
    const v = super.evaluate(node, environment);
    return v.type === 'BooleanValue' ? pythonBool(v) : v;
  }
}

/** An attribute or item of an undefined value raises in Jinja2 (UndefinedError); the library answers undefined. */
function defined(v: Value, node: Node): Value {
  if (v.type !== 'UndefinedValue') return v;
  const n = node as unknown as { type: string; value?: string; property?: { value?: unknown } };
  const name = n.type === 'Identifier' ? n.value : n.type === 'MemberExpression' ? n.property?.value : undefined;
  throw new TemplateRenderError(name !== undefined ? `'${String(name)}' is undefined` : 'undefined value', 'render');
}

/** The Python type name a runtime value stands for, for Python's own error message. */
function pythonType(v: Value): string {
  const names: Record<string, string> = {
    IntegerValue: 'int',
    FloatValue: 'float',
    BooleanValue: 'bool',
    NullValue: 'NoneType',
    ArrayValue: 'list',
    TupleValue: 'tuple',
    ObjectValue: 'dict',
    KeywordArgumentsValue: 'dict',
  };
  return names[v.type] ?? v.type.replace(/Value$/, '').toLowerCase();
}

/** Python's str() of a runtime value: a string as itself, undefined as nothing, anything else as its repr. */
function pythonStr(v: Value): string {
  if (v.type === 'StringValue') return v.value as string;
  if (v.type === 'UndefinedValue') return '';
  return pythonRepr(v);
}

/** Python's repr() of a runtime value, as Jinja2 prints a list or a dict. */
function pythonRepr(v: Value): string {
  switch (v.type) {
    case 'StringValue':
      return pythonStringRepr(v.value as string);
    case 'BooleanValue':
      return v.value ? 'True' : 'False';
    case 'NullValue':
      return 'None';
    case 'UndefinedValue':
      return '';
    case 'ArrayValue':
      return `[${(v.value as Value[]).map(pythonRepr).join(', ')}]`;
    case 'TupleValue': {
      const items = (v.value as Value[]).map(pythonRepr);
      return items.length === 1 ? `(${items[0]},)` : `(${items.join(', ')})`;
    }
    case 'ObjectValue':
    case 'KeywordArgumentsValue':
      return `{${[...(v.value as Map<string, Value>)].map(([k, x]) => `${pythonStringRepr(k)}: ${pythonRepr(x)}`).join(', ')}}`;
    case 'NamespaceValue':
      return `<Namespace {${[...(v.value as Map<string, Value>)].map(([k, x]) => `${pythonStringRepr(k)}: ${pythonRepr(x)}`).join(', ')}}>`;
    default:
      return v.toString();
  }
}

/** Python's repr() of a str: single quotes unless the text has one and no double quote, escapes as Python writes them. */
function pythonStringRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    if (ch === quote || ch === '\\') out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch !== ' ' && /[\p{C}\p{Z}]/u.test(ch)) {
      const code = ch.codePointAt(0)!;
      out +=
        code < 0x100
          ? `\\x${code.toString(16).padStart(2, '0')}`
          : code < 0x10000
            ? `\\u${code.toString(16).padStart(4, '0')}`
            : `\\U${code.toString(16).padStart(8, '0')}`;
    } else out += ch;
  }
  return out + quote;
}

/** A JavaScript value as the library's runtime value. */
function runtimeValue(value: unknown): Value {
  // converted in a scratch environment: the template's own globals stay as transformers gives them
  const scratch = new Environment();
  scratch.set('value', value);
  return scratch.lookupVariable('value');
}

/** A boolean that prints as Python's does; its value, truthiness and JSON stay the library's. */
function pythonBool(v: Value): Value {
  if (!Object.hasOwn(v, 'toString'))
    Object.defineProperty(v, 'toString', { value: () => (v.value ? 'True' : 'False'), enumerable: false });
  return v;
}

function range(budget: RenderBudget, start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new TemplateRenderError('range() step must not be zero', 'render');
  const count = Math.max(0, Math.ceil((stop - start) / step));
  // counted over the whole render, so that nested loops over ranges are bounded as one loop is
  budget.rangeItems += count;
  if (!(budget.rangeItems <= RENDER_LIMITS.rangeItems))
    throw new TemplateBudgetError(
      `range() calls of ${Number.isFinite(budget.rangeItems) ? budget.rangeItems.toLocaleString('en') : budget.rangeItems} items in all are over the template budget of ${RENDER_LIMITS.rangeItems.toLocaleString('en')}`,
    );
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) {
    out.push(i);
    budget.step();
  }
  return out;
}

const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const MONTHS = [
  'January',
  'February',
  'March',
  'April',
  'May',
  'June',
  'July',
  'August',
  'September',
  'October',
  'November',
  'December',
];

/** Python's strftime in the C locale (what transformers' strftime_now produces), for the common directives. */
export function strftime(date: Date, format: string): string {
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return format.replace(/%([a-zA-Z%])/g, (whole, d: string) => {
    switch (d) {
      case 'Y':
        return String(date.getFullYear());
      case 'y':
        return pad(date.getFullYear() % 100);
      case 'm':
        return pad(date.getMonth() + 1);
      case 'd':
        return pad(date.getDate());
      case 'e':
        return String(date.getDate()).padStart(2, ' ');
      case 'B':
        return MONTHS[date.getMonth()];
      case 'b':
      case 'h':
        return MONTHS[date.getMonth()].slice(0, 3);
      case 'A':
        return DAYS[date.getDay()];
      case 'a':
        return DAYS[date.getDay()].slice(0, 3);
      case 'H':
        return pad(date.getHours());
      case 'I':
        return pad(((date.getHours() + 11) % 12) + 1);
      case 'M':
        return pad(date.getMinutes());
      case 'S':
        return pad(date.getSeconds());
      case 'p':
        return date.getHours() < 12 ? 'AM' : 'PM';
      case 'j': {
        const start = new Date(date.getFullYear(), 0, 1);
        return pad(Math.floor((date.getTime() - start.getTime()) / 86400000) + 1, 3);
      }
      case '%':
        return '%';
      default:
        return whole;
    }
  });
}
