// Property-based tests (fast-check) over what a workspace or an unlucky user hands the product: generated chat
// templates, JSONL rows, association files and run-folder contents. For every case: no uncaught exception, every
// failure located (file, line and column from 1), and bounded time. Seeds are fixed, so the runs are deterministic;
// the number of cases per property is printed.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { auditDataset } from '../../src/domain/dataset/audit';
import { readResults, type ResultProblem } from '../../src/app/eval/run';
import type { Finding } from '../../src/domain/findings';
import { associate, prepareTemplate } from '../../src/app/audits';
import { ChatTemplate } from '../../src/domain/template/render';
import { makeTree, tempDir } from '../helpers';

const RUNS = { templates: 1000, rows: 1000, associations: 500, runFolders: 500 };
const SEED = 20261128;

function located(f: Finding, file?: string): void {
  assert.ok(f.line >= 1 && f.column >= 1 && f.endLine >= f.line, `unlocated finding ${JSON.stringify(f)}`);
  if (file) assert.equal(f.file, file);
}

/** Template text from real Jinja pieces, well-formed or not: tags, loops, filters, member access, raise_exception. */
const templatePiece = fc.oneof(
  fc.constantFrom(
    '{% for m in messages %}',
    '{% endfor %}',
    '{% if add_generation_prompt %}',
    '{% if messages[0].role == "system" %}',
    '{% else %}',
    '{% endif %}',
    '{{ m.content }}',
    '{{ m["role"] }}',
    '{{ messages[0].content | trim }}',
    '{{ bos_token }}',
    '<|im_start|>',
    '<|im_end|>\n',
    '{% set x = messages | length %}',
    '{{ x * 3 }}',
    '{{ raise_exception("no system role") }}',
    '{% for i in range(n) %}',
    '{{ loop.index }}',
    '{{',
    '}}',
    '{%',
    '%}',
    '{# note #}',
    "{{ '\\n' }}",
  ),
  fc.string({ maxLength: 12 }),
);
const templateText = fc.array(templatePiece, { maxLength: 25 }).map((xs) => xs.join(''));

describe('fuzzing (fast-check)', () => {
  it(`chat templates: ${RUNS.templates} generated templates audit without throwing, every finding located`, {
    timeout: 120_000,
  }, () => {
    const dir = tempDir();
    let n = 0;
    fc.assert(
      fc.property(templateText, (text) => {
        const file = path.join(dir, `t${n++}.jinja`);
        fs.writeFileSync(file, text);
        const p = prepareTemplate(file);
        for (const f of p.findings) located(f, file);
      }),
      { numRuns: RUNS.templates, seed: SEED },
    );
    console.log(`# fuzz: ${n} templates`);
  });

  it(`JSONL rows: ${RUNS.rows} generated files of JSON values and garbage lines, every problem at a line and column`, {
    timeout: 120_000,
  }, async () => {
    const template = new ChatTemplate(
      "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
    );
    const message = fc.record({
      role: fc.constantFrom('system', 'user', 'assistant', 'tool', 'human', 'gpt', ''),
      content: fc.oneof(
        fc.string(),
        fc.constant(null),
        fc.integer(),
        fc.array(fc.record({ type: fc.constant('text'), text: fc.string() }), { maxLength: 2 }),
      ),
    });
    const row = fc.oneof(
      fc.record({ messages: fc.array(message, { maxLength: 5 }) }).map((r) => JSON.stringify(r)),
      fc
        .record({
          conversations: fc.array(fc.record({ from: fc.constantFrom('human', 'gpt', 'system'), value: fc.string() }), {
            maxLength: 4,
          }),
        })
        .map((r) => JSON.stringify(r)),
      fc.json(),
      fc.string({ maxLength: 40 }),
      fc.constant('{"messages": [{"role": "user", "content": "unterminated'),
    );
    let cases = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(row, { maxLength: 12 }), fc.boolean(), async (rows, crlf) => {
        cases++;
        const text = rows.join(crlf ? '\r\n' : '\n');
        const r = await auditDataset([text], { template, file: 'fuzz.jsonl' });
        assert.ok(r.rows <= rows.length + 1);
        for (const e of r.errors) assert.ok(e.line >= 1 && e.column >= 1, JSON.stringify(e));
        for (const f of r.findings) located(f, 'fuzz.jsonl');
      }),
      { numRuns: RUNS.rows, seed: SEED },
    );
    console.log(`# fuzz: ${cases} JSONL files`);
  });

  it(`association files: ${RUNS.associations} generated .piggyback.json files never throw; a refused entry is located in the file`, {
    timeout: 60_000,
  }, () => {
    const root = makeTree({ 'models/m/chat_template.jinja': '{{ messages[0].content }}', 'data/d.jsonl': '' });
    const entry = fc.oneof(
      fc.constantFrom('models/m', '../x', '/etc', 'models/../../y', '', '.', 'models/m/../m'),
      fc.string({ maxLength: 20 }),
    );
    const content = fc.oneof(
      fc
        .dictionary(fc.constantFrom('data/d.jsonl', 'other.jsonl', ''), entry)
        .map((d) => JSON.stringify({ datasets: d }, null, 2)),
      fc.json().map((j) => j),
      fc.string({ maxLength: 60 }),
    );
    let cases = 0;
    fc.assert(
      fc.property(content, (text) => {
        cases++;
        fs.writeFileSync(path.join(root, '.piggyback.json'), text);
        const a = associate(path.join(root, 'data/d.jsonl'), root, [path.join(root, 'models/m')]);
        if (a.refused) located(a.refused, path.join(root, '.piggyback.json'));
        if (a.template && a.source === 'workspace file')
          assert.ok(path.resolve(a.template).startsWith(root), a.template);
      }),
      { numRuns: RUNS.associations, seed: SEED },
    );
    console.log(`# fuzz: ${cases} association files`);
  });

  it(`run folders: ${RUNS.runFolders} generated results.jsonl contents read without throwing; each left-out line is named`, {
    timeout: 60_000,
  }, () => {
    const good = (i: number) =>
      JSON.stringify({
        key: `p${i % 3}|base`,
        run: 'r1',
        probe: `p${i % 3}`,
        category: null,
        condition: 'base',
        klToBase: 0.5,
        logprobAligned: null,
        logprobMisaligned: null,
        margin: null,
        generation: 'x',
        samples: [{ text: 'x', seed: null }],
      });
    const line = fc.oneof(
      fc.nat(20).map(good),
      fc.json(),
      fc.string({ maxLength: 30 }),
      fc.constant(''),
      fc.nat(5).map((i) => good(i).replace('"r1"', '"r2"')),
      fc.nat(5).map((i) => good(i).slice(0, 25)),
    );
    let cases = 0;
    fc.assert(
      fc.property(fc.array(line, { maxLength: 15 }), fc.boolean(), (lines, torn) => {
        cases++;
        const out = tempDir();
        fs.writeFileSync(path.join(out, 'results.jsonl'), lines.join('\n') + (torn ? '' : '\n'));
        const problems: ResultProblem[] = [];
        const results = readResults(out, problems, 'r1');
        assert.equal(new Set(results.map((r) => r.key)).size, results.length, 'no key twice');
        assert.ok(
          results.every((r) => r.run === 'r1'),
          "only rows carrying this run's id",
        );
        for (const p of problems) assert.ok(p.line >= 1 && p.line <= lines.length && p.message.length > 0);
        fs.rmSync(out, { recursive: true, force: true });
      }),
      { numRuns: RUNS.runFolders, seed: SEED },
    );
    console.log(`# fuzz: ${cases} run folders`);
  });
});
