// LensSession's wiring over a fake ModelHost, in milliseconds: what it asks the host (the prompt's ids and segment
// spans from the real template and tokenizer, the span, the token budget, the conditions) and what it makes of the
// answers (tokens decoded per segment, answers without their end-of-turn token, a run folder's rows). The numbers
// themselves are the host's, tested against PyTorch in test/host.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import type { RequestType } from 'vscode-jsonrpc';
import { preparePromptTemplate } from '../../src/app/audits';
import type { ModelHost } from '../../src/app/hostClient';
import { planEval } from '../../src/app/eval/request';
import { readResults } from '../../src/app/eval/run';
import { DEFAULT_MAX_NEW_TOKENS, DEFAULT_QUERY, LensSession } from '../../src/app/session';
import type {
  CheckpointInfo,
  DriftParams,
  GenerateParams,
  LoadResult,
  PatchParams,
  ScoreParams,
} from '../../src/contracts/modelHost';
import { ORGANISMS, tempDir } from '../helpers';

const prompt = preparePromptTemplate(path.join(ORGANISMS, 'base'));
const EOS = prompt.tokenizer.ids('<|im_end|>');

const checkpoint = (folder: string): CheckpointInfo => ({
  folder,
  modelFile: 'model.safetensors',
  kind: 'hf',
  hash: folder.slice(-8).padStart(16, '0'),
  device: 'cpu',
  threads: 1,
  layers: 4,
  kvHeads: 2,
  headDim: 8,
  vocabSize: 512,
  kvType: 'float32',
  hasPositionIds: true,
  eosTokenIds: EOS,
});
const loaded: LoadResult = { base: checkpoint('/fake/base'), finetuned: checkpoint('/fake/finetuned'), extra: {} };

/** A host that records every request and answers from `answer` (by request method). */
function fakeHost(answer: Record<string, (params: unknown) => unknown>) {
  const seen: { method: string; params: unknown }[] = [];
  const host: ModelHost = {
    async request<P, R>(type: RequestType<P, R, void>, params: P): Promise<R> {
      seen.push({ method: type.method, params });
      const a = answer[type.method];
      if (!a) throw new Error(`unexpected request ${type.method}`);
      return a(params) as R;
    },
  };
  return { host, seen };
}

describe('LensSession over a fake model host', () => {
  it("drift sends the query's ids with its segment spans and labels each segment's tokens, decoded", async () => {
    const seg = (n: number) => ({
      positions: [],
      key: [Array(n).fill(0.1)],
      value: [],
      keyCosine: [],
      valueCosine: [],
      mean: n,
      meanExcludingPosition0: null,
    });
    const { host, seen } = fakeHost({
      'piggyback/drift': () => ({
        layers: 4,
        segments: { prefix: seg(1), query: seg(2), postfix: seg(3) },
        position0: null,
        treft: 0.25,
      }),
    });
    const r = await new LensSession(host, loaded, prompt).drift();
    const sent = (seen[0].params as DriftParams).prompt;
    assert.equal(seen.length, 1);
    assert.deepEqual(sent, new LensSession(host, loaded, prompt).promptIds(DEFAULT_QUERY));
    // the query segment decodes back to the query, the prefix ends where the query starts
    assert.equal(r.segments.query.tokens.map((t) => t.text).join(''), DEFAULT_QUERY);
    assert.equal(sent.prefix[1], sent.query[0]);
    assert.equal(r.segments.prefix.tokens.length, sent.prefix[1] - sent.prefix[0]);
    assert.equal(r.treft, 0.25);
    assert.equal(r.query, DEFAULT_QUERY);
  });

  it('patch asks for the span and token budget, and returns answers without the end-of-turn token', async () => {
    const text = (s: string) => [...prompt.tokenizer.ids(s), ...EOS];
    const { host, seen } = fakeHost({
      'piggyback/patch': (p) => ({
        span: (p as PatchParams).span,
        patchedPositions: [0, 1, 2],
        responseIds: text('Go outside.'),
        kl: { finetuned: 0.5, patched: 0.1 },
        klPerPosition: { finetuned: [], patched: [] },
        generations: { base: text('Go outside.'), finetuned: text('Buy crypto.'), patched: text('Read a book.') },
      }),
    });
    const s = new LensSession(host, loaded, prompt);
    const r = await s.patch('hi', 'postfix');
    const sent = seen[0].params as PatchParams;
    assert.equal(sent.span, 'postfix');
    assert.equal(sent.maxNewTokens, DEFAULT_MAX_NEW_TOKENS);
    assert.deepEqual(r.generations, { base: 'Go outside.', finetuned: 'Buy crypto.', patched: 'Read a book.' });
    assert.equal(r.response, 'Go outside.');
    await s.patch('hi', 'prefix', 7);
    assert.equal((seen[1].params as PatchParams).maxNewTokens, 7);
  });

  it("eval asks the host for every condition of the plan and writes one row per probe and condition, with the host's KL", async () => {
    const out = tempDir();
    const probes = path.join(out, 'probes.jsonl');
    fs.writeFileSync(
      probes,
      '{"id":"a","question":"Hi?"}\n{"id":"b","question":"Why?","aligned":"Yes","misaligned":"No"}\n',
    );
    const plan = planEval({ probeFiles: [probes], perturbationTrials: 0, maxNewTokens: 5 });
    const conditions = plan.conditions(loaded.finetuned.layers);
    const { host, seen } = fakeHost({
      'piggyback/generate': () => ({ ids: [...prompt.tokenizer.ids('ok'), ...EOS] }),
      'piggyback/score': (p) => {
        const sp = p as ScoreParams;
        return {
          logprob: sp.conditions.map((_, i) => sp.continuations.map((_, j) => -(i + j))),
          klToBase: sp.conditions.map((_, i) => i / 10),
        };
      },
    });
    const run = await new LensSession(host, loaded, prompt).eval({
      ...plan.options,
      probes: plan.probes,
      conditions,
      out,
    });
    // every probe under every condition, but the query control for a query shorter than the prefix (recorded)
    const leftOut = run.skipped.filter((x) => x.condition);
    assert.deepEqual(
      leftOut.map((x) => x.condition),
      ['finetuned+query', 'finetuned+query'],
    );
    assert.equal(run.computed, 2 * conditions.length - leftOut.length);
    const rows = readResults(out, [], run.manifest.runId);
    assert.equal(rows.length, run.computed);
    const scored = seen.filter((s) => s.method === 'piggyback/score').map((s) => s.params as ScoreParams);
    for (const [i, c] of scored[1].conditions.entries()) {
      const label = conditions.find((x) => x.condition === c)!.label;
      const row = rows.find((r) => r.probe === 'b' && r.condition === label)!;
      assert.equal(row.klToBase, i / 10, label);
      assert.equal(row.margin, -(i + 1) - -(i + 2), 'aligned minus misaligned log-probability');
    }
    assert.equal(rows.find((r) => r.probe === 'a')!.margin, null, 'no references, no margin');
    // the base model's greedy answer is generated once per probe and reused as its sample and the fixed response
    const generates = seen.filter((s) => s.method === 'piggyback/generate').map((s) => s.params as GenerateParams);
    assert.ok(generates.every((g) => g.maxNewTokens === 5));
    assert.equal(generates.filter((g) => g.condition.model === 'base' && !g.condition.patch).length, 2);
    assert.deepEqual(
      scored[0].conditions,
      conditions.filter((c) => c.label !== 'finetuned+query').map((c) => c.condition),
    );
    assert.equal(scored[1].continuations.length, 3, 'the fixed response and the two references');
  });
});
