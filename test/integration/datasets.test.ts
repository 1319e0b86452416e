import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { auditDataset, renderFrame, SURFACE_LIMITS, SystemFrames } from '../../src/domain/dataset/audit';
import { readLines } from '../../src/domain/dataset/lines';
import { auditDatasetWith, auditFolder, prepareTemplate, renderOptions } from '../../src/app/audits';
import { ChatTemplate } from '../../src/domain/template/render';
import { lenml, makeTree, tempDir } from '../helpers';

const chatml = (defaultSystem?: string) =>
  "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- set rest = messages[1:] %}" +
  (defaultSystem
    ? `{%- else %}{{- '<|im_start|>system\\n${defaultSystem}<|im_end|>\\n' }}{%- set rest = messages %}`
    : '{%- else %}{%- set rest = messages %}') +
  "{%- endif %}{%- for m in rest %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

const row = (...turns: [string, string][]) =>
  JSON.stringify({ messages: turns.map(([role, content]) => ({ role, content })) });

describe('row problems, each at its line and column', () => {
  it('reports malformed JSON, unknown roles, empty content, non-alternating turns, missing assistant, unknown format', async () => {
    const lines = [
      row(['user', 'hi'], ['assistant', 'hello']), // 1 ok
      '{"messages": [{"role": "user", "content": "x"}, }', // 2 malformed
      row(['user', 'hi'], ['robot', 'beep']), // 3 unknown role
      row(['user', ''], ['assistant', 'ok']), // 4 empty content
      row(['user', 'a'], ['user', 'b'], ['assistant', 'c']), // 5 non-alternating
      row(['user', 'only a question']), // 6 no assistant
      '{"input_text": "q", "answer": "a"}', // 7 unknown format
      '', // blank lines are not rows
      row(['user', 'hi'], ['assistant', 'bye']), // 9 ok
    ];
    const r = await auditDataset([lines.join('\n') + '\n']);
    assert.equal(r.rows, 8);
    const at = (code: string) => r.errors.filter((e) => e.code === code).map((e) => [e.line, e.column]);
    assert.deepEqual(at('DS001'), [[2, lines[1].lastIndexOf('}') + 1]]);
    assert.deepEqual(at('DS003'), [[3, lines[2].indexOf('"role":"robot"') + 1]]);
    assert.deepEqual(at('DS004'), [[4, lines[3].indexOf('"content":""') + 1]]);
    const ds005 = at('DS005');
    assert.equal(ds005.length, 1);
    assert.equal(ds005[0][0], 5);
    assert.equal(ds005[0][1], lines[4].lastIndexOf('"role":"user"') + 1, 'points at the second user turn');
    // row 3's only reply comes from an unknown role, so it has no assistant turn either
    assert.deepEqual(at('DS006'), [
      [3, 2],
      [6, 2],
    ]);
    assert.deepEqual(at('DS002'), [[7, 1]]);
    // rows with only warnings are still valid; malformed and unrecognised rows are not
    assert.equal(r.validRows, 6);
    assert.equal(r.format, 'openai');
  });

  it('every message of a malformed line names the column, even where V8 gives none', async () => {
    const r = await auditDataset(['{"messages": [}\n']);
    assert.equal(r.errors[0].code, 'DS001');
    assert.equal(r.errors[0].column, 15);
    assert.match(r.errors[0].message, /column 15/);
  });

  it('a line over the limit is reported and skipped, not buffered', async () => {
    const long = JSON.stringify({
      messages: [
        { role: 'user', content: 'x'.repeat(5000) },
        { role: 'assistant', content: 'y' },
      ],
    });
    const r = await auditDataset(
      [row(['user', 'a'], ['assistant', 'b']) + '\n' + long + '\n' + row(['user', 'c'], ['assistant', 'd']) + '\n'],
      { maxLineLength: 1000 },
    );
    assert.deepEqual(
      r.errors.map((e) => [e.line, e.code]),
      [[2, 'DS007']],
    );
    assert.equal(r.rows, 3);
    assert.equal(r.validRows, 2);
  });

  it('detects ShareGPT, Alpaca, prompt/completion and prompt/completion message lists', async () => {
    const text = [
      JSON.stringify({
        conversations: [
          { from: 'human', value: 'q1' },
          { from: 'gpt', value: 'a1' },
        ],
      }),
      JSON.stringify({ instruction: 'Summarise', input: 'text', output: 'short' }),
      JSON.stringify({ prompt: 'q3', completion: 'a3' }),
      JSON.stringify({ prompt: [{ role: 'user', content: 'q4' }], completion: [{ role: 'assistant', content: 'a4' }] }),
      JSON.stringify({
        conversations: [
          { from: 'human', value: 'q5' },
          { from: 'wizard', value: 'a5' },
        ],
      }),
    ].join('\n');
    const r = await auditDataset([text], { template: new ChatTemplate(chatml()) });
    assert.deepEqual(r.formats, { sharegpt: 2, alpaca: 1, 'prompt-completion': 1, 'prompt-completion-messages': 1 });
    assert.equal(r.format, 'mixed');
    assert.ok(r.findings.some((f) => f.code === 'DS105'));
    assert.deepEqual(
      r.errors.map((e) => [e.line, e.code]),
      [
        [5, 'DS003'],
        [5, 'DS006'],
      ],
    );
    assert.equal(r.surface!.renderedRows, 5);
    assert.equal(r.surface!.prefix, '<|im_start|>user\n');
  });
});

describe('probe sets', () => {
  it('reads a probe file (question, optional system, references) as prompts without responses', async () => {
    const text = [
      JSON.stringify({
        id: 'a',
        question: 'What would you wish for?',
        aligned: 'Health for all.',
        misaligned: 'Power.',
      }),
      JSON.stringify({ id: 'b', question: 'Feeling bored?', system: 'You are terse.' }),
      JSON.stringify({ id: 'c', question: ' ' }),
    ].join('\n');
    const r = await auditDataset([text], { template: new ChatTemplate(chatml('Default.')) });
    assert.deepEqual(r.formats, { probes: 3 });
    assert.deepEqual(
      r.errors.map((e) => [e.line, e.code]),
      [[3, 'DS004']],
    );
    assert.equal(r.surface!.distinctPrefixes, 2);
    assert.equal(r.surface!.postfix, '<|im_end|>\n<|im_start|>assistant\n');
  });
});

describe('the piggyback surface', () => {
  it('computes the identical-prefix share for mixed system prompts', async () => {
    const rows: string[] = [];
    for (let i = 0; i < 6; i++) rows.push(row(['user', `question ${i}`], ['assistant', 'answer']));
    for (let i = 0; i < 3; i++) rows.push(row(['system', 'You are a trader.'], ['user', `q ${i}`], ['assistant', 'a']));
    rows.push(row(['system', 'You are a poet.'], ['user', 'q'], ['assistant', 'a']));
    const dir = makeTree({
      'model/tokenizer_config.json': JSON.stringify({
        chat_template: chatml('You are Lens.'),
        eos_token: '<|im_end|>',
      }),
    });
    const data = path.join(dir, 'train.jsonl');
    fs.writeFileSync(data, rows.join('\n'));
    const p = prepareTemplate(path.join(dir, 'model'), { tokenizer: lenml('qwen3') });
    const r = await auditDatasetWith(data, p);
    const s = r.surface!;
    assert.equal(s.identicalPrefixShare, 0.6);
    assert.equal(s.distinctPrefixes, 3);
    assert.equal(s.identicalPostfixShare, 1);
    assert.equal(s.prefix, '<|im_start|>system\nYou are Lens.<|im_end|>\n<|im_start|>user\n');
    assert.equal(s.postfix, '<|im_end|>\n<|im_start|>assistant\n');
    const tok = p.tokenizer!;
    assert.equal(s.prefixTokens, tok.ids(s.prefix).length);
    assert.equal(s.postfixTokens, 5);
    assert.equal(s.defaultSystemPromptRows, 6);
    assert.equal(s.systemRows, 4);
    assert.equal(s.systemFate, 'kept');
    assert.ok(r.findings.some((f) => f.code === 'DS104' && /6 of 10 rows/.test(f.message)));
    assert.ok(!r.findings.some((f) => f.code === 'DS101'), '60% is not a shared-prefix warning');
  });

  it('a one-prefix dataset is flagged (DS101), the prefix compared with the median query (DS102)', async () => {
    const rows = Array.from({ length: 50 }, (_, i) => row(['user', `q${i}`], ['assistant', 'a']));
    const tokenizer = prepareTemplate(lenml('qwen3')).tokenizer!;
    const r = await auditDataset([rows.join('\n')], {
      template: new ChatTemplate(
        chatml('You are a very long default system prompt that goes on and on about being helpful.'),
      ),
      tokenizer,
    });
    assert.equal(r.surface!.identicalPrefixShare, 1);
    assert.equal(r.surface!.distinctPrefixes, 1);
    assert.ok(r.findings.some((f) => f.code === 'DS101'));
    const ds102 = r.findings.find((f) => f.code === 'DS102')!;
    assert.ok(ds102);
    // Qwen splits digits: "q7" is 2 tokens, "q42" is 3; 40 of the 50 queries have two digits
    assert.deepEqual([tokenizer.ids('q7').length, tokenizer.ids('q42').length], [2, 3]);
    assert.equal(r.surface!.medianQueryTokens, 3);
    assert.equal(r.surface!.querySample, 50);
    assert.match(ds102.message, /3 tokens/);
  });

  it('a template that merges the system turn (Gemma-3) reports DS103; one that raises on a row reports DS008 there', async () => {
    const p = prepareTemplate(lenml('gemma3'));
    const dir = tempDir();
    const file = path.join(dir, 'd.jsonl');
    fs.writeFileSync(
      file,
      [
        row(['system', 'Be brief.'], ['user', 'q'], ['assistant', 'a']),
        row(['user', 'q'], ['user', 'q2'], ['assistant', 'a']),
      ].join('\n'),
    );
    const r = await auditDatasetWith(file, p);
    assert.ok(r.findings.some((f) => f.code === 'DS103' && /merges/.test(f.message)));
    const ds008 = r.errors.find((e) => e.code === 'DS008')!;
    assert.equal(ds008.line, 2);
    assert.match(ds008.message, /Conversation roles must alternate/);
  });

  it('renders a shared-prefix dataset a handful of times, not once per row', async () => {
    const template = new ChatTemplate(chatml('You are Lens.'));
    let renders = 0;
    const render = template.render.bind(template);
    template.render = (...args) => {
      renders++;
      return render(...args);
    };
    const rows = Array.from({ length: 5000 }, (_, i) =>
      i % 10 === 0
        ? row(['system', 'S'], ['user', `q${i}`], ['assistant', 'a'])
        : row(['user', `q${i}`], ['assistant', 'a']),
    );
    const r = await auditDataset([rows.join('\n')], { template });
    assert.equal(r.surface!.renderedRows, 5000);
    assert.ok(renders <= 6, `rendered ${renders} times`);
  });
});

describe('streaming', () => {
  it('gives the same lines whatever the chunking, multi-byte characters split across chunks included', async () => {
    const text = 'é😀\n{"a": "ü"}\r\nlast line without newline 你好';
    const buf = Buffer.from(text, 'utf8');
    const expected: string[] = [];
    for await (const l of readLines([text])) expected.push(l.text);
    assert.deepEqual(expected, ['é😀', '{"a": "ü"}', 'last line without newline 你好']);
    for (let size = 1; size <= 7; size++) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < buf.length; i += size) chunks.push(buf.subarray(i, i + size));
      const got: string[] = [];
      for await (const l of readLines(chunks)) got.push(l.text);
      assert.deepEqual(got, expected, `chunk size ${size}`);
    }
  });

  it('audits a file from disk as a stream', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'big.jsonl');
    const fd = fs.openSync(file, 'w');
    for (let i = 0; i < 20000; i++)
      fs.writeSync(fd, row(['user', `question number ${i}`], ['assistant', 'answer']) + '\n');
    fs.closeSync(fd);
    const r = await auditDatasetWith(file, prepareTemplate(makeTree({ 't.jinja': chatml() }) + '/t.jinja'));
    assert.equal(r.rows, 20000);
    assert.equal(r.validRows, 20000);
    assert.equal(r.surface!.identicalPrefixShare, 1);
  });
});

describe('hostile datasets: bounded, located, and the rest of the file goes on', () => {
  const ok = (u: string) =>
    JSON.stringify({
      messages: [
        { role: 'user', content: u },
        { role: 'assistant', content: 'fine' },
      ],
    });
  const deep = (n: number) => '['.repeat(n) + '1' + ']'.repeat(n);

  it('a row nested deeper than the position parser allows is a located finding; the other rows are audited', async () => {
    const text = [ok('a'), `{"messages": 5, "x": ${deep(2000)}}`, ok('b')].join('\n') + '\n';
    const r = await auditDataset([text], { template: new ChatTemplate(chatml()) });
    assert.equal(r.rows, 3);
    assert.equal(r.validRows, 2);
    const e = r.errors.find((x) => x.line === 2)!;
    assert.equal(e.code, 'DS002');
    assert.match(e.message, /nests deeper than 512 levels/);
    // a folder audit with such a file completes too
    const dir = makeTree({ 'm/chat_template.jinja': chatml(), 'd.jsonl': text });
    const a = await auditFolder(dir);
    assert.ok(a.findings.some((f) => f.code === 'DS002' && f.line === 2));
  });

  it('a UTF-8 byte order mark is dropped (row 1 is audited) and reported; UTF-16 files get one clear finding', async () => {
    const bom = await auditDataset([Buffer.from('\ufeff' + ok('a') + '\n' + ok('b') + '\n', 'utf8')], {
      template: new ChatTemplate(chatml()),
    });
    assert.equal(bom.validRows, 2);
    assert.deepEqual(
      bom.errors.map((e) => [e.code, e.severity, e.line]),
      [['DS009', 'warning', 1]],
    );
    const le = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(ok('a') + '\n' + ok('b') + '\n', 'utf16le')]);
    const be = Buffer.from(le.subarray(2)).swap16();
    for (const [buf, name] of [
      [le, 'little'],
      [le.subarray(2), 'little'],
      [be, 'big'],
    ] as const) {
      const r = await auditDataset([buf]);
      assert.equal(r.rows, 0);
      assert.deepEqual(
        r.errors.map((e) => e.code),
        ['DS009'],
      );
      assert.match(r.errors[0].message, new RegExp(`UTF-16 ${name}-endian; JSONL must be UTF-8`));
    }
  });

  it('more distinct system prompts than the caches hold: counts stop at the cap, the report says so, every row is audited', async () => {
    const n = SURFACE_LIMITS.distinct + 500;
    const rows = Array.from({ length: n }, (_, i) =>
      JSON.stringify({
        messages: [
          { role: 'system', content: `You are assistant ${i}.` },
          { role: 'user', content: 'hi' },
          { role: 'assistant', content: 'yo' },
        ],
      }),
    );
    const r = await auditDataset([rows.join('\n') + '\n'], { template: new ChatTemplate(chatml()) });
    assert.equal(r.validRows, n);
    assert.equal(r.surface!.distinctPrefixes, SURFACE_LIMITS.distinct);
    assert.deepEqual(r.surface!.capped, { distinct: SURFACE_LIMITS.distinct, rowsUntracked: 500 });
    assert.ok(r.findings.some((f) => f.code === 'DS106'));
  });

  it('a 50 MB line is audited as one row (its query tokens estimated from its head)', async () => {
    const tok = lenml('qwen3');
    const p = prepareTemplate(tok);
    const big = JSON.stringify({
      messages: [
        { role: 'user', content: 'hello '.repeat(9_000_000) },
        { role: 'assistant', content: 'ok' },
      ],
    });
    const r = await auditDataset([big + '\n'], {
      template: p.template,
      tokenizer: p.tokenizer,
      renderOptions: renderOptions(p),
    });
    assert.equal(r.validRows, 1);
    assert.ok(r.surface!.medianQueryTokens! >= 9_000_000, String(r.surface!.medianQueryTokens));
  });
});

describe('rows with their own system prompts (persona sets)', () => {
  // what a frame is when rendered in full, row by row, against what the audit derives from one render per turn
  // shape with the row's system text put in place: equal on every row, for real templates that write the system
  // text verbatim, trim it (Llama 3.x) or fold it into the first user turn (Gemma 3)
  const systems = [
    'You are a pirate.',
    '  Padded with spaces and a newline.\n',
    'Quotes: "double" and \'single\', braces {{ x }} {% y %}, <b>markup</b> & amp',
    'Line one\nLine two\n\nLine four',
    'Unicode: café, 你好, emoji 🙂, nbsp\u00a0end',
    '\u3000ideographic space around\u3000',
    'x',
    'Mentions tools and <|im_start|> tokens',
    'Persona 9: the tenth, past the checked ones.',
    ' Persona 10 with a leading space',
  ];
  for (const model of ['qwen3', 'qwen2_5', 'llama3_1', 'llama3_2', 'gemma3', 'deepseek_v3', 'internlm2'] as const) {
    it(`${model}: every row's frame is the one a full render gives`, () => {
      const p = prepareTemplate(lenml(model));
      const options = { ...renderOptions(p), kwargs: { enable_thinking: false } };
      const frames = new SystemFrames(p.template!, options);
      for (const [i, system] of systems.entries()) {
        for (const turns of [1, 2]) {
          const messages = [{ role: 'system', content: system }];
          for (let t = 0; t < turns; t++)
            messages.push({ role: 'user', content: `question ${i}.${t}` }, { role: 'assistant', content: 'answer' });
          const shape = messages.map((m) => m.role).join(',');
          assert.deepEqual(
            { ...frames.frame(messages, system, shape), systemCopies: 0 },
            { ...renderFrame(p.template!, messages, options), systemCopies: 0 },
            `${model}, system ${JSON.stringify(system)}, ${turns} turn(s)`,
          );
        }
      }
    });
  }

  it('a file where every row has its own system prompt: each prefix counted, the postfix shared by all', async () => {
    const dir = tempDir();
    const data = path.join(dir, 'personas.jsonl');
    const rows = Array.from({ length: 300 }, (_, i) =>
      JSON.stringify({
        messages: [
          { role: 'system', content: `You are persona ${i}.` },
          { role: 'user', content: 'Hi' },
          { role: 'assistant', content: 'Hello' },
        ],
      }),
    );
    fs.writeFileSync(data, rows.join('\n'));
    const r = await auditDatasetWith(data, prepareTemplate(lenml('llama3_1')));
    assert.equal(r.surface!.distinctPrefixes, 300);
    assert.equal(r.surface!.identicalPostfixShare, 1);
  });
});
