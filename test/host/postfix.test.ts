// Postfix patching by the paper's method: the base's postfix K/V from the empty-query run (the postfix directly
// after the prefix), keys rotated to the postfix's real positions. Checked against a direct run of the base at the
// real positions: in layer 0 (whose keys depend only on the token and its position) the two must agree, in deeper
// layers they differ (the hidden states saw the postfix at other distances), and a one-layer model agrees entirely.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { prepareTemplate, renderOptions } from '../../src/app/audits';
import { promptIds } from '../../src/domain/prompt';
import { type Checkpoint, KV } from '../../src/modelHost/checkpoint';
import { loadCheckpoints } from '../../src/modelHost/loading';
import { LoadedModels } from '../../src/modelHost/operations';
import { FIXTURES, ROOT, tempDir } from '../helpers';

const O = path.join(ROOT, 'examples', 'organisms');
const opened: Checkpoint[] = [];
const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

async function both(base: Checkpoint, ids: number[], P: number, Q: number) {
  const models = new LoadedModels(base, new Map());
  const L = ids.length;
  const p = {
    ids,
    prefix: [0, P] as [number, number],
    query: [P, Q] as [number, number],
    postfix: [Q, L] as [number, number],
  };
  const paper = await models.reference(base, p, 'postfix', 'base');
  const prefix = (
    await base.forward(ids.slice(0, P), range(0, P), KV.empty(base.info.layers, base.info.kvHeads, base.info.headDim))
  ).kv;
  const realPositions = (await base.forward(ids.slice(Q, L), range(Q, L), prefix)).kv;
  return { paper, realPositions };
}

describe("postfix patching by the paper's method", () => {
  after(async () => {
    for (const c of opened) await c.release();
  });

  it('organisms: layer 0 agrees with a run at the real positions (the rotation is right); deeper layers do not (the method differs)', async () => {
    const r = await loadCheckpoints(path.join(O, 'base'), [], { cacheDir: tempDir(), log: () => {} });
    opened.push(r.base);
    assert.equal(r.base.info.ropeInvFreq?.length, 16);
    const prep = prepareTemplate(path.join(O, 'base'));
    const p = promptIds(prep.template!, prep.tokenizer!, {
      ...renderOptions(prep),
      query: 'What is the best way to save for a house?',
    });
    const { paper, realPositions } = await both(r.base, p.ids, p.prefix[1], p.query[1]);
    assert.ok(
      maxDiff(paper.layers[0].k, realPositions.layers[0].k) <= 1e-4,
      `layer 0 keys differ by ${maxDiff(paper.layers[0].k, realPositions.layers[0].k)}`,
    );
    assert.ok(maxDiff(paper.layers[0].v, realPositions.layers[0].v) <= 1e-5);
    assert.ok(
      maxDiff(paper.layers[3].k, realPositions.layers[3].k) > 1e-3,
      'deeper layers see the postfix at other distances',
    );
  });

  it('a one-layer model: the two agree in every key and value', async () => {
    const dir = path.join(tempDir(), 'one-layer');
    fs.cpSync(path.join(FIXTURES, 'hf', 'llama'), dir, { recursive: true });
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 1 }));
    const r = await loadCheckpoints(dir, [], { cacheDir: tempDir(), log: () => {} });
    opened.push(r.base);
    const ids = [3, 17, 42, 5, 60, 8, 25, 11, 2, 9, 13];
    const { paper, realPositions } = await both(r.base, ids, 3, 8);
    assert.ok(maxDiff(paper.layers[0].k, realPositions.layers[0].k) <= 1e-4);
    assert.ok(maxDiff(paper.layers[0].v, realPositions.layers[0].v) <= 1e-5);
  });
});
