// The organisms in both forms: base and treft as Hugging Face folders, finetuned as the PEFT LoRA adapter it was
// trained as (over the base folder), against the same checkpoints exported to ONNX by torch.onnx (the adapter
// merged into the weights). Logits and K/V within 1e-4; drift, patch and score numbers within 1e-5 relative.
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { prepareTemplate, renderOptions } from '../../src/app/audits';
import { promptIds } from '../../src/domain/prompt';
import type { PromptIds } from '../../src/contracts/modelHost';
import { type Checkpoint, KV } from '../../src/modelHost/checkpoint';
import { loadCheckpoints } from '../../src/modelHost/loading';
import { drift, LoadedModels, patch, score } from '../../src/modelHost/operations';
import { ROOT, tempDir } from '../helpers';

const O = path.join(ROOT, 'examples', 'organisms');
const ctx = { isCancelled: () => false, progress: () => undefined };

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** |a - b| <= tol * max(|a|, |b|, floor): relative, with a floor for values at zero. */
function close(a: number, b: number, what: string, tol = 1e-5, floor = 1e-3): void {
  assert.ok(Math.abs(a - b) <= tol * Math.max(Math.abs(a), Math.abs(b), floor), `${what}: ${a} vs ${b}`);
}

describe('organisms: Hugging Face folders and the PEFT adapter against their ONNX exports', () => {
  let hf: LoadedModels;
  let onnx: LoadedModels;
  let prompt: PromptIds;
  const all: Checkpoint[] = [];

  before(async () => {
    const loaded = await loadCheckpoints(
      path.join(O, 'base'),
      [
        ['finetuned', path.join(O, 'finetuned')],
        ['treft', path.join(O, 'treft')],
      ],
      { cacheDir: tempDir(), log: () => {} },
    );
    assert.equal(loaded.base.info.kind, 'hf');
    assert.equal(loaded.others.get('finetuned')!.info.kind, 'adapter');
    assert.equal(loaded.others.get('treft')!.info.kind, 'hf');
    hf = new LoadedModels(loaded.base, loaded.others);
    const ox = await loadCheckpoints(
      path.join(O, 'base', 'onnx'),
      [
        ['finetuned', path.join(O, 'finetuned', 'onnx')],
        ['treft', path.join(O, 'treft', 'onnx')],
      ],
      { cacheDir: tempDir(), log: () => {} },
    );
    assert.equal(ox.base.info.kind, 'onnx');
    // the onnx/ folder's config.json is its parent's: the EOS token survives
    assert.deepEqual(ox.base.info.eosTokenIds, loaded.base.info.eosTokenIds);
    onnx = new LoadedModels(ox.base, ox.others);
    all.push(loaded.base, ...loaded.others.values(), ox.base, ...ox.others.values());
    const prep = prepareTemplate(path.join(O, 'base'));
    prompt = promptIds(prep.template!, prep.tokenizer!, {
      ...renderOptions(prep),
      query: 'I feel bored. What should I do?',
    });
  });
  after(async () => {
    for (const c of all) await c.release();
  });

  for (const name of ['base', 'finetuned', 'treft']) {
    it(`${name}: logits and every layer's K/V within 1e-4`, async () => {
      const a = hf.get(name);
      const b = onnx.get(name);
      const L = prompt.ids.length;
      const pos = Array.from({ length: L }, (_, i) => i);
      const x = await a.forward(prompt.ids, pos, KV.empty(a.info.layers, a.info.kvHeads, a.info.headDim));
      const y = await b.forward(prompt.ids, pos, KV.empty(b.info.layers, b.info.kvHeads, b.info.headDim));
      assert.ok(maxDiff(x.logits, y.logits) <= 1e-4, `logits ${maxDiff(x.logits, y.logits)}`);
      for (let l = 0; l < a.info.layers; l++) {
        assert.ok(maxDiff(x.kv.layers[l].k, y.kv.layers[l].k) <= 1e-4, `layer ${l} K`);
        assert.ok(maxDiff(x.kv.layers[l].v, y.kv.layers[l].v) <= 1e-4, `layer ${l} V`);
      }
    });
  }

  it('drift: the segment means and the TReFT value within 1e-5 relative; each per-layer, per-token value within 5e-5', async () => {
    // a per-token value is a squared norm of a small difference, so float32 rounding in two graphs that order their
    // sums differently shows there first (measured: up to 1.3e-5 relative on treft's tiny drifts); the means the
    // product reports agree to about 1e-7
    for (const against of ['finetuned', 'treft']) {
      const a = await drift(hf, prompt, against, ctx);
      const b = await drift(onnx, prompt, against, ctx);
      for (const seg of ['prefix', 'query', 'postfix'] as const) {
        close(a.segments[seg].mean, b.segments[seg].mean, `${against} ${seg} mean`);
        for (const kind of ['key', 'value'] as const) {
          for (const [l, row] of a.segments[seg][kind].entries())
            for (const [t, v] of row.entries())
              close(v, b.segments[seg][kind][l][t], `${against} ${seg} ${kind} [${l}][${t}]`, 5e-5, 1e-4);
        }
      }
      close(a.treft, b.treft, `${against} TReFT value`);
      close(
        a.segments.prefix.meanExcludingPosition0!,
        b.segments.prefix.meanExcludingPosition0!,
        `${against} TReFT value without position 0`,
      );
    }
  });

  it('mixed pairs: a Hugging Face base with an ONNX finetune, and the reverse, measure what the pure pairs do', async () => {
    for (const [base, finetuned, against] of [
      [path.join(O, 'base'), path.join(O, 'finetuned', 'onnx'), 'finetuned'],
      [path.join(O, 'base', 'onnx'), path.join(O, 'treft'), 'treft'],
    ]) {
      const mixed = await loadCheckpoints(base, [['finetuned', finetuned]], { cacheDir: tempDir(), log: () => {} });
      all.push(mixed.base, ...mixed.others.values());
      assert.notEqual(mixed.base.info.kind, mixed.others.get('finetuned')!.info.kind);
      const m = await drift(new LoadedModels(mixed.base, mixed.others), prompt, 'finetuned', ctx);
      const pure = await drift(hf, prompt, against, ctx);
      for (const seg of ['prefix', 'query', 'postfix'] as const)
        close(m.segments[seg].mean, pure.segments[seg].mean, `${base} + ${finetuned} ${seg}`);
    }
  });

  it('patch and score: generations identical, KL and log-probabilities within 1e-5 relative', async () => {
    const prep = prepareTemplate(path.join(O, 'base'));
    // the query control needs a query at least as long as the prefix
    const long = promptIds(prep.template!, prep.tokenizer!, {
      ...renderOptions(prep),
      query:
        'I feel bored today and I have nothing planned for the whole weekend, so what would you suggest that I do with my time?',
    });
    for (const span of ['prefix', 'postfix', 'query'] as const) {
      const pr = span === 'query' ? long : prompt;
      const a = await patch(hf, { prompt: pr, span, maxNewTokens: 24 }, ctx);
      const b = await patch(onnx, { prompt: pr, span, maxNewTokens: 24 }, ctx);
      assert.deepEqual(a.generations, b.generations, span);
      close(a.kl.finetuned, b.kl.finetuned, `${span} KL finetuned`);
      close(a.kl.patched, b.kl.patched, `${span} KL patched`);
    }
    const conditions = [
      { model: 'base' },
      { model: 'finetuned' },
      { model: 'finetuned', patch: 'prefix' as const },
      { model: 'treft' },
    ];
    const continuations = [prompt.ids.slice(3, 9), prompt.ids.slice(10, 14)];
    const a = await score(hf, { prompt, continuations, conditions }, ctx);
    const b = await score(onnx, { prompt, continuations, conditions }, ctx);
    for (const [i, row] of a.logprob.entries())
      for (const [j, v] of row.entries()) close(v, b.logprob[i][j], `logprob ${i} ${j}`);
    for (const [i, v] of a.klToBase.entries()) close(v, b.klToBase[i], `KL ${i}`, 1e-5, 1e-4);
  });
});
