// Property-based tests (fast-check) over what a workspace or an unlucky user hands the product: generated chat
// templates, JSONL rows, association files and run-folder contents. For every case: no uncaught exception, every
// failure located (file, line and column from 1), and bounded time. Seeds are fixed, so the runs are deterministic;
// the number of cases per property is printed.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { auditDataset } from '../../src/domain/dataset/audit';
import { readResults, type ResultProblem } from '../../src/app/eval/run';
import type { Finding } from '../../src/domain/findings';
import { associate, prepareTemplate } from '../../src/app/audits';
import { ChatTemplate } from '../../src/domain/template/render';
import { auditDatasetWith } from '../../src/app/audits';
import { CheckpointError } from '../../src/domain/checkpointError';
import { readAdapterConfig } from '../../src/domain/hfConfig';
import { RegexRefusedError } from '../../src/domain/regexSafety';
import { readSafetensorsHeader, SafetensorsError } from '../../src/domain/safetensors';
import { matchesTarget } from '../../src/modelHost/hf/peft';
import { externalDataFiles, readInitializer } from '../../src/modelHost/onnxInitializers';
import { FIXTURES, makeTree, ROOT, tempDir } from '../helpers';

const RUNS = {
  templates: 1000,
  rows: 1000,
  associations: 500,
  runFolders: 500,
  columnar: 150,
  csv: 300,
  safetensors: 500,
  adapters: 500,
};
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

  /** A valid file's bytes, changed as a damaged download or a hostile writer would: bytes flipped, cut, inserted. */
  const damaged = (bytes: Buffer) => {
    // positions anywhere in the file, without fast-check's bias towards small numbers (the header)
    const at = fc.noBias(fc.nat({ max: bytes.length }));
    return fc
      .record({
        flips: fc.array(fc.tuple(at, fc.integer({ min: 1, max: 255 })), { maxLength: 8 }),
        cut: fc.option(at, { nil: undefined }),
        insert: fc.option(fc.tuple(at, fc.uint8Array({ maxLength: 64 })), { nil: undefined }),
      })
      .map(({ flips, cut, insert }) => {
        let b = Buffer.from(bytes);
        for (const [at, x] of flips) b[at % b.length] ^= x;
        if (insert) {
          const at = insert[0] % (b.length + 1);
          b = Buffer.concat([b.subarray(0, at), Buffer.from(insert[1]), b.subarray(at)]);
        }
        if (cut !== undefined) b = b.subarray(0, cut % (b.length + 1));
        return b;
      });
  };

  for (const [kind, fixture] of [
    ['Parquet', path.join(FIXTURES, 'parquet', 'chat-snappy.parquet')],
    ['Parquet (gzip)', path.join(FIXTURES, 'parquet', 'chat-gzip.parquet')],
    ['Arrow', path.join(FIXTURES, 'arrow', 'saved', 'data-00000-of-00002.arrow')],
  ] as const) {
    it(`${kind}: ${RUNS.columnar} damaged files end in rows and located DS010 findings, never an uncaught exception`, {
      timeout: 300_000,
    }, async () => {
      const dir = tempDir();
      const prepared = prepareTemplate(path.join(ROOT, 'examples', 'chatml-demo'));
      const ext = path.extname(fixture);
      let n = 0;
      // a reader's failure that surfaces later, unhandled, would take a CLI process down: none may
      const stray: unknown[] = [];
      const onStray = (e: unknown) => stray.push(e);
      process.on('unhandledRejection', onStray);
      after(() => process.off('unhandledRejection', onStray));
      await fc.assert(
        fc.asyncProperty(damaged(fs.readFileSync(fixture)), async (bytes) => {
          const file = path.join(dir, `case-${n++}${ext}`);
          fs.writeFileSync(file, bytes);
          const r = await auditDatasetWith(file, prepared);
          await new Promise((done) => setImmediate(done));
          assert.deepEqual(stray.map(String), [], 'no rejection left unhandled');
          for (const e of r.errors) assert.ok(e.line >= 1 && e.column >= 1, JSON.stringify(e));
          for (const e of r.errors.filter((x) => x.code === 'DS010')) assert.ok(e.message.startsWith(file));
          fs.rmSync(file);
        }),
        { numRuns: RUNS.columnar, seed: SEED },
      );
    });
  }

  it(`CSV: ${RUNS.csv} generated files (quotes, separators, line breaks, headers) audit without throwing, located`, async () => {
    const dir = tempDir();
    const prepared = prepareTemplate(path.join(ROOT, 'examples', 'chatml-demo'));
    const cell = fc.oneof(
      fc.string({ maxLength: 20 }),
      fc.constantFrom('"', '""', '"a,b"', '"line\nbreak"', '\r\n', ',', '"unclosed', '[{"role": "user"}]'),
    );
    const header = fc.constantFrom('prompt,completion', 'messages', 'instruction,output', 'question', 'a,b,c', '');
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        header,
        fc.array(fc.array(cell, { maxLength: 4 }), { maxLength: 20 }),
        fc.constantFrom('\n', '\r\n'),
        async (head, rows, eol) => {
          const file = path.join(dir, `case-${n++}.csv`);
          fs.writeFileSync(file, [head, ...rows.map((r) => r.join(','))].join(eol));
          const r = await auditDatasetWith(file, prepared);
          for (const e of r.errors) assert.ok(e.line >= 1 && e.column >= 1, JSON.stringify(e));
          fs.rmSync(file);
        },
      ),
      { numRuns: RUNS.csv, seed: SEED },
    );
  });

  it(`safetensors headers: ${RUNS.safetensors} generated files are read or refused with SafetensorsError, nothing else`, () => {
    const dir = tempDir();
    const entry = fc.record({
      dtype: fc.constantFrom('F32', 'F16', 'BF16', 'I8', 'F64', 'U8', 'X9', ''),
      shape: fc.array(fc.oneof(fc.nat(8), fc.constant(-1), fc.constant(2 ** 40)), { maxLength: 3 }),
      data_offsets: fc.oneof(
        fc.tuple(fc.nat(64), fc.nat(64)),
        fc.constant([0, 2 ** 60]),
        fc.constant(['a', 1] as unknown as [number, number]),
      ),
    });
    const header = fc.oneof(
      fc.dictionary(fc.string({ maxLength: 6 }), entry, { maxKeys: 4 }),
      fc.jsonValue().map((v) => v as Record<string, unknown>),
    );
    let n = 0;
    fc.assert(
      fc.property(header, fc.nat(128), fc.option(fc.nat(2 ** 20), { nil: undefined }), (h, body, lie) => {
        const json = Buffer.from(JSON.stringify(h) ?? 'null');
        const size = Buffer.alloc(8);
        size.writeBigUInt64LE(BigInt(lie ?? json.length));
        const file = path.join(dir, `case-${n++}.safetensors`);
        fs.writeFileSync(file, Buffer.concat([size, json, Buffer.alloc(body)]));
        try {
          readSafetensorsHeader(file);
        } catch (e) {
          assert.ok(e instanceof SafetensorsError, `${(e as Error).name}: ${(e as Error).message}`);
        }
        fs.rmSync(file);
      }),
      { numRuns: RUNS.safetensors, seed: SEED },
    );
  });

  it(`adapter configs: ${RUNS.adapters} generated adapter_config.json files are read or refused with a CheckpointError naming the file`, () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'adapter_model.safetensors'), '');
    const config = fc.record(
      {
        peft_type: fc.constantFrom('LORA', 'lora', 'IA3', 42, null),
        r: fc.oneof(fc.integer({ min: -2, max: 64 }), fc.constant('8')),
        lora_alpha: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.double()),
        target_modules: fc.oneof(
          fc.array(fc.constantFrom('q_proj', 'v_proj', 'k_proj', ''), { maxLength: 3 }),
          fc.constantFrom('.*\\.(q_proj|v_proj)', '(a+)+$', '(?=q).*', '[', 'all-linear'),
          fc.string({ maxLength: 12 }),
          fc.constant(7),
        ),
        use_dora: fc.boolean(),
        bias: fc.constantFrom('none', 'all', undefined),
        rank_pattern: fc.dictionary(fc.string({ maxLength: 8 }), fc.integer({ min: 1, max: 16 }), { maxKeys: 2 }),
      },
      { requiredKeys: [] },
    );
    const module = fc.constantFrom('model.layers.0.self_attn.q_proj', 'lm_head', `${'a'.repeat(40)}b`);
    fc.assert(
      fc.property(config, module, (c, m) => {
        fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify(c));
        try {
          const read = readAdapterConfig(dir);
          // what the host then matches against each module: a boolean, or a named refusal
          try {
            assert.equal(typeof matchesTarget(read.target_modules, m), 'boolean');
          } catch (e) {
            assert.ok(e instanceof RegexRefusedError, String(e));
          }
        } catch (e) {
          assert.ok(e instanceof CheckpointError, `${(e as Error).name}: ${(e as Error).message}`);
          assert.ok((e as CheckpointError).file.startsWith(dir));
        }
      }),
      { numRuns: RUNS.adapters, seed: SEED },
    );
  });
});

describe('ONNX graphs read for their initializers', () => {
  it('a graph cut anywhere, or damaged bytes, ends in a CheckpointError naming the file, never a hang or a bare error', () => {
    const whole = fs.readFileSync(path.join(ROOT, 'examples', 'organisms', 'base', 'onnx', 'model.onnx'));
    const dir = tempDir();
    let n = 0;
    fc.assert(
      fc.property(
        fc.noBias(fc.nat({ max: whole.length })),
        fc.array(fc.tuple(fc.noBias(fc.nat({ max: whole.length - 1 })), fc.integer({ min: 1, max: 255 })), {
          maxLength: 4,
        }),
        (cut, flips) => {
          const b = Buffer.from(whole.subarray(0, cut));
          for (const [at, x] of flips) if (at < b.length) b[at] ^= x;
          const file = path.join(dir, `case-${n++}.onnx`);
          fs.writeFileSync(file, b);
          try {
            externalDataFiles(file);
            readInitializer(file, (name) => name.includes('embed'));
          } catch (e) {
            assert.ok(e instanceof CheckpointError, `${(e as Error).name}: ${(e as Error).message}`);
            assert.ok((e as CheckpointError).file.startsWith(dir), (e as Error).message);
          }
          fs.rmSync(file);
        },
      ),
      { numRuns: 300, seed: SEED },
    );
  });

  it('external data outside the model folder, or a range past its file, is refused naming the file', () => {
    const dir = makeTree({ 'sub/x.bin': '0123456789abcdef' });
    // a ModelProto with one graph holding one float initializer [4] whose data is external
    const varint = (v: number) => {
      const out: number[] = [];
      while (v >= 0x80) {
        out.push((v & 0x7f) | 0x80);
        v = Math.floor(v / 128);
      }
      out.push(v);
      return Buffer.from(out);
    };
    const field = (no: number, bytes: Buffer) => Buffer.concat([varint(no * 8 + 2), varint(bytes.length), bytes]);
    const entry = (k: string, v: string) =>
      field(13, Buffer.concat([field(1, Buffer.from(k)), field(2, Buffer.from(v))]));
    const tensor = (location: string, length: string) =>
      Buffer.concat([
        varint(1 * 8),
        varint(4),
        varint(2 * 8),
        varint(1),
        field(8, Buffer.from('embed_tokens')),
        entry('location', location),
        entry('offset', '0'),
        entry('length', length),
      ]);
    for (const [location, length, reason] of [
      ['../../outside.bin', '16', /outside the model's folder/],
      ['sub/x.bin', '4096', /bytes 0 to 4096 of a 16-byte file/],
    ] as const) {
      const file = path.join(dir, 'model.onnx');
      fs.writeFileSync(file, field(7, field(5, tensor(location, length))));
      assert.throws(
        () => readInitializer(file, (name) => name === 'embed_tokens'),
        (e: unknown) => e instanceof CheckpointError && reason.test((e as Error).message),
      );
    }
  });
});
