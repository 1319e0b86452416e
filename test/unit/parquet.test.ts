// Parquet datasets, written by an independent writer (parquet-wasm, the Rust parquet crate, from Apache Arrow
// tables: scripts/parquet-fixtures/make.mjs) with five compressions and several row groups, audited with the same
// formats and findings as JSONL, located by row.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { auditDatasetWith, auditFolder, prepareTemplate } from '../../src/app/audits';
import { parquetLines, splitOf } from '../../src/domain/dataset/parquet';
import { FIXTURES, ROOT, tempDir } from '../helpers';

const P = path.join(FIXTURES, 'parquet');
const TEMPLATE = path.join(ROOT, 'examples', 'chatml-demo');
const JSONL = path.join(ROOT, 'examples', 'data', 'finance-advice.jsonl');
const located = (r: Awaited<ReturnType<typeof auditDatasetWith>>) =>
  r.errors.map((e) => [e.code, e.line, e.column]).sort((a, b) => Number(a[1]) - Number(b[1]));

describe('Parquet datasets', () => {
  const prepared = prepareTemplate(TEMPLATE);

  // the same rows as JSONL, changed as the fixture script changed them (rows 7, 42 and 100)
  const jsonlTwin = () => {
    const rows = fs
      .readFileSync(JSONL, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    type M = { role: string; content: string };
    rows[6].messages = rows[6].messages.map((m: M) => (m.role === 'user' ? { ...m, role: 'human' } : m));
    rows[41].messages = rows[41].messages.map((m: M) => (m.role === 'assistant' ? { ...m, content: '' } : m));
    rows[99].messages = rows[99].messages.filter((m: M) => m.role !== 'assistant');
    const file = path.join(tempDir(), 'twin.jsonl');
    fs.writeFileSync(file, rows.map((r, i) => JSON.stringify({ id: i, messages: r.messages })).join('\n') + '\n');
    return file;
  };

  for (const f of ['chat-snappy', 'chat-zstd', 'chat-gzip', 'chat-lz4', 'chat-uncompressed']) {
    it(`${f}: every row read across its row groups, the findings of its JSONL twin, located by row`, async () => {
      const r = await auditDatasetWith(path.join(P, `${f}.parquet`), prepared);
      assert.equal(r.rows, 250);
      assert.equal(r.format, 'openai');
      const twin = await auditDatasetWith(jsonlTwin(), prepared);
      assert.deepEqual(
        located(r),
        located(twin).map(([code, line]) => [code, line, 1]),
      );
      const codes = located(r).map(([code, line]) => `${code}@${line}`);
      for (const known of ['DS003@7', 'DS004@42', 'DS006@100']) assert.ok(codes.includes(known), codes.join(' '));
    });
  }

  it('the same surface as the JSONL the rows came from', async () => {
    const fromParquet = (await auditDatasetWith(path.join(P, 'chat-zstd.parquet'), prepared)).surface!;
    const fromJsonl = (await auditDatasetWith(JSONL, prepared)).surface!;
    assert.equal(fromParquet.prefix, fromJsonl.prefix);
    assert.equal(fromParquet.prefixTokens, fromJsonl.prefixTokens);
    assert.equal(fromParquet.distinctPrefixes, fromJsonl.distinctPrefixes);
    assert.equal(
      fromParquet.defaultSystemPromptRows,
      fromJsonl.defaultSystemPromptRows - 1,
      'row 100 has no assistant turn',
    );
  });

  it('prompt/completion columns (brotli) are the prompt-completion format', async () => {
    const r = await auditDatasetWith(path.join(P, 'prompt-completion-brotli.parquet'), prepared);
    assert.equal(r.rows, 250);
    assert.equal(r.format, 'prompt-completion');
    assert.deepEqual(r.errors, []);
  });

  it('rows stream one row group at a time, 64-bit integers as numbers', async () => {
    const lines: string[] = [];
    for await (const l of parquetLines(path.join(P, 'chat-lz4.parquet'))) lines.push(l);
    assert.equal(lines.length, 250);
    assert.equal(JSON.parse(lines[6]).id, 6);
    assert.equal(JSON.parse(lines[6]).messages[0].role, 'human');
  });

  it('a file that is not Parquet, or a truncated one, is DS010 with the rows read so far kept', async () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'text.parquet'), '{"messages": []}\n');
    const whole = fs.readFileSync(path.join(P, 'chat-snappy.parquet'));
    fs.writeFileSync(path.join(dir, 'cut.parquet'), whole.subarray(0, whole.length - 100));
    for (const f of ['text.parquet', 'cut.parquet']) {
      const r = await auditDatasetWith(path.join(dir, f), prepared);
      const ds010 = r.errors.find((e) => e.code === 'DS010');
      assert.ok(ds010 && /not a readable Parquet file/.test(ds010.message), JSON.stringify(r.errors));
    }
    const cli = spawnSync(
      process.execPath,
      [path.join(ROOT, 'dist', 'cli.js'), 'dataset', path.join(dir, 'cut.parquet'), '--template', TEMPLATE],
      { encoding: 'utf8' },
    );
    assert.equal(cli.status, 1);
    assert.match(cli.stdout, /cut\.parquet:1:1: error DS010: /);
  });

  it('a Hub download: every shard audited with its split name', async () => {
    const a = await auditFolder(path.join(P, 'hub'), { template: TEMPLATE });
    assert.deepEqual(
      a.datasets.map((d) => [path.basename(d.file), d.split, d.report.rows]),
      [
        ['test-00000-of-00001.parquet', 'test', 30],
        ['train-00000-of-00002.parquet', 'train', 120],
        ['train-00001-of-00002.parquet', 'train', 100],
      ],
    );
    assert.ok(
      a.findings.some((f) => f.code === 'DS003' && f.file?.endsWith('train-00000-of-00002.parquet') && f.line === 7),
    );
    assert.equal(splitOf('data/validation-00003-of-00010.parquet'), 'validation');
    assert.equal(splitOf('train/part.jsonl'), 'train');
    assert.equal(splitOf('finance-advice.jsonl'), undefined);
  });
});
