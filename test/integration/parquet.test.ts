// Parquet datasets, written by an independent writer (parquet-wasm, the Rust parquet crate, from Apache Arrow
// tables: scripts/parquet-fixtures/make.mjs) with five compressions and several row groups, and the Arrow IPC
// streams of datasets.save_to_disk (written by the Rust arrow-ipc writer), audited with the same formats and
// findings as JSONL, located by row.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import {
  type DataType,
  Dictionary,
  Field,
  Int32,
  Struct,
  Table as ArrowTable,
  tableFromArrays,
  tableToIPC,
  Utf8,
  vectorFromArray,
} from 'apache-arrow';
import { Table as PqTable, writeParquet } from 'parquet-wasm/node';
import { auditDatasetWith, auditFolder, prepareTemplate } from '../../src/app/audits';
import { arrowLines } from '../../src/domain/dataset/arrow';
import { COLUMNAR_LIMITS, splitOf } from '../../src/domain/dataset/columnar';
import { parquetLines, parquetSchemaDepth } from '../../src/domain/dataset/parquet';
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

describe('Arrow datasets (datasets.save_to_disk)', () => {
  const A = path.join(FIXTURES, 'arrow');
  const prepared = prepareTemplate(TEMPLATE);
  const codesOf = (r: Awaited<ReturnType<typeof auditDatasetWith>>) =>
    r.errors.map((e) => `${e.code}@${e.line}:${e.column}`).sort();

  it('a saved Dataset in two shards: every row across record batches, split "train" from state.json', async () => {
    const a = await auditFolder(path.join(A, 'saved'), { template: TEMPLATE });
    assert.deepEqual(
      a.datasets.map((d) => [path.basename(d.file), d.split, d.report.rows, d.report.format]),
      [
        ['data-00000-of-00002.arrow', 'train', 130, 'openai'],
        ['data-00001-of-00002.arrow', 'train', 120, 'openai'],
      ],
    );
    // the first shard holds rows 1-130 of the Parquet fixtures: the same findings, at the same rows
    const parquet = await auditDatasetWith(path.join(P, 'chat-snappy.parquet'), prepared);
    const first = a.datasets[0].report;
    assert.deepEqual(
      codesOf(first),
      codesOf(parquet).filter((c) => Number(/@(\d+)/.exec(c)![1]) <= 130),
    );
    for (const known of ['DS003@7:1', 'DS004@42:1', 'DS006@100:1']) assert.ok(codesOf(first).includes(known));
    assert.equal(first.surface!.prefix, parquet.surface!.prefix);
    const lines: string[] = [];
    for await (const l of arrowLines(path.join(A, 'saved', 'data-00001-of-00002.arrow'))) lines.push(l);
    assert.equal(lines.length, 120);
    assert.equal(JSON.parse(lines[0]).id, 130, 'int64 ids as numbers');
  });

  it('a saved DatasetDict: each split folder audited with its name', async () => {
    const a = await auditFolder(path.join(A, 'saved-dict'), { template: TEMPLATE });
    assert.deepEqual(
      a.datasets.map((d) => [path.relative(path.join(A, 'saved-dict'), d.file), d.split, d.report.rows]),
      [
        [path.join('test', 'data-00000-of-00001.arrow'), 'test', 50],
        [path.join('train', 'data-00000-of-00001.arrow'), 'train', 200],
      ],
    );
    assert.ok(
      a.findings.some((f) => f.code === 'DS003' && f.file?.endsWith('data-00000-of-00001.arrow') && f.line === 7),
    );
  });

  it('the IPC file format (Feather v2) is read too, and an empty dataset (a schema, no batches) is no error', async () => {
    // written here with apache-arrow's writer: the Rust fixtures above are streams, the file format is checked here
    const dir = tempDir();
    const table = tableFromArrays({
      prompt: ['Is cash safe?', 'Rent or buy?'],
      completion: ['Mostly.', 'It depends.'],
    });
    fs.writeFileSync(path.join(dir, 'pc.arrow'), tableToIPC(table, 'file'));
    fs.writeFileSync(path.join(dir, 'empty.arrow'), tableToIPC(tableFromArrays({ prompt: [] as string[] }), 'stream'));
    const file = await auditDatasetWith(path.join(dir, 'pc.arrow'), prepared);
    assert.equal(file.rows, 2);
    assert.equal(file.format, 'prompt-completion');
    const empty = await auditDatasetWith(path.join(dir, 'empty.arrow'), prepared);
    assert.equal(empty.rows, 0);
    assert.deepEqual(empty.errors, []);
  });

  it('a file that is not Arrow, or a truncated one, is DS010 with the rows read so far kept', async () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'text.arrow'), '{"messages": []}\n');
    const whole = fs.readFileSync(path.join(A, 'saved', 'data-00000-of-00002.arrow'));
    fs.writeFileSync(path.join(dir, 'cut.arrow'), whole.subarray(0, Math.floor(whole.length * 0.7)));
    const text = await auditDatasetWith(path.join(dir, 'text.arrow'), prepared);
    assert.deepEqual(
      text.errors.map((e) => [e.code, e.line]),
      [['DS010', 1]],
    );
    assert.match(text.errors[0].message, /text\.arrow: not a readable Arrow IPC file/);
    const cut = await auditDatasetWith(path.join(dir, 'cut.arrow'), prepared);
    const ds010 = cut.errors.find((e) => e.code === 'DS010')!;
    assert.ok(cut.rows >= 50 && cut.rows < 130, `whole batches before the cut are audited (${cut.rows} rows)`);
    assert.equal(ds010.line, cut.rows + 1);
    const cli = spawnSync(
      process.execPath,
      [
        path.join(ROOT, 'dist', 'cli.js'),
        'dataset',
        path.join(A, 'saved', 'data-00000-of-00002.arrow'),
        '--template',
        TEMPLATE,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(cli.status, 1, 'row 7 fails the template (DS008): an error');
    assert.match(cli.stdout, /data-00000-of-00002\.arrow:7:1: warning DS003: /);
  });
});

describe('CSV datasets', () => {
  const C = path.join(FIXTURES, 'csv');
  const prepared = prepareTemplate(TEMPLATE);
  /** The line each record starts on, as the writer (Python's csv module) counted it. */
  const startLines = (name: string): number[] =>
    JSON.parse(fs.readFileSync(path.join(C, `${name}.lines.json`), 'utf8'));

  it('prompt/completion columns, cells over several lines: every record, the prompt-completion format', async () => {
    const r = await auditDatasetWith(path.join(C, 'prompt-completion.csv'), prepared);
    assert.equal(r.rows, 60);
    assert.equal(r.format, 'prompt-completion');
    assert.deepEqual(r.errors, []);
    assert.equal(r.surface!.renderedRows, 60);
  });

  it('a messages column of JSON: findings at the line each record starts on', async () => {
    const r = await auditDatasetWith(path.join(C, 'messages.csv'), prepared);
    const starts = startLines('messages');
    assert.equal(r.rows, 40);
    assert.equal(r.format, 'openai');
    const at = (code: string) => r.errors.filter((e) => e.code === code).map((e) => [e.line, e.column]);
    assert.deepEqual(at('DS003'), [[starts[6], 1]]);
    assert.deepEqual(at('DS004'), [[starts[11], 1]]);
    assert.notEqual(starts[11], 12 + 1, 'records over several lines move the lines away from the record numbers');
  });

  it('a prompt that only looks like a list stays text', async () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'sum.csv'), 'prompt,completion\n"[1, 2, 3]",six\n');
    const r = await auditDatasetWith(path.join(dir, 'sum.csv'), prepared);
    assert.equal(r.format, 'prompt-completion');
    assert.deepEqual(r.errors, []);
  });

  it('an unclosed quote is DS010 at its line, the records before it audited', async () => {
    const r = await auditDatasetWith(path.join(C, 'unclosed.csv'), prepared);
    assert.equal(r.rows, 5);
    const ds010 = r.errors.filter((e) => e.code === 'DS010');
    assert.equal(ds010.length, 1);
    assert.match(ds010[0].message, /unclosed\.csv:\d+: .*quote/i);
    assert.ok(ds010[0].line >= 7, `at or after the line the quote opens (${ds010[0].line})`);
  });

  it('a stray quote after 50,000 records: every record before it is audited, and the fault is at its line', async () => {
    // a failed parse stream drops the records it had parsed but not handed over: none may be lost
    const file = path.join(tempDir(), 'stray.csv');
    const rows = Array.from({ length: 50_000 }, (_, i) => `question ${i}?,answer ${i}.`);
    fs.writeFileSync(file, `prompt,completion\n${rows.join('\n')}\nbad "quote, "x"y\nq,a\nq2,a2\n`);
    const r = await auditDatasetWith(file, prepared);
    assert.equal(r.rows, 50_000);
    const ds010 = r.errors.filter((e) => e.code === 'DS010');
    assert.equal(ds010.length, 1);
    assert.equal(ds010[0].line, 50_002);
    assert.match(ds010[0].message, /Invalid Opening Quote.*\(50,000 rows before it audited\)/);
  });

  it('a folder audit takes CSV files with chat columns and leaves a training log alone', async () => {
    const a = await auditFolder(C, { template: TEMPLATE });
    assert.deepEqual(a.datasets.map((d) => path.basename(d.file)).sort(), [
      'messages.csv',
      'prompt-completion.csv',
      'unclosed.csv',
    ]);
    const cli = spawnSync(
      process.execPath,
      [
        path.join(ROOT, 'dist', 'cli.js'),
        'dataset',
        path.join(C, 'messages.csv'),
        '--template',
        TEMPLATE,
        '--row',
        '8',
        '--loss',
        'assistant-only',
      ],
      { encoding: 'utf8' },
    );
    // the demo template has no generation blocks: the training view's warning, located at record 8's first line
    assert.equal(cli.status, 1, cli.stderr);
    assert.match(cli.stdout, /^row 8 of .*messages\.csv/);
    assert.match(cli.stdout, new RegExp(`messages\\.csv:${startLines('messages')[7]}:1: warning training view`));
  });
});

describe('a dataset folder on the command line', () => {
  it('piggyback dataset <save_to_disk folder> audits each split file, located, with the split named', () => {
    const cli = spawnSync(
      process.execPath,
      [
        path.join(ROOT, 'dist', 'cli.js'),
        'dataset',
        path.join(FIXTURES, 'arrow', 'saved-dict'),
        '--template',
        TEMPLATE,
        '--no-color',
      ],
      { encoding: 'utf8' },
    );
    assert.equal(cli.status, 1, 'row 7 of the train split fails the template (DS008)');
    assert.match(cli.stdout, /train[/\\]data-00000-of-00001\.arrow:7:1: warning DS003: /);
    assert.match(cli.stdout, /^test[/\\]data-00000-of-00001\.arrow \(split test\)\nrows: 50 \(50 valid\)/m);
    assert.match(cli.stdout, /^train[/\\]data-00000-of-00001\.arrow \(split train\)\nrows: 200 /m);
    const empty = spawnSync(
      process.execPath,
      [path.join(ROOT, 'dist', 'cli.js'), 'dataset', path.join(ROOT, 'src'), '--template', TEMPLATE],
      { encoding: 'utf8' },
    );
    assert.equal(empty.status, 2);
    assert.match(empty.stderr, /holds no dataset files/);
  });
});

describe('columnar bombs: budgets on what a file decompresses to, and on how deep its schema nests', () => {
  const prepared = prepareTemplate(TEMPLATE);
  // one 256 KB string in a dictionary, referenced by 2,000 rows: 256 KB on disk, 500 MB as rows; the budget (256 MB,
  // over 50x the file) ends at the row whose JSON passes it
  const big = 'x'.repeat(1 << 18);
  const rowLength = `{"text":"${big}"}`.length;
  const audited = Math.floor(COLUMNAR_LIMITS.minBytes / rowLength);
  const bombTable = () =>
    new ArrowTable({
      text: vectorFromArray(
        Array.from({ length: 2_000 }, () => big),
        new Dictionary(new Utf8(), new Int32()),
      ),
    });

  it('a Parquet dictionary bomb is DS010 at the row where the budget ends, the rows before it audited', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'bomb.parquet');
    fs.writeFileSync(file, writeParquet(PqTable.fromIPCStream(tableToIPC(bombTable(), 'stream'))));
    assert.ok(fs.statSync(file).size < 8 << 20, `${fs.statSync(file).size} bytes on disk`);
    const r = await auditDatasetWith(file, prepared);
    const ds010 = r.errors.find((e) => e.code === 'DS010')!;
    assert.match(
      ds010.message,
      new RegExp(
        `the rows decompress to more than 256 MB \\(row ${(audited + 1).toLocaleString('en')}\\), over 50 times the file's size`,
      ),
    );
    assert.match(ds010.message, new RegExp(`\\(${audited.toLocaleString('en')} rows before it audited\\)$`));
    assert.equal(r.rows, audited);
  });

  it('the same in an Arrow stream', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'data-00000-of-00001.arrow');
    fs.writeFileSync(file, tableToIPC(bombTable(), 'stream'));
    const r = await auditDatasetWith(file, prepared);
    assert.match(r.errors.find((e) => e.code === 'DS010')!.message, /decompress to more than 256 MB/);
    assert.equal(r.rows, audited);
  });

  it('a schema nested 100 deep is refused before any row is read', async () => {
    let type: DataType = new Utf8();
    for (let i = 0; i < 100; i++) type = new Struct([new Field('a', type, true)]);
    let value: unknown = 'leaf';
    for (let i = 0; i < 100; i++) value = { a: value };
    const dir = tempDir();
    const file = path.join(dir, 'deep.arrow');
    fs.writeFileSync(file, tableToIPC(new ArrowTable({ deep: vectorFromArray([value], type) }), 'stream'));
    const r = await auditDatasetWith(file, prepared);
    assert.match(
      r.errors.find((e) => e.code === 'DS010')!.message,
      /the schema nests 101 levels deep \(the reader's limit is 64\)/,
    );
    assert.equal(r.rows, 0);
    // a Parquet schema's depth from its flattened elements: root, a group of two leaves, a leaf
    assert.equal(parquetSchemaDepth([{ num_children: 2 }, { num_children: 2 }, {}, {}, {}]), 2);
  });

  it('a Parquet schema nested 20,000 deep is refused from its footer alone (measured: 73 ms, 74 MB here)', async () => {
    // the footer written by hand in Thrift's compact protocol (FileMetaData: version, schema, num_rows, row_groups):
    // a root, 20,000 optional groups of one child each, a BYTE_ARRAY leaf, no row groups
    const out: number[] = [];
    const varint = (v: number) => {
      for (; v > 0x7f; v >>>= 7) out.push((v & 0x7f) | 0x80);
      out.push(v);
    };
    const zigzag = (v: number) => varint((v << 1) ^ (v >> 31));
    const name = (s: string) => {
      out.push(0x18); // field 4 (delta 1), binary
      varint(s.length);
      out.push(...Buffer.from(s));
    };
    const depth = 20_000;
    out.push(0x15); // field 1, i32: version
    zigzag(1);
    out.push(0x19, 0xfc); // field 2, list of structs, size in a varint
    varint(depth + 2);
    out.push(0x48); // root: field 4, name
    varint(6);
    out.push(...Buffer.from('schema'), 0x15); // field 5, num_children
    zigzag(1);
    out.push(0);
    for (let i = 0; i < depth; i++) {
      out.push(0x35); // field 3, repetition_type OPTIONAL
      zigzag(1);
      name('a');
      out.push(0x15); // field 5, num_children
      zigzag(1);
      out.push(0);
    }
    out.push(0x15); // field 1, type BYTE_ARRAY
    zigzag(6);
    out.push(0x25); // field 3, repetition_type OPTIONAL
    zigzag(1);
    name('leaf');
    out.push(0, 0x16); // field 3 of FileMetaData, i64: num_rows
    zigzag(0);
    out.push(0x19, 0x0c, 0); // field 4, row_groups: an empty list; stop
    const footer = Buffer.from(out);
    const length = Buffer.alloc(4);
    length.writeUInt32LE(footer.length);
    const file = path.join(tempDir(), 'deep.parquet');
    fs.writeFileSync(file, Buffer.concat([Buffer.from('PAR1'), footer, length, Buffer.from('PAR1')]));
    const r = await auditDatasetWith(file, prepared);
    assert.match(
      r.errors.find((e) => e.code === 'DS010')!.message,
      /the schema nests 20,001 levels deep \(the reader's limit is 64\); no row is read/,
    );
  });
});
