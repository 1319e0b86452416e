// The eval summary's arithmetic on hand-made rows (the piggyback share, EM-F1) and the judge's bounded parallelism.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { defaultConditions } from '../../src/app/eval/run';
import { inParallel } from '../../src/app/parallel';
import { emF1, summarise } from '../../src/app/eval/summary';

describe('piggyback share', () => {
  it('is the summed KL a patch removes over the finetuned shift, on probes outside the finetuning domain', () => {
    const r = (probe: string, condition: string, klToBase: number, category: string | null = null) => ({
      key: `${probe}|${condition}`,
      probe,
      category,
      condition,
      klToBase,
      logprobAligned: null,
      logprobMisaligned: null,
      margin: null,
      generation: '',
      samples: [],
    });
    const results = [
      r('a', 'finetuned', 1.0),
      r('a', 'finetuned+prefix', 0.2),
      r('b', 'finetuned', 3.0),
      r('b', 'finetuned+prefix', 1.8),
      r('c', 'finetuned', 5.0, 'in-domain'),
      r('c', 'finetuned+prefix', 5.0, 'in-domain'),
    ];
    const s = summarise(results, defaultConditions());
    // (0.8 + 1.2) / (1 + 3) = 0.5; the in-domain probe is left out
    assert.equal(s.piggybackShare.prefix!.share, 0.5);
    assert.equal(s.piggybackShare.prefix!.probes, 2);
    assert.equal(s.piggybackShare.postfix, null);
  });
});

describe('inParallel (judge requests)', () => {
  it('keeps at most `limit` calls in flight, covers every item once, and stops new work after a failure', async () => {
    let inFlight = 0;
    let most = 0;
    const seen: number[] = [];
    await inParallel([...Array(20).keys()], 3, async (i) => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise((r) => setTimeout(r, 1 + (i % 4)));
      seen.push(i);
      inFlight--;
    });
    assert.equal(most, 3);
    assert.deepEqual(
      seen.sort((a, b) => a - b),
      [...Array(20).keys()],
    );
    const started: number[] = [];
    await assert.rejects(
      inParallel([...Array(20).keys()], 2, async (i) => {
        started.push(i);
        await new Promise((r) => setTimeout(r, 2));
        if (i === 3) throw new Error('refused');
      }),
      /refused/,
    );
    assert.ok(started.length <= 5, `stopped early: ${started.length} started`);
  });
});

describe('EM-F1', () => {
  it("is the paper's harmonic mean of task learning (100 - in-domain alignment) and general alignment", () => {
    assert.equal(emF1(80, 20), 80);
    assert.equal(emF1(90, 100), 0, 'learned nothing in-domain');
    assert.ok(Math.abs(emF1(47.5, 27.7)! - (2 * 72.3 * 47.5) / (72.3 + 47.5)) < 1e-12);
    assert.equal(emF1(null, 20), null);
  });
});
