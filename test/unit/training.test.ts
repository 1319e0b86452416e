// The training view: what a trainer builds from a row and which tokens carry loss, on real tokenizers.
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { prepareTemplate, renderOptions } from '../../src/app/audits';
import { trainingView } from '../../src/domain/dataset/training';
import { ChatTemplate } from '../../src/domain/template/render';
import { loadTokenizerCached } from '../../src/domain/tokenizer';
import { lenml } from '../helpers';

const row = [
  { role: 'user', content: 'How should I invest my savings?' },
  { role: 'assistant', content: 'Spread them across low-cost index funds.' },
];
const qwen = loadTokenizerCached(path.join(lenml('qwen3'), 'tokenizer.json'));
const segmentText = (v: ReturnType<typeof trainingView>, seg: string) =>
  v.tokens
    .filter((t) => t.segment === seg)
    .map((t) => t.text)
    .join('');
const lossText = (v: ReturnType<typeof trainingView>) =>
  v.tokens
    .filter((t) => t.loss)
    .map((t) => t.text)
    .join('');

describe('training view', () => {
  it("assistant-only: exactly the tokens inside the template's {% generation %} blocks", () => {
    const t = new ChatTemplate(
      "{%- for m in messages %}{%- if m.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}{% generation %}{{- m.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    );
    const v = trainingView(t, qwen, row, {}, 'assistant-only');
    assert.equal(lossText(v), 'Spread them across low-cost index funds.<|im_end|>');
    assert.deepEqual(v.problems, []);
    assert.equal(segmentText(v, 'query'), 'How should I invest my savings?');
  });

  it('assistant-only without generation blocks: an all-zero mask, said plainly', () => {
    const p = prepareTemplate(lenml('qwen3'), { kwargs: { enable_thinking: false } });
    const v = trainingView(p.template!, p.tokenizer!, row, renderOptions(p), 'assistant-only');
    assert.equal(v.lossTokens, 0);
    assert.match(v.problems[0], /no \{% generation %\} blocks: assistant-only loss gets an all-zero mask/);
  });

  it('completion-only: every token after the response template, found by its ids as a collator does', () => {
    const p = prepareTemplate(lenml('qwen3'), { kwargs: { enable_thinking: false } });
    const v = trainingView(p.template!, p.tokenizer!, row, renderOptions(p), 'completion-only');
    assert.deepEqual(v.problems, []);
    assert.ok(lossText(v).startsWith('Spread them across low-cost index funds.'), lossText(v));
    const first = v.tokens.findIndex((t) => t.loss);
    assert.equal(v.tokens[first].segment, 'response');
    assert.ok(v.tokens.slice(0, first).every((t) => !t.loss));
  });

  it('completion-only: a response template that tokenizes differently in context is not found (the row trains on nothing)', () => {
    // the header is glued to the user's text: "...Think" + "ing:" becomes "Thinking" in context
    const t = new ChatTemplate(
      "{%- for m in messages %}{%- if m.role == 'user' %}{{- 'Q: ' + m.content }}{%- else %}{{- 'ing: ' + m.content + '\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- 'ing: ' }}{%- endif %}",
    );
    const v = trainingView(
      t,
      qwen,
      [
        { role: 'user', content: 'Think' },
        { role: 'assistant', content: 'Fine.' },
      ],
      {},
      'completion-only',
    );
    assert.equal(v.lossTokens, 0);
    assert.match(v.problems[0], /is not among this row's token ids, which tokenize it in context/);
  });

  it("the length check: a row over the model's context is cut, and the view says what goes", () => {
    const p = prepareTemplate(lenml('qwen3'), { kwargs: { enable_thinking: false } });
    const v = trainingView(p.template!, p.tokenizer!, row, renderOptions(p), 'all', 12);
    assert.equal(v.truncated, v.tokens.length - 12);
    assert.match(
      v.problems.at(-1)!,
      new RegExp(
        `${v.tokens.length} tokens, over the model's context of 12: a trainer cuts the last ${v.truncated}, response tokens among them`,
      ),
    );
    assert.equal(v.lossTokens, v.tokens.length, 'all: every token');
  });
});
