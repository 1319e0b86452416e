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
  constructor(readonly text: string) {
    try {
      this.compiled = new Template(text);
    } catch (e) {
      throw new TemplateRenderError((e as Error).message, 'parse');
    }
  }

  render(messages: readonly ChatMessage[], options: RenderOptions = {}): string {
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
      range,
      raise_exception: (message: unknown) => {
        throw new TemplateRaisedError(String(message));
      },
      strftime_now: (format: unknown) => strftime(now, String(format)),
      ...options.specialTokens,
      ...options.kwargs,
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? false,
    };
    if (options.tools !== undefined) globals.tools = options.tools;
    if (options.documents !== undefined) globals.documents = options.documents;
    for (const [key, value] of Object.entries(globals)) env.set(key, value);
    try {
      return new Interpreter(env).run(this.compiled.parsed).value as string;
    } catch (e) {
      if (e instanceof TemplateRaisedError) throw e;
      throw new TemplateRenderError((e as Error).message, 'render');
    }
  }
}

function range(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new TemplateRenderError('range() step must not be zero', 'render');
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}

const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];

/** Python's strftime in the C locale (what transformers' strftime_now produces), for the common directives. */
export function strftime(date: Date, format: string): string {
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return format.replace(/%([a-zA-Z%])/g, (whole, d: string) => {
    switch (d) {
      case 'Y': return String(date.getFullYear());
      case 'y': return pad(date.getFullYear() % 100);
      case 'm': return pad(date.getMonth() + 1);
      case 'd': return pad(date.getDate());
      case 'e': return String(date.getDate()).padStart(2, ' ');
      case 'B': return MONTHS[date.getMonth()];
      case 'b': case 'h': return MONTHS[date.getMonth()].slice(0, 3);
      case 'A': return DAYS[date.getDay()];
      case 'a': return DAYS[date.getDay()].slice(0, 3);
      case 'H': return pad(date.getHours());
      case 'I': return pad(((date.getHours() + 11) % 12) + 1);
      case 'M': return pad(date.getMinutes());
      case 'S': return pad(date.getSeconds());
      case 'p': return date.getHours() < 12 ? 'AM' : 'PM';
      case 'j': {
        const start = new Date(date.getFullYear(), 0, 1);
        return pad(Math.floor((date.getTime() - start.getTime()) / 86400000) + 1, 3);
      }
      case '%': return '%';
      default: return whole;
    }
  });
}
