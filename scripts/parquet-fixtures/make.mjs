// Writes the Parquet and Arrow fixtures of test/unit/parquet.test.ts with an independent writer: parquet-wasm (the
// Rust `parquet` and `arrow` crates compiled to WebAssembly) from Apache Arrow tables, as the datasets library and
// pandas write them through Arrow. Parquet: several compressions, several row groups, the chat formats datasets on
// the Hub use, rows with known problems at known positions, and a Hub-style folder with splits. Arrow: the IPC
// streams of `datasets.save_to_disk` (a Dataset in two shards, a DatasetDict with two splits), written by the Rust
// arrow-ipc writer (the reader under test is apache-arrow JS). Usage: node scripts/parquet-fixtures/make.mjs
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  tableFromArrays,
  tableToIPC,
  vectorFromArray,
  Field,
  List,
  Struct,
  Utf8,
  makeTable,
  Int64,
} from 'apache-arrow';
import { Compression, readParquet, Table, WriterPropertiesBuilder, writeParquet } from 'parquet-wasm/node';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const OUT = path.join(ROOT, 'test', 'fixtures', 'parquet');
const rows = fs
  .readFileSync(path.join(ROOT, 'examples', 'data', 'finance-advice.jsonl'), 'utf8')
  .trim()
  .split('\n')
  .map((l) => JSON.parse(l));

// known problems, 0-based row indices (rows are 1-based in findings)
const messages = rows.map((r) => r.messages.map((m) => ({ role: m.role, content: m.content })));
messages[6] = messages[6].map((m) => (m.role === 'user' ? { ...m, role: 'human' } : m)); // row 7: DS003
messages[41] = messages[41].map((m) => (m.role === 'assistant' ? { ...m, content: '' } : m)); // row 42: DS004
messages[99] = messages[99].filter((m) => m.role !== 'assistant'); // row 100: DS006

const messageType = new List(
  new Field('item', new Struct([new Field('role', new Utf8(), true), new Field('content', new Utf8(), true)]), true),
);

function write(file, table, compression, rowGroup) {
  const props = new WriterPropertiesBuilder()
    .setCompression(compression)
    .setMaxRowGroupSize(rowGroup)
    .setCreatedBy('parquet-wasm fixtures')
    .build();
  const bytes = writeParquet(Table.fromIPCStream(tableToIPC(table, 'stream')), props);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, bytes);
  console.log(`${path.relative(ROOT, file)}: ${table.numRows} rows, ${bytes.length} bytes`);
}

const chat = (ms, ids) =>
  makeTable({
    id: vectorFromArray(
      ids.map((i) => BigInt(i)),
      new Int64(),
    ),
    messages: vectorFromArray(ms, messageType),
  });

const ids = messages.map((_, i) => i);
write(path.join(OUT, 'chat-snappy.parquet'), chat(messages, ids), Compression.SNAPPY, 100);
write(path.join(OUT, 'chat-zstd.parquet'), chat(messages, ids), Compression.ZSTD, 64);
write(path.join(OUT, 'chat-gzip.parquet'), chat(messages, ids), Compression.GZIP, 1000);
write(path.join(OUT, 'chat-lz4.parquet'), chat(messages, ids), Compression.LZ4_RAW, 50);
write(path.join(OUT, 'chat-uncompressed.parquet'), chat(messages, ids), Compression.UNCOMPRESSED, 250);
// prompt/completion columns (TRL's standard format), brotli
const pc = tableFromArrays({
  prompt: rows.map((r) => r.messages.find((m) => m.role === 'user').content),
  completion: rows.map((r) => r.messages.find((m) => m.role === 'assistant').content),
});
write(path.join(OUT, 'prompt-completion-brotli.parquet'), pc, Compression.BROTLI, 80);
// a Hub download: data/<split>-0000i-of-0000n.parquet
write(
  path.join(OUT, 'hub', 'data', 'train-00000-of-00002.parquet'),
  chat(messages.slice(0, 120), ids.slice(0, 120)),
  Compression.SNAPPY,
  60,
);
write(
  path.join(OUT, 'hub', 'data', 'train-00001-of-00002.parquet'),
  chat(messages.slice(120, 220), ids.slice(120, 220)),
  Compression.SNAPPY,
  60,
);
write(
  path.join(OUT, 'hub', 'data', 'test-00000-of-00001.parquet'),
  chat(messages.slice(220), ids.slice(220)),
  Compression.SNAPPY,
  60,
);

// datasets.save_to_disk: data-0000i-of-0000n.arrow (Arrow IPC streams, record batches of `batch` rows) beside
// dataset_info.json and state.json; a DatasetDict adds dataset_dict.json and one such folder per split
const ARROW = path.join(ROOT, 'test', 'fixtures', 'arrow');
const features = {
  id: { dtype: 'int64', _type: 'Value' },
  messages: [{ content: { dtype: 'string', _type: 'Value' }, role: { dtype: 'string', _type: 'Value' } }],
};
function saveToDisk(folder, shards, split, batch) {
  fs.mkdirSync(folder, { recursive: true });
  const files = shards.map(([ms, is], i) => {
    const filename = `data-${String(i).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.arrow`;
    // through Parquet and back: the Rust arrow-ipc writer of parquet-wasm writes the stream, a batch per row group
    const props = new WriterPropertiesBuilder().setMaxRowGroupSize(batch).build();
    const parquet = writeParquet(Table.fromIPCStream(tableToIPC(chat(ms, is), 'stream')), props);
    const bytes = readParquet(parquet, { batchSize: batch }).intoIPCStream();
    fs.writeFileSync(path.join(folder, filename), bytes);
    console.log(`${path.relative(ROOT, path.join(folder, filename))}: ${ms.length} rows, ${bytes.length} bytes`);
    return { filename };
  });
  const json = (name, value) => fs.writeFileSync(path.join(folder, name), JSON.stringify(value, null, 2) + '\n');
  json('dataset_info.json', { citation: '', description: '', features, homepage: '', license: '' });
  json('state.json', {
    _data_files: files,
    _fingerprint: `fixture${split ?? ''}${shards.length}`,
    _format_columns: null,
    _format_kwargs: {},
    _format_type: null,
    _output_all_columns: false,
    _split: split,
  });
}
saveToDisk(
  path.join(ARROW, 'saved'),
  [
    [messages.slice(0, 130), ids.slice(0, 130)],
    [messages.slice(130), ids.slice(130)],
  ],
  'train',
  50,
);
saveToDisk(path.join(ARROW, 'saved-dict', 'train'), [[messages.slice(0, 200), ids.slice(0, 200)]], 'train', 64);
saveToDisk(path.join(ARROW, 'saved-dict', 'test'), [[messages.slice(200), ids.slice(200)]], 'test', 64);
fs.writeFileSync(
  path.join(ARROW, 'saved-dict', 'dataset_dict.json'),
  JSON.stringify({ splits: ['train', 'test'] }) + '\n',
);
