/**
 * Whether two tokenizer.json files give the same token ids, decided by content rather than bytes: a finetuned
 * checkpoint re-saved with a `truncation` or `padding` block, another key order or another `version` is the same
 * tokenizer. What decides ids is compared (model: vocabulary and merges; added tokens; normalizer; pre-tokenizer;
 * post-processor); where they differ, an example string whose ids differ is found and reported.
 */
import { FILE_LIMITS, readTextChecked } from './files';
import { LoadedTokenizer } from './tokenizer';

type Json = Record<string, unknown>;

const SAMPLES = [
  'Hello, world!',
  ' The quick brown fox jumps over the lazy dog.',
  'café naïve 日本語 😀',
  '1234567 3.14',
  '\n\n  \t x',
  'I feel bored. What should I do?',
];

/** Key order and `merges` as "a b" strings or ["a", "b"] pairs do not change ids. */
function canonical(v: unknown): unknown {
  if (Array.isArray(v))
    return v.map((x) =>
      Array.isArray(x) && x.length === 2 && x.every((y) => typeof y === 'string') ? `${x[0]} ${x[1]}` : canonical(x),
    );
  if (v && typeof v === 'object') {
    const out: Json = {};
    for (const k of Object.keys(v as Json).sort()) out[k] = canonical((v as Json)[k]);
    return out;
  }
  return v;
}

function idParts(t: Json): Record<string, unknown> {
  const added = ((t.added_tokens as Json[] | undefined) ?? []).map((a) => ({
    id: a.id,
    content: a.content,
    special: a.special ?? false,
    lstrip: a.lstrip ?? false,
    rstrip: a.rstrip ?? false,
    normalized: a.normalized ?? null,
    single_word: a.single_word ?? false,
  }));
  added.sort((x, y) => Number(x.id) - Number(y.id));
  return {
    model: canonical(t.model ?? null),
    added_tokens: canonical(added),
    normalizer: canonical(t.normalizer ?? null),
    pre_tokenizer: canonical(t.pre_tokenizer ?? null),
    post_processor: canonical(t.post_processor ?? null),
  };
}

/** Texts worth trying: tokens whose id differs, merged pairs present in only one side, added tokens, samples. */
function candidates(a: Json, b: Json, tokA: LoadedTokenizer): string[] {
  const out: string[] = [];
  const vocabA = ((a.model as Json | undefined)?.vocab ?? {}) as Record<string, number>;
  const vocabB = ((b.model as Json | undefined)?.vocab ?? {}) as Record<string, number>;
  if (typeof vocabA === 'object' && !Array.isArray(vocabA)) {
    for (const [tok, id] of Object.entries(vocabA)) {
      if (vocabB[tok] !== id) out.push(tokA.decode([id]));
      if (out.length >= 20) break;
    }
  }
  const merges = (t: Json) =>
    new Set(
      (((t.model as Json | undefined)?.merges ?? []) as unknown[]).map((m) =>
        Array.isArray(m) ? m.join(' ') : String(m),
      ),
    );
  const ma = merges(a);
  const mb = merges(b);
  let n = 0;
  for (const m of ma) {
    if (mb.has(m)) continue;
    const id = vocabA[m.replace(' ', '')];
    if (typeof id === 'number') out.push(tokA.decode([id]));
    if (++n >= 20) break;
  }
  for (const t of [
    ...((a.added_tokens as Json[] | undefined) ?? []),
    ...((b.added_tokens as Json[] | undefined) ?? []),
  ])
    if (typeof t.content === 'string') out.push(t.content);
  return [...out.filter((x) => x.length > 0), ...SAMPLES];
}

export interface TokenizerDifference {
  /** Which parts differ (model, added_tokens, normalizer, pre_tokenizer, post_processor). */
  parts: string[];
  /** A text whose ids differ, with both id lists; undefined when no tried text shows a difference. */
  example?: { text: string; a: number[]; b: number[] };
}

/** undefined when the two files tokenize alike (by content); else what differs and an example. */
export function tokenizerDifference(fileA: string, fileB: string): TokenizerDifference | undefined {
  const a = JSON.parse(readTextChecked(fileA, FILE_LIMITS.tokenizer)) as Json;
  const b = JSON.parse(readTextChecked(fileB, FILE_LIMITS.tokenizer)) as Json;
  const pa = idParts(a);
  const pb = idParts(b);
  const parts = Object.keys(pa).filter((k) => JSON.stringify(pa[k]) !== JSON.stringify(pb[k]));
  if (parts.length === 0) return undefined;
  const tokA = LoadedTokenizer.fromFiles(fileA);
  const tokB = LoadedTokenizer.fromFiles(fileB);
  for (const text of candidates(a, b, tokA)) {
    const x = tokA.ids(text);
    const y = tokB.ids(text);
    if (x.length !== y.length || x.some((id, i) => id !== y[i])) return { parts, example: { text, a: x, b: y } };
  }
  return { parts };
}
