// ONNX export layouts real exporters write, each built from the organisms (test/layouts.ts) and loaded as a user
// would give it: the numbers (drift, KL, generations) must be the organisms' own.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pairTemplateSource, prepareTemplate, renderOptions } from '../../src/app/audits';
import { promptIds } from '../../src/domain/prompt';
import type { PromptIds } from '../../src/contracts/modelHost';
import { type Checkpoint, KV } from '../../src/modelHost/checkpoint';
import { CheckpointError } from '../../src/modelHost/errors';
import { loadCheckpoints } from '../../src/modelHost/loading';
import { drift, LoadedModels, patch } from '../../src/modelHost/operations';
import { tempDir } from '../helpers';
import { organismExport, ORGANISMS } from '../layouts';

const ctx = { isCancelled: () => false, progress: () => undefined };
const opened: Checkpoint[] = [];
const load = async (base: string, treft: string, modelFile?: string) => {
  const r = await loadCheckpoints(base, [['finetuned', treft]], { cacheDir: tempDir(), log: () => {}, modelFile });
  opened.push(r.base, ...r.others.values());
  return new LoadedModels(r.base, r.others);
};

describe('ONNX export layouts with the organisms own numbers', () => {
  let reference: { drift: number; kl: number; generations: Record<string, number[]> };
  let prompt: PromptIds;

  before(async () => {
    const prep = prepareTemplate(path.join(ORGANISMS, 'base'));
    prompt = promptIds(prep.template!, prep.tokenizer!, {
      ...renderOptions(prep),
      query: 'What should I do with my savings?',
    });
    const hf = await load(path.join(ORGANISMS, 'base'), path.join(ORGANISMS, 'treft'));
    const d = await drift(hf, prompt, 'finetuned', ctx);
    const p = await patch(hf, { prompt, span: 'prefix', maxNewTokens: 12 }, ctx);
    reference = { drift: d.treft, kl: p.kl.patched, generations: p.generations };
  });
  after(async () => {
    for (const c of opened) await c.release();
  });

  const same = async (models: LoadedModels) => {
    const d = await drift(models, prompt, 'finetuned', ctx);
    const p = await patch(models, { prompt, span: 'prefix', maxNewTokens: 12 }, ctx);
    assert.ok(Math.abs(d.treft - reference.drift) <= 1e-5 * reference.drift, `drift ${d.treft} vs ${reference.drift}`);
    assert.ok(
      Math.abs(p.kl.patched - reference.kl) <= 1e-5 * Math.max(reference.kl, 1e-3),
      `KL ${p.kl.patched} vs ${reference.kl}`,
    );
    assert.deepEqual(p.generations, reference.generations);
    assert.deepEqual(models.base.info.eosTokenIds, [958], 'the EOS token comes from config.json');
  };

  it("optimum's merged decoder (use_cache_branch) in the root layout, with external data", async () => {
    const o = { graph: 'decoder_model_merged.onnx', merged: true, logitsToKeep: false as const };
    const base = organismExport('base', o);
    assert.ok(fs.existsSync(path.join(base, 'model.onnx_data')));
    await same(await load(base, organismExport('treft', o)));
  });

  it('num_logits_to_keep and logits_to_keep graphs materialise only the logits asked for', async () => {
    for (const name of ['num_logits_to_keep', 'logits_to_keep'] as const) {
      const o = { graph: 'onnx/model.onnx', logitsToKeep: name };
      const models = await load(organismExport('base', o), organismExport('treft', o));
      await same(models);
      const out = await models.base.forward(
        prompt.ids,
        prompt.ids.map((_, i) => i),
        KV.empty(4, 2, 32),
        1,
      );
      assert.equal(out.rows, 1);
      assert.equal(out.logits.length, out.vocab);
    }
  });

  it('transformers.js variant files: a folder with only model_q4.onnx, and a choice among several', async () => {
    for (const v of ['_q4', '_q4f16', '_int8', '_uint8', '_bnb4', '_quantized', '_fp16']) {
      const o = { graph: `onnx/model${v}.onnx` };
      const models = await load(organismExport('base', o), organismExport('treft', o));
      assert.equal(path.basename(models.base.info.modelFile), `model${v}.onnx`);
    }
    // several variants: the plain one by default, another by --model-file (a suffix or a file name)
    const dir = organismExport('base', { graph: 'onnx/model.onnx' });
    fs.copyFileSync(path.join(dir, 'onnx', 'model.onnx'), path.join(dir, 'onnx', 'model_q4.onnx'));
    const treft = organismExport('treft', { graph: 'onnx/model_q4.onnx' });
    const chosen = await load(dir, treft, 'q4');
    assert.equal(path.basename(chosen.base.info.modelFile), 'model_q4.onnx');
    await same(chosen);
    assert.equal(path.basename((await load(dir, treft)).base.info.modelFile), 'model.onnx');
    await assert.rejects(
      load(dir, treft, 'q8'),
      (e: unknown) =>
        e instanceof CheckpointError &&
        /no ONNX graph "q8" here \(found onnx\/model\.onnx, onnx\/model_q4\.onnx\)/.test(e.message),
    );
  });

  it('a .onnx file given directly reads config.json (the EOS token) and tokenizer files from its folder or the parent', async () => {
    const jsBase = organismExport('base', { graph: 'onnx/model.onnx' });
    const jsTreft = organismExport('treft', { graph: 'onnx/model.onnx' });
    await same(await load(path.join(jsBase, 'onnx', 'model.onnx'), path.join(jsTreft, 'onnx', 'model.onnx')));
    await same(await load(path.join(jsBase, 'onnx'), path.join(jsTreft, 'onnx')));
    // the template of a pair given as graph files is the finetuned folder's, not the .onnx file parsed as a template
    assert.equal(
      pairTemplateSource(path.join(jsTreft, 'onnx', 'model.onnx'), path.join(jsBase, 'onnx', 'model.onnx')),
      jsTreft,
    );
    const root = organismExport('base', { graph: 'model.onnx' });
    await same(await load(path.join(root, 'model.onnx'), path.join(ORGANISMS, 'treft')));
  });

  it('a missing external data file is named at load', async () => {
    const dir = organismExport('base', { graph: 'model.onnx' });
    fs.rmSync(path.join(dir, 'model.onnx_data'));
    await assert.rejects(
      load(dir, path.join(ORGANISMS, 'treft')),
      (e: unknown) =>
        e instanceof CheckpointError &&
        e.file === path.join(dir, 'model.onnx') &&
        /keeps its weights in model\.onnx_data, which is missing/.test(e.message),
    );
  });

  it('an input the host cannot feed is named at load', async () => {
    const dir = organismExport('base', { graph: 'onnx/model.onnx', extraInput: 'token_type_ids' });
    await assert.rejects(
      load(dir, path.join(ORGANISMS, 'treft')),
      (e: unknown) =>
        e instanceof CheckpointError &&
        /the graph needs inputs the host does not know how to feed: token_type_ids/.test(e.message),
    );
  });

  it('symbolic K/V dimensions: checked against a forward pass, a wrong config.json is an error naming both', async () => {
    const ok = { graph: 'onnx/model.onnx', symbolicKv: true };
    await same(await load(organismExport('base', ok), organismExport('treft', ok)));
    // no head_dim, and a head count that makes hidden / heads wrong: the host must not measure with it
    const wrong = {
      graph: 'onnx/model.onnx',
      symbolicKv: true,
      config: (c: Record<string, unknown>) => ({ ...c, head_dim: undefined, num_attention_heads: 8 }),
    };
    const base = organismExport('base', wrong);
    await assert.rejects(
      load(base, organismExport('treft', wrong)),
      (e: unknown) =>
        e instanceof CheckpointError &&
        e.file.endsWith('model.onnx') &&
        /(returns K\/V of 2 heads x 32, but config\.json says 2 x 16|does not run with 2 KV heads of size 16 \(from config\.json\))/.test(
          e.message,
        ),
    );
  });

  it('tokenizer compatibility by content: a re-saved tokenizer.json is the same; one that changes ids is refused with an example', async () => {
    const base = organismExport('base', { graph: 'onnx/model.onnx' });
    const treft = organismExport('treft', { graph: 'onnx/model.onnx' });
    const file = path.join(treft, 'tokenizer.json');
    const tj = JSON.parse(fs.readFileSync(file, 'utf8'));
    // re-saved by another tokenizers version: a truncation and padding block, other key order, another version
    const resaved = {
      version: '1.1',
      padding: { strategy: 'BatchLongest', direction: 'Right', pad_id: 956, pad_token: '<|endoftext|>' },
      truncation: { max_length: 512, strategy: 'LongestFirst', stride: 0, direction: 'Right' },
      ...Object.fromEntries(
        Object.entries(tj)
          .reverse()
          .filter(([k]) => k !== 'version' && k !== 'truncation' && k !== 'padding'),
      ),
    };
    fs.writeFileSync(file, JSON.stringify(resaved, null, 1));
    await same(await load(base, treft));
    // two vocabulary entries swap ids: text containing them tokenizes differently
    const vocab = (resaved as unknown as { model: { vocab: Record<string, number> } }).model.vocab;
    const [x, y] = ['Ġthe', 'Ġyou'];
    assert.ok(vocab[x] !== undefined && vocab[y] !== undefined);
    [vocab[x], vocab[y]] = [vocab[y], vocab[x]];
    fs.writeFileSync(file, JSON.stringify(resaved));
    await assert.rejects(
      load(base, treft),
      (e: unknown) =>
        e instanceof CheckpointError &&
        /not compatible with the base checkpoint \(different tokenizer\.json \(model\): ".*" is \[[\d, ]+\] for the base and \[[\d, ]+\] here\)/.test(
          e.message,
        ),
    );
  });
});
