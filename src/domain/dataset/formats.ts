/**
 * Chat dataset row formats and their validation. Every row is normalised to a message list, as the trainer
 * would see it, and every problem carries the JSON path it is about (to locate it in the line).
 */
import type { ChatMessage } from '../template/render';

export type RowFormat =
  | 'openai'
  | 'sharegpt'
  | 'alpaca'
  | 'prompt-completion'
  | 'prompt-completion-messages'
  | 'probes'
  | 'text';

export interface RowProblem {
  code: string;
  severity: 'error' | 'warning' | 'info';
  message: string;
  path: (string | number)[];
}

export interface NormalisedRow {
  format?: RowFormat;
  messages: ChatMessage[];
  problems: RowProblem[];
}

const KNOWN_ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool', 'function', 'ipython']);
const SHAREGPT_ROLES: Record<string, string> = {
  human: 'user',
  user: 'user',
  gpt: 'assistant',
  assistant: 'assistant',
  model: 'assistant',
  chatgpt: 'assistant',
  bing: 'assistant',
  bard: 'assistant',
  system: 'system',
  tool: 'tool',
  function_call: 'assistant',
  observation: 'tool',
  function: 'tool',
};

export function detectFormat(row: Record<string, unknown>): RowFormat | undefined {
  if (Array.isArray(row.messages)) return 'openai';
  if (Array.isArray(row.conversations)) return 'sharegpt';
  if (Array.isArray(row.conversation)) return 'sharegpt';
  if (typeof row.instruction === 'string' && ('output' in row || 'response' in row)) return 'alpaca';
  if ('prompt' in row && 'completion' in row) {
    return Array.isArray(row.prompt) || Array.isArray(row.completion)
      ? 'prompt-completion-messages'
      : 'prompt-completion';
  }
  if (typeof row.question === 'string') return 'probes';
  if (typeof row.text === 'string') return 'text';
  return undefined;
}

/**
 * Plain text of a message's content: a string, or a list of parts with text, in the OpenAI/TRL form
 * (`{"type": "text", "text": ...}`) or LLaMA-Factory's (`{"type": "text", "value": ...}`).
 */
export function contentText(content: unknown): string | undefined {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    const parts = content.map((p) => {
      if (typeof p === 'string') return p;
      if (!p || typeof p !== 'object') return '';
      const part = p as { type?: unknown; text?: unknown; value?: unknown };
      if (typeof part.text === 'string') return part.text;
      return part.type === 'text' && typeof part.value === 'string' ? part.value : '';
    });
    return parts.join('');
  }
  return undefined;
}

export function normaliseRow(row: unknown): NormalisedRow {
  const problems: RowProblem[] = [];
  if (!row || typeof row !== 'object' || Array.isArray(row)) {
    return {
      messages: [],
      problems: [{ code: 'DS002', severity: 'error', message: 'the row is not a JSON object', path: [] }],
    };
  }
  const obj = row as Record<string, unknown>;
  const format = detectFormat(obj);
  let messages: ChatMessage[] = [];
  const paths: (TurnPath | undefined)[] = [];
  let basePath: (string | number)[] = [];
  switch (format) {
    case 'openai':
      basePath = ['messages'];
      messages = readMessageList(
        obj.messages as unknown[],
        basePath,
        problems,
        (m) => m.role,
        (m) => m.content,
        paths,
      );
      break;
    case 'sharegpt': {
      const key = Array.isArray(obj.conversations) ? 'conversations' : 'conversation';
      basePath = [key];
      const list = obj[key] as unknown[];
      messages = readMessageList(
        list,
        basePath,
        problems,
        (m) => {
          const from = m.from ?? m.role;
          return typeof from === 'string' ? (SHAREGPT_ROLES[from.toLowerCase()] ?? from) : from;
        },
        (m) => m.value ?? m.content,
        paths,
      );
      if (typeof obj.system === 'string') {
        messages.unshift({ role: 'system', content: obj.system });
        paths.unshift(undefined);
      }
      break;
    }
    case 'alpaca': {
      const input = typeof obj.input === 'string' && obj.input.length > 0 ? `\n${obj.input}` : '';
      const output = obj.output ?? obj.response;
      if (typeof obj.system === 'string') messages.push({ role: 'system', content: obj.system });
      // LLaMA-Factory's alpaca `history`: earlier [instruction, response] turns, before this one
      if (Array.isArray(obj.history))
        obj.history.forEach((turn, i) => {
          if (Array.isArray(turn) && turn.length === 2 && turn.every((t) => typeof t === 'string'))
            messages.push({ role: 'user', content: turn[0] }, { role: 'assistant', content: turn[1] });
          else
            problems.push({
              code: 'DS002',
              severity: 'error',
              message: 'a history turn must be [instruction, response], two strings',
              path: ['history', i],
            });
        });
      messages.push({ role: 'user', content: `${obj.instruction as string}${input}` });
      if (typeof output !== 'string')
        problems.push({ code: 'DS006', severity: 'warning', message: 'the output is not a string', path: ['output'] });
      else messages.push({ role: 'assistant', content: output });
      break;
    }
    case 'prompt-completion':
      if (typeof obj.prompt !== 'string')
        problems.push({
          code: 'DS002',
          severity: 'error',
          message: 'prompt must be a string or a message list',
          path: ['prompt'],
        });
      if (typeof obj.completion !== 'string')
        problems.push({
          code: 'DS002',
          severity: 'error',
          message: 'completion must be a string or a message list',
          path: ['completion'],
        });
      if (typeof obj.prompt === 'string' && typeof obj.completion === 'string') {
        messages = [
          { role: 'user', content: obj.prompt },
          { role: 'assistant', content: obj.completion },
        ];
      }
      break;
    case 'prompt-completion-messages': {
      const prompt = Array.isArray(obj.prompt)
        ? readMessageList(
            obj.prompt,
            ['prompt'],
            problems,
            (m) => m.role,
            (m) => m.content,
            paths,
          )
        : [];
      const completion = Array.isArray(obj.completion)
        ? readMessageList(
            obj.completion,
            ['completion'],
            problems,
            (m) => m.role,
            (m) => m.content,
            paths,
          )
        : [];
      if (!Array.isArray(obj.prompt))
        problems.push({
          code: 'DS002',
          severity: 'error',
          message: 'prompt must be a message list when completion is one',
          path: ['prompt'],
        });
      if (!Array.isArray(obj.completion))
        problems.push({
          code: 'DS002',
          severity: 'error',
          message: 'completion must be a message list when prompt is one',
          path: ['completion'],
        });
      messages = [...prompt, ...completion];
      basePath = ['prompt'];
      break;
    }
    case 'probes':
      // a probe set (id, question, optional system and reference answers): prompts without responses
      if (typeof obj.system === 'string') messages.push({ role: 'system', content: obj.system });
      messages.push({ role: 'user', content: obj.question as string });
      if ((obj.question as string).trim().length === 0)
        problems.push({ code: 'DS004', severity: 'warning', message: 'the question is empty', path: ['question'] });
      return { format, messages, problems };
    case 'text':
      return { format, messages: [], problems };
    default:
      return {
        messages: [],
        problems: [
          {
            code: 'DS002',
            severity: 'error',
            message: `no chat format recognised (keys: ${Object.keys(obj).slice(0, 8).join(', ') || 'none'}); expected messages, conversations, instruction/output, prompt/completion, or a probe's question`,
            path: [],
          },
        ],
      };
  }
  checkTurns(messages, paths, format, problems, basePath);
  return { format, messages, problems };
}

/**
 * Where a turn came from in the row (its list, index and role key), for a later problem about the turn: kept in an
 * array beside the messages (a property added to each parsed turn cost a hidden-class change per turn).
 */
interface TurnPath {
  base: (string | number)[];
  i: number;
  roleKey: string;
}

const TURN_KEYS = new Set(['role', 'content', 'from', 'value']);
/** Whether a turn has no field but its role and content (in either naming). */
function onlyTurnKeys(m: Record<string, unknown>): boolean {
  for (const k in m) if (!TURN_KEYS.has(k)) return false;
  return true;
}

function readMessageList(
  list: unknown[],
  base: (string | number)[],
  problems: RowProblem[],
  roleOf: (m: Record<string, unknown>) => unknown,
  contentOf: (m: Record<string, unknown>) => unknown,
  paths: (TurnPath | undefined)[],
): ChatMessage[] {
  const out: ChatMessage[] = [];
  for (let i = 0; i < list.length; i++) {
    const item = list[i];
    if (!item || typeof item !== 'object' || Array.isArray(item)) {
      problems.push({
        code: 'DS002',
        severity: 'error',
        message: `turn ${i + 1} is not an object`,
        path: [...base, i],
      });
      continue;
    }
    const m = item as Record<string, unknown>;
    const role = roleOf(m);
    const content = contentOf(m);
    const roleKey = 'role' in m ? 'role' : 'from';
    if (typeof role !== 'string') {
      problems.push({ code: 'DS003', severity: 'error', message: `turn ${i + 1} has no role`, path: [...base, i] });
      continue;
    }
    if (!KNOWN_ROLES.has(role)) {
      problems.push({
        code: 'DS003',
        severity: 'warning',
        message: `unknown role "${role}" in turn ${i + 1}: templates may drop, reject or mis-render it`,
        path: [...base, i, roleKey],
      });
    }
    const text = contentText(content);
    const hasToolCalls = Array.isArray(m.tool_calls) && m.tool_calls.length > 0;
    if (text === undefined && !(content === null && hasToolCalls)) {
      const contentKey = 'content' in m ? 'content' : 'value';
      if (content !== undefined && content !== null) {
        problems.push({
          code: 'DS002',
          severity: 'error',
          message: `turn ${i + 1} content must be a string or a list of parts`,
          path: [...base, i, contentKey],
        });
        continue;
      }
      problems.push({
        code: 'DS004',
        severity: 'warning',
        message: `turn ${i + 1} (${role}) has no content`,
        path: [...base, i, contentKey],
      });
    } else if (text !== undefined && !/\S/.test(text) && !hasToolCalls) {
      problems.push({
        code: 'DS004',
        severity: 'warning',
        message: `turn ${i + 1} (${role}) has empty content`,
        path: [...base, i, 'content' in m ? 'content' : 'value'],
      });
    }
    // the common row (an OpenAI turn with string content) is used as parsed; others are copied with the trainer's
    // view: role and content, and any other field the turn has (tool_calls, name, ...) but ShareGPT's from/value
    const viewContent = typeof content === 'string' || Array.isArray(content) ? content : (text ?? content ?? '');
    let msg: ChatMessage;
    if (m.role === role && typeof content === 'string' && m.content === content) msg = m as unknown as ChatMessage;
    else if (onlyTurnKeys(m)) msg = { role, content: viewContent };
    else {
      msg = { ...m, role, content: viewContent };
      delete msg.from;
      delete msg.value;
    }
    paths.push({ base, i, roleKey });
    out.push(msg);
  }
  return out;
}

function checkTurns(
  messages: ChatMessage[],
  paths: (TurnPath | undefined)[],
  format: RowFormat,
  problems: RowProblem[],
  base: (string | number)[],
): void {
  const pathOf = (i: number) => {
    const p = paths[i];
    return p ? [...p.base, p.i, p.roleKey] : [...base, i];
  };
  let expect: 'user' | 'assistant' = 'user';
  let sawAssistant = false;
  let sawUser = false;
  for (let i = 0; i < messages.length; i++) {
    const role = messages[i].role;
    if (role === 'system' || role === 'developer') {
      if (i > 0)
        problems.push({
          code: 'DS005',
          severity: 'warning',
          message: `system message at turn ${i + 1}, after the conversation started: most templates only read a leading system message`,
          path: pathOf(i),
        });
      continue;
    }
    if (role === 'tool' || role === 'function' || role === 'ipython') {
      expect = 'assistant';
      continue;
    }
    if (role !== 'user' && role !== 'assistant') continue;
    if (role === 'user') sawUser = true;
    if (role === 'assistant') sawAssistant = true;
    if (role !== expect) {
      const what =
        role === 'assistant' && !sawUser
          ? 'the conversation starts with an assistant turn'
          : `two ${role} turns in a row`;
      problems.push({
        code: 'DS005',
        severity: 'warning',
        message: `turns do not alternate at turn ${i + 1}: ${what}`,
        path: pathOf(i),
      });
    }
    expect = role === 'user' ? 'assistant' : 'user';
  }
  if (!sawAssistant && messages.length > 0 && format !== 'text') {
    problems.push({
      code: 'DS006',
      severity: 'warning',
      message: 'no assistant turn: with response-only loss this row trains nothing',
      path: base,
    });
  }
  if (!sawUser && messages.length > 0) {
    problems.push({ code: 'DS005', severity: 'warning', message: 'no user turn', path: base });
  }
}
