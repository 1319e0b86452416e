// The {% generation %} marker fix on real templates of six families, checked by Jinja2 itself: every case of
// test/fixtures/generation/expected.json was rendered offline by Debian's python3-jinja2 as transformers renders a
// template with generation tags (scripts/generation-fixtures/make.py), the original and the variant the product
// writes. The variant must render what the original renders, byte for byte, and Jinja2's spans must be the
// product's: what assistant-only training will train on.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { generationMarkerFix, generationProofMarkdown } from '../../src/app/generationMarkers';
import { AUDIT_CLOCK } from '../../src/domain/template/audit';
import { addGenerationMarkers, proveGenerationMarkers } from '../../src/domain/template/generation';
import { ChatTemplate } from '../../src/domain/template/render';
import { parseTemplateText, type TemplateSource } from '../../src/domain/template/source';
import { FIXTURES, ROOT } from '../helpers';

type Render = { text: string; spans: string[] } | { error: string };
const expected = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'generation', 'expected.json'), 'utf8')) as {
  families: Record<
    string,
    {
      source: string;
      marked_sha256: string | null;
      refused: string | null;
      cases: { case: string; original: Render; marked: Render | null }[];
    }
  >;
};

function sourceOf(rel: string): TemplateSource {
  const file = path.join(ROOT, rel);
  const source = parseTemplateText(file, fs.readFileSync(file, 'utf8'));
  // a bare .jinja file has no tokenizer_config beside it: the Llama 3 tokens, as the Jinja2 renders had them
  if (rel.endsWith('.jinja')) source.specialTokens = { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' };
  return source;
}

describe('{% generation %} markers, proved and checked by Jinja2 on real templates', () => {
  const families = Object.entries(expected.families);
  it('covers at least five model families', () => {
    const family = (name: string) => name.replace(/[-.\d].*$/, '');
    assert.ok(new Set(families.map(([n]) => family(n))).size >= 5, families.map(([n]) => n).join(', '));
  });

  for (const [name, f] of families) {
    it(`${name}: the variant is proved, renders as Jinja2 renders the original, and marks what Jinja2 marks`, () => {
      const source = sourceOf(f.source);
      const fix = generationMarkerFix(source);
      assert.equal(fix.refused, undefined, fix.refused);
      // the fixture was made from this very variant (regenerate it when the rewrite changes)
      assert.equal(createHash('sha256').update(fix.marked!).digest('hex'), f.marked_sha256);
      assert.ok(fix.proof!.ok);
      assert.equal(fix.proof!.results.length, f.cases.length);
      const original = new ChatTemplate(source.text);
      for (const [i, c] of f.cases.entries()) {
        const ours = fix.proof!.results[i];
        assert.equal(ours.case, c.case);
        if ('error' in c.original) {
          assert.ok(ours.refused, `${c.case}: Jinja2 refused, the product rendered`);
          assert.deepEqual(c.marked, c.original);
          continue;
        }
        assert.ok(c.marked && 'text' in c.marked);
        // Jinja2 renders the variant as it renders the original, and the product renders what Jinja2 renders
        assert.equal(c.marked.text, c.original.text, `${c.case}: Jinja2's renders differ`);
        const rendered = original.render(ours.messages, {
          addGenerationPrompt: ours.addGenerationPrompt,
          specialTokens: source.specialTokens,
          now: AUDIT_CLOCK,
        });
        assert.equal(rendered, c.original.text, `${c.case}: the product's render is not Jinja2's`);
        assert.deepEqual(ours.spans, c.marked.spans, `${c.case}: spans`);
      }
      // each assistant turn in the spans, with its end of turn; never the user's question
      const two = f.cases.find((c) => c.case === 'system and two exchanges')!.marked as { spans: string[] };
      const joined = two.spans.join('');
      assert.ok(joined.includes('The capital of France is Paris.') && joined.includes('Rome is the capital of Italy.'));
      assert.ok(!joined.includes('What is the capital of France?') && !joined.includes('You are a careful assistant.'));
      assert.ok(joined.length > 'The capital of France is Paris.Rome is the capital of Italy.'.length);
    });
  }

  it('refuses a template whose assistant turns have no end of turn to mark, and says why in the proof', () => {
    const plain = '{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}';
    const fix = generationMarkerFix(parseTemplateText('plain.jinja', plain));
    assert.equal(fix.marked, undefined);
    assert.match(fix.refused!, /failed its proof on 6 of 8 conversations/);
    assert.match(generationProofMarkdown('plain.jinja', fix), /end of turn is outside the spans/);
  });

  it('refuses a template that has markers already, and one whose content is not printed by a plain concatenation', () => {
    const marked = addGenerationMarkers(
      parseTemplateText(
        'x.jinja',
        fs.readFileSync(path.join(ROOT, 'test/fixtures/llama-3.1-chat-template.jinja'), 'utf8'),
      ).text,
    ).text;
    assert.match(generationMarkerFix(parseTemplateText('x.jinja', marked)).refused!, /markers already/);
    const filtered = "{% for m in messages %}{{ ('<s>' ~ m.content ~ '</s>') }}{% endfor %}";
    assert.match(generationMarkerFix(parseTemplateText('y.jinja', filtered)).refused!, /add the markers by hand/);
  });

  it('the proof fails a variant that renders one byte differently, a span over the header, and a span over the question', () => {
    const chatml =
      "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    const proved = proveGenerationMarkers(chatml, addGenerationMarkers(chatml).text);
    assert.ok(proved.ok);
    const extraSpace = chatml.replace("'<|im_end|>\\n'", "'<|im_end|> \\n'");
    const changed = proveGenerationMarkers(chatml, addGenerationMarkers(extraSpace).text);
    assert.equal(changed.ok, false);
    const diff = changed.results.find((r) => !r.identical)!.difference!;
    assert.equal(
      diff.marked.slice(diff.marked.indexOf('<|im_end|>'), diff.marked.indexOf('<|im_end|>') + 11),
      '<|im_end|> ',
    );
    // the whole turn, header included, inside the span
    const header = chatml.replace(
      "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}",
      "{% if m.role == 'assistant' %}{% generation %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}",
    );
    const h = proveGenerationMarkers(chatml, header);
    assert.ok(h.results.every((r) => r.identical));
    assert.ok(h.results.some((r) => r.problems.some((p) => /starts inside its header/.test(p))));
    // every turn marked, the user's too
    const all = chatml.replace(
      "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}",
      "{{ '<|im_start|>' + m.role + '\\n' }}{% generation %}{{ m.content + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}",
    );
    const u = proveGenerationMarkers(chatml, all);
    assert.ok(u.results.some((r) => r.problems.some((p) => /the user message is inside a span/.test(p))));
    assert.ok(u.results.some((r) => r.problems.some((p) => /a span in a conversation with no assistant turn/.test(p))));
  });
});
