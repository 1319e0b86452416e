// One eval request for the CLI and the editor: the probes and conditions it plans, what it refuses, the shards it
// splits into, and the defaults package.json's settings must share.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { GENERAL_PROBES } from '../../src/app/eval/probes';
import { EVAL_DEFAULTS, EvalRequestError, parseShard, planEval, shardOfProbe } from '../../src/app/eval/request';
import { ROOT, tempDir } from '../helpers';

const PROBES = path.join(ROOT, 'examples', 'organisms', 'probes.jsonl');

describe('eval requests', () => {
  it('plans the general set by default, probe files instead of it, and the conditions with the layer sweep', () => {
    const general = planEval({});
    assert.equal(general.probes.length, GENERAL_PROBES.length);
    assert.equal(general.description, 'general');
    const files = planEval({ probeFiles: [PROBES], extra: { treft: '/x' }, layerSweep: true });
    assert.equal(files.probes.length, fs.readFileSync(PROBES, 'utf8').trim().split('\n').length);
    const labels = files.conditions(4).map((c) => c.label);
    assert.ok(labels.includes('treft') && labels.includes('finetuned+prefix'), labels.join());
    assert.equal(files.conditions(4).filter((c) => c.sweep).length, 4 + 2, 'four single layers and two halves');
    assert.equal(
      planEval({ perturbationTrials: 0 })
        .conditions(4)
        .some((c) => c.perturb),
      false,
    );
    assert.deepEqual(general.options.perturb, { trials: EVAL_DEFAULTS.perturbationTrials });
  });

  it('refuses a probe id twice, a dataset twice, an extra named like a condition, no probes at all', () => {
    const dir = tempDir();
    const copy = path.join(dir, 'again.jsonl');
    fs.copyFileSync(PROBES, copy);
    assert.throws(() => planEval({ probeFiles: [PROBES, copy] }), /probe id ".*" appears twice among the probes/);
    const other = path.join(dir, 'other.jsonl');
    fs.writeFileSync(other, '{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}\n');
    assert.throws(
      () => planEval({ otherDatasets: [other, path.join(dir, '.', 'other.jsonl')] }),
      (e: Error) => e instanceof EvalRequestError && /other\.jsonl is given twice/.test(e.message),
    );
    assert.throws(() => planEval({ extra: { 'finetuned+prefix': '/x' } }), EvalRequestError);
    assert.throws(() => planEval({ general: false }), /no probes to run/);
  });

  it('splits probes into shards by a hash of their ids: every probe in one shard, stable when probes are added', () => {
    const ids = Array.from({ length: 400 }, (_, i) => `probe-${i}`);
    const n = 4;
    const counts = Array(n).fill(0);
    for (const id of ids) counts[shardOfProbe(id, n)]++;
    // a fair split: each share within a third of an even one
    for (const c of counts) assert.ok(c > (ids.length / n) * 0.66 && c < (ids.length / n) * 1.33, String(counts));
    // adding probes (or reordering them) moves none of the old ones
    const before = new Map(ids.map((id) => [id, shardOfProbe(id, n)]));
    for (const id of [...ids.reverse(), 'new-1', 'new-2'])
      if (before.has(id)) assert.equal(shardOfProbe(id, n), before.get(id));
    const plans = [0, 1, 2].map((index) => planEval({ probeFiles: [PROBES], shard: { index, count: 3 } }));
    const all = planEval({ probeFiles: [PROBES] });
    assert.deepEqual(plans.flatMap((p) => p.probes.map((x) => x.id)).sort(), all.probes.map((x) => x.id).sort());
    assert.deepEqual(
      plans[1].shardOf?.probes.ids,
      all.probes.map((x) => x.id),
      'each shard knows the whole set',
    );
    assert.match(plans[1].description, /shard 1\/3$/);
  });

  it('reads i/N with i from 0 (as Slurm array and Kubernetes Indexed Job indices are), refusing the rest', () => {
    assert.deepEqual(parseShard('0/4'), { index: 0, count: 4 });
    assert.deepEqual(parseShard('3/4'), { index: 3, count: 4 });
    for (const bad of ['4/4', '1', '-1/2', '0/0', 'a/b', '1/2/3'])
      assert.throws(() => parseShard(bad), EvalRequestError);
  });

  it("package.json's piggyback.eval and judge settings default to the app's defaults", () => {
    const props = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).contributes.configuration
      .properties as Record<string, { default?: unknown }>;
    const pairs: [string, unknown][] = [
      ['piggyback.eval.runsFolder', EVAL_DEFAULTS.runsFolder],
      ['piggyback.eval.maxNewTokens', EVAL_DEFAULTS.maxNewTokens],
      ['piggyback.eval.temperature', EVAL_DEFAULTS.temperature],
      ['piggyback.eval.samplesPerProbe', EVAL_DEFAULTS.samples],
      ['piggyback.eval.seed', EVAL_DEFAULTS.seed],
      ['piggyback.eval.perturbationTrials', EVAL_DEFAULTS.perturbationTrials],
      ['piggyback.eval.layerSweep', EVAL_DEFAULTS.layerSweep],
      ['piggyback.judge.concurrency', EVAL_DEFAULTS.judgeConcurrency],
      ['piggyback.judge.timeoutSeconds', EVAL_DEFAULTS.judgeTimeoutSeconds],
    ];
    for (const [key, value] of pairs) assert.equal(props[key]?.default, value, key);
    // and every eval setting the manifest contributes is one of them
    const evalKeys = Object.keys(props).filter(
      (k) => k.startsWith('piggyback.eval.') && k !== 'piggyback.eval.extraCheckpoints',
    );
    assert.deepEqual(
      evalKeys.sort(),
      pairs
        .map(([k]) => k)
        .filter((k) => k.startsWith('piggyback.eval.'))
        .sort(),
    );
  });
});
