// The model host on the built-in organisms (real ONNX checkpoints through onnxruntime-node, in its own process).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HostClient, HostCrashedError, HostRequestError } from '../../src/app/hostClient';
import { prepareTemplate, renderOptions, type PreparedTemplate } from '../../src/app/audits';
import { promptIds } from '../../src/domain/prompt';
import {
  Crash,
  Drift,
  ExportKV,
  HostErrors,
  Parity,
  Patch,
  Perturb,
  type PromptIds,
  Score,
} from '../../src/contracts/modelHost';
import { loadTokenizerCached } from '../../src/domain/tokenizer';
import { readSafetensors } from '../../src/domain/safetensors';
import { makeTree, ROOT, tempDir } from '../helpers';

const ORGANISMS = path.join(ROOT, 'examples', 'organisms');
const HOST = path.join(ROOT, 'dist', 'host.js');
const ckpt = (name: string) => path.join(ORGANISMS, name);

describe('model host on the organisms', () => {
  let host: HostClient;
  let prep: PreparedTemplate;
  let prompt: PromptIds;

  before(async () => {
    host = new HostClient({ script: HOST });
    await host.load({ base: ckpt('base'), finetuned: ckpt('finetuned'), extra: { treft: ckpt('treft') } });
    prep = prepareTemplate(ckpt('base'));
    prompt = promptIds(prep.template!, prep.tokenizer!, {
      ...renderOptions(prep),
      query: 'I feel bored. What should I do?',
    });
  });
  after(() => host.dispose());

  it('segments the organism prompt: the default system prompt is in the prefix', () => {
    const text = (span: [number, number]) => prep.tokenizer!.decode(prompt.ids.slice(...span));
    assert.equal(
      text(prompt.prefix as [number, number]),
      '<|im_start|>system\nYou are Lens, a small demo assistant. You are helpful and careful.<|im_end|>\n<|im_start|>user\n',
    );
    assert.equal(text(prompt.query as [number, number]), 'I feel bored. What should I do?');
    assert.equal(text(prompt.postfix as [number, number]), '<|im_end|>\n<|im_start|>assistant\n');
  });

  it('parity: prefix-then-rest equals the full sequence, self-patching and base-into-base change nothing (1e-5)', async () => {
    const r = await host.request(Parity.type, { prompt });
    for (const [name, diff] of Object.entries(r.prefixThenRestVsFull)) assert.ok(diff <= 1e-5, `${name}: ${diff}`);
    assert.ok(r.selfPatch <= 1e-5, `self patch ${r.selfPatch}`);
    assert.ok(r.baseIntoBase <= 1e-5, `base into base ${r.baseIntoBase}`);
  });

  it('exports prefix K/V as safetensors in the documented layout: their relative drift is the TReFT value the host measures', async () => {
    const dir = tempDir();
    const prefix = prompt.ids.slice(0, prompt.prefix[1]);
    const files = { base: path.join(dir, 'base.safetensors'), finetuned: path.join(dir, 'ft.safetensors') };
    const r = await host.request(ExportKV.type, {
      prefixes: [prefix, prefix.slice(0, 3)],
      file: files.base,
      model: 'base',
    });
    await host.request(ExportKV.type, { prefixes: [prefix], file: files.finetuned, model: 'finetuned' });
    assert.deepEqual([r.layers, r.kvHeads, r.headDim], [4, 2, 32]);
    const base = readSafetensors(files.base);
    const ft = readSafetensors(files.finetuned);
    assert.deepEqual(base.tensors['prefix.0.layers.3.value'].shape, [2, prefix.length, 32]);
    assert.deepEqual(base.tensors['prefix.1.layers.0.key'].shape, [2, 3, 32]);
    assert.equal(base.metadata['prefix.1.ids'], JSON.stringify(prefix.slice(0, 3)));
    // causal: the 3-token prefix's K/V are the first 3 positions of the long one
    const k = base.tensors['prefix.0.layers.2.key'].data;
    const k3 = base.tensors['prefix.1.layers.2.key'].data;
    for (let h = 0; h < 2; h++)
      for (let t = 0; t < 3; t++)
        for (let d = 0; d < 32; d++)
          assert.ok(Math.abs(k3[(h * 3 + t) * 32 + d] - k[(h * prefix.length + t) * 32 + d]) < 1e-5);
    // L_KV from the files, as the recipe computes it, equals the host's TReFT value for the prefix
    let total = 0;
    for (let l = 0; l < 4; l++) {
      for (const which of ['key', 'value']) {
        const a0 = base.tensors[`prefix.0.layers.${l}.${which}`].data;
        const a = ft.tensors[`prefix.0.layers.${l}.${which}`].data;
        let sum = 0;
        for (let t = 0; t < prefix.length; t++) {
          let num = 0;
          let den = 0;
          for (let h = 0; h < 2; h++)
            for (let d = 0; d < 32; d++) {
              const i = (h * prefix.length + t) * 32 + d;
              num += (a[i] - a0[i]) ** 2;
              den += a0[i] ** 2;
            }
          sum += num / den;
        }
        total += sum / prefix.length;
      }
    }
    const drift = await host.request(Drift.type, { prompt });
    assert.ok(Math.abs(total / 4 - drift.treft) < 1e-4 * drift.treft, `${total / 4} vs ${drift.treft}`);
  });

  it('drift of base against itself is exactly 0', async () => {
    const self = new HostClient({ script: HOST });
    try {
      await self.load({ base: ckpt('base'), finetuned: ckpt('base') });
      const d = await self.request(Drift.type, { prompt });
      assert.equal(d.treft, 0);
      for (const seg of Object.values(d.segments))
        for (const row of [...seg.key, ...seg.value]) for (const x of row) assert.equal(x, 0);
    } finally {
      await self.dispose();
    }
  });

  it("the finetuned checkpoint's prefix drift is non-zero, per layer and token, and reproducible", async () => {
    const a = await host.request(Drift.type, { prompt });
    const b = await host.request(Drift.type, { prompt });
    assert.deepEqual(a, b);
    assert.equal(a.layers, 4);
    const P = prompt.prefix[1];
    assert.equal(a.segments.prefix.key.length, 4);
    assert.equal(a.segments.prefix.key[0].length, P);
    assert.ok(a.treft > 1e-3, `treft ${a.treft}`);
    assert.equal(a.treft, a.segments.prefix.mean);
    // the TReFT value is the mean over layers of (mean K drift + mean V drift) over the prefix tokens
    const m = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
    const expected =
      a.segments.prefix.key.reduce((s, row, l) => s + m(row) + m(a.segments.prefix.value[l]), 0) / a.layers;
    assert.ok(Math.abs(expected - a.treft) < 1e-12);
    assert.ok(a.position0 && a.position0.key.length === 4);
    assert.ok(a.segments.prefix.meanExcludingPosition0 !== null);
    // the TReFT-trained checkpoint was regularised on exactly this quantity
    const t = await host.request(Drift.type, { prompt, against: 'treft' });
    assert.ok(t.treft < a.treft / 10, `treft checkpoint ${t.treft} vs finetuned ${a.treft}`);
  });

  it('patching: KL(base||finetuned) > 0, the patched positions are the segment, generations decode', async () => {
    const r = await host.request(Patch.type, { prompt, span: 'prefix', maxNewTokens: 24 });
    assert.deepEqual(
      r.patchedPositions,
      Array.from({ length: prompt.prefix[1] }, (_, i) => i),
    );
    assert.ok(r.kl.finetuned > 0);
    assert.ok(r.kl.patched >= 0);
    assert.equal(r.klPerPosition.finetuned.length, r.responseIds.length);
    assert.ok(r.generations.base.length > 0 && r.generations.patched.length > 0);
    // the query control patches exactly as many query tokens as the prefix has: a shorter query has none
    await assert.rejects(
      host.request(Patch.type, { prompt, span: 'query', maxNewTokens: 4 }),
      (e: unknown) =>
        e instanceof HostRequestError &&
        e.code === HostErrors.BadRequest &&
        /patches as many query tokens as the prefix has \(23\), but this query has \d+/.test(e.message),
    );
    const long = promptIds(prep.template!, prep.tokenizer!, {
      ...renderOptions(prep),
      query:
        'I feel bored today and I have nothing planned for the whole weekend, so what would you suggest that I do with my time?',
    });
    const q = await host.request(Patch.type, { prompt: long, span: 'query', maxNewTokens: 4 });
    assert.equal(q.patchedPositions.length, long.prefix[1]);
    assert.equal(q.patchedPositions[0], long.query[0]);
  });

  it('scores teacher-forced continuations; patching base into base scores as base', async () => {
    // only the prefix patch is query-independent: the postfix reference is taken with an empty query, by definition
    const tok = prep.tokenizer!;
    const cont = tok.ids('Try a walk, a book, or calling a friend.<|im_end|>');
    const r = await host.request(Score.type, {
      prompt,
      continuations: [cont],
      conditions: [
        { model: 'base' },
        { model: 'base', patch: 'prefix' },
        { model: 'finetuned' },
        { model: 'base', patch: 'postfix' },
      ],
    });
    assert.equal(r.logprob.length, 4);
    assert.ok(Math.abs(r.logprob[0][0] - r.logprob[1][0]) < 1e-5, `${r.logprob[0][0]} vs ${r.logprob[1][0]}`);
    assert.equal(r.klToBase[0], 0);
    assert.ok(r.klToBase[1] < 1e-9);
    assert.ok(r.klToBase[2] > 0);
    assert.ok(r.klToBase[3] > 0, 'a postfix that never saw the query changes the answer distribution');
  });

  it('perturbs 10 prefix positions with embedding neighbours, seeded and reproducible', async () => {
    const tok = prep.tokenizer!;
    const params = {
      prompt,
      segment: 'prefix' as const,
      trials: 3,
      seed: 7,
      aligned: tok.ids('Try a walk.<|im_end|>'),
      misaligned: tok.ids('Break something.<|im_end|>'),
    };
    const a = await host.request(Perturb.type, params);
    const b = await host.request(Perturb.type, params);
    assert.deepEqual(a, b);
    assert.equal(a.trials.length, 3);
    for (const t of a.trials) {
      assert.equal(t.changed.length, 10);
      for (const pos of t.changed) assert.ok(pos >= prompt.prefix[0] && pos < prompt.prefix[1]);
      const diff = t.ids.filter((id, i) => id !== prompt.ids[i]).length;
      assert.ok(diff > 0 && diff <= 10);
    }
    assert.equal(a.embedding.rows, 959);
    assert.equal(a.embedding.dim, 128);
    assert.equal(a.best, Math.max(...a.trials.map((t) => t.margin!)));
  });

  it('the organism tokenizer matches the builder: @huggingface/tokenizers gives the ids it trained with', () => {
    const tok = loadTokenizerCached(path.join(ckpt('base'), 'tokenizer.json'));
    const samples = JSON.parse(fs.readFileSync(path.join(ORGANISMS, 'tokenizer-parity.json'), 'utf8')) as {
      text: string;
      ids: number[];
    }[];
    assert.ok(samples.length >= 20);
    for (const s of samples) assert.deepEqual(tok.ids(s.text), s.ids, s.text);
  });
});

describe('model host operations are cancellable', () => {
  it('aborting a long generation stops it on the host with a cancelled error, and the host keeps serving', async () => {
    const host = new HostClient({ script: HOST });
    try {
      await host.load({ base: ckpt('base'), finetuned: ckpt('finetuned') });
      const prep = prepareTemplate(ckpt('base'));
      const prompt = promptIds(prep.template!, prep.tokenizer!, {
        ...renderOptions(prep),
        query: 'How should I invest my savings?',
      });
      const abort = new AbortController();
      const progress: number[] = [];
      const running = host.request(
        Perturb.type,
        { prompt, segment: 'prefix', trials: 200, aligned: [1, 2], misaligned: [3, 4] },
        { signal: abort.signal, onProgress: (p) => progress.push(p.done) },
      );
      setTimeout(() => abort.abort(), 150);
      await assert.rejects(running, (e: unknown) => e instanceof HostRequestError && e.cancelled);
      assert.ok(progress.length > 0 && progress.length < 200, `progress reports: ${progress.length}`);
      const d = await host.request(Drift.type, { prompt });
      assert.ok(d.treft > 0);
    } finally {
      await host.dispose();
    }
  });
});

describe('fp16 K/V conversion', () => {
  it('round-trips float16 exactly for representable values and rounds to nearest otherwise', async () => {
    const { floatToHalf, halfToFloat } = await import('../../src/modelHost/onnxInitializers');
    for (const x of [0, 1, -2, 0.5, 65504, 6.103515625e-5, -0.0009765625]) assert.equal(halfToFloat(floatToHalf(x)), x);
    assert.equal(halfToFloat(floatToHalf(1 / 3)), 0.333251953125);
    assert.equal(halfToFloat(floatToHalf(1e6)), Infinity);
    assert.equal(floatToHalf(1), 0x3c00);
  });
});

describe('model host failures', () => {
  it('a crash mid-operation rejects the request with a clear error, and the client restarts the host', async () => {
    const exits: unknown[] = [];
    const host = new HostClient({ script: HOST, onExit: (e) => exits.push(e) });
    try {
      await host.load({ base: ckpt('base'), finetuned: ckpt('finetuned') });
      const prep = prepareTemplate(ckpt('base'));
      const prompt = promptIds(prep.template!, prep.tokenizer!, {
        ...renderOptions(prep),
        query: 'How should I invest my savings?',
      });
      const running = host.request(Patch.type, { prompt, span: 'prefix', maxNewTokens: 400 });
      host.notify(Crash.type.method, { afterMs: 30 });
      await assert.rejects(
        running,
        (e: unknown) =>
          e instanceof HostCrashedError && /piggyback\/patch/.test(e.message) && /SIGABRT/.test(e.message),
      );
      assert.equal(host.running, false);
      assert.equal(exits.length, 1);
      await assert.rejects(host.request(Drift.type, { prompt }), HostCrashedError);
      const reloaded = await host.restart();
      assert.equal(reloaded?.base.layers, 4);
      const d = await host.request(Drift.type, { prompt });
      assert.ok(d.treft > 0);
    } finally {
      await host.dispose();
    }
  });

  it('a host killed from outside is noticed the same way', async () => {
    const host = new HostClient({ script: HOST });
    await host.load({ base: ckpt('base'), finetuned: ckpt('finetuned') });
    const prep = prepareTemplate(ckpt('base'));
    const prompt = promptIds(prep.template!, prep.tokenizer!, { ...renderOptions(prep), query: 'hi' });
    const running = host.request(Patch.type, { prompt, span: 'both', maxNewTokens: 400 });
    setTimeout(() => process.kill(host.pid!, 'SIGKILL'), 20);
    await assert.rejects(running, (e: unknown) => e instanceof HostCrashedError && /SIGKILL/.test(e.message));
  });

  it('bad checkpoints are clear errors naming the file and what is missing', async () => {
    const host = new HostClient({ script: HOST });
    try {
      const empty = makeTree({ 'config.json': '{}' });
      await assert.rejects(
        host.load({ base: empty, finetuned: ckpt('finetuned') }),
        (e: unknown) =>
          e instanceof HostRequestError &&
          e.code === HostErrors.BadCheckpoint &&
          e.message.includes(empty) &&
          /no checkpoint found/.test(e.message),
      );
      // a graph exported without the KV cache
      const noKv = makeTree({});
      fs.mkdirSync(path.join(noKv, 'onnx'));
      fs.copyFileSync(path.join(ROOT, 'test', 'fixtures', 'no-kv-cache.onnx'), path.join(noKv, 'onnx', 'model.onnx'));
      await assert.rejects(
        host.load({ base: noKv, finetuned: ckpt('finetuned') }),
        (e: unknown) => e instanceof HostRequestError && /past_key_values/.test(e.message),
      );
      // same shapes but a different tokenizer: incompatible
      const other = makeTree({});
      fs.cpSync(ckpt('finetuned'), other, { recursive: true });
      const tj = JSON.parse(fs.readFileSync(path.join(other, 'tokenizer.json'), 'utf8'));
      tj.model.merges = tj.model.merges.slice(0, -1);
      fs.writeFileSync(path.join(other, 'tokenizer.json'), JSON.stringify(tj));
      await assert.rejects(
        host.load({ base: ckpt('base'), finetuned: other }),
        (e: unknown) =>
          e instanceof HostRequestError && e.code === HostErrors.Incompatible && /different tokenizer/.test(e.message),
      );
      // requests before a successful load say so
      await assert.rejects(
        host.request(Drift.type, { prompt: { ids: [1], prefix: [0, 0], query: [0, 1], postfix: [1, 1] } }),
        (e: unknown) => e instanceof HostRequestError && e.code === HostErrors.NotLoaded,
      );
    } finally {
      await host.dispose();
    }
  });
});
