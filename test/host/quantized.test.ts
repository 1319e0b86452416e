// Quantized weights (--weights-dtype int8 | int4): the codes are in the layout onnxruntime's own MatMulNBits kernel
// reads; a quantized model stays within stated tolerances of the independent PyTorch forward pass and of the
// float32 measurement on the organisms; an adapter over a quantized base differs from it by the adapter alone;
// `auto` chooses by memory and says why; a refusal names the dtype that would fit.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { prepareTemplate, renderOptions } from '../../src/app/audits';
import { changedCheckpoints } from '../../src/app/eval/run';
import type { WeightsDtype } from '../../src/contracts/modelHost';
import { promptIds } from '../../src/domain/prompt';
import { readSafetensors, writeSafetensors } from '../../src/domain/safetensors';
import { type Checkpoint, KV } from '../../src/modelHost/checkpoint';
import { attribute, DataType, encodeModel } from '../../src/modelHost/hf/onnxProto';
import { estimateMemory, loadCheckpoints } from '../../src/modelHost/loading';
import { dequantize, QUANT_BLOCK, quantizeRows, quantLayout, type QuantBits } from '../../src/modelHost/hf/quantize';
import { drift, LoadedModels } from '../../src/modelHost/operations';
import { resolveSettings } from '../../src/modelHost/runtime';
import { FIXTURES, ORGANISMS as O, organismEval, relativeRms, tempDir } from '../helpers';

const HF = path.join(FIXTURES, 'hf');
const ctx = { isCancelled: () => false, progress: () => undefined };
const cacheDir = tempDir('piggyback-cache-');
const opened: Checkpoint[] = [];

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

async function load(base: string, others: [string, string][], weightsDtype: WeightsDtype | 'auto', extra = {}) {
  const loaded = await loadCheckpoints(base, others, {
    cacheDir,
    log: () => {},
    settings: resolveSettings({ weightsDtype, executionProvider: 'cpu' }),
    ...extra,
  });
  opened.push(loaded.base, ...loaded.others.values());
  return loaded;
}

after(async () => {
  for (const c of new Set(opened)) await c.release();
});

describe('the quantized layout is the one onnxruntime reads', () => {
  for (const bits of [8, 4] as QuantBits[]) {
    it(`${bits}-bit: MatMulNBits on our codes equals the product with our dequantized matrix; each weight within half a step`, async () => {
      // K = 80 is not a multiple of the block (32): the last block is padded, as the kernel expects
      const N = 40;
      const K = 80;
      const rnd = seeded(bits);
      const w = Float32Array.from({ length: N * K }, () => (rnd() - 0.5) * 0.1);
      const l = quantLayout(N, K, bits);
      const codes = new Uint8Array(N * l.kBlocks * l.blob);
      const scales = new Float32Array(N * l.kBlocks);
      quantizeRows(w, N, l, codes, scales);
      const dq = dequantize(codes, scales, l);
      for (let i = 0; i < w.length; i++) {
        const scale = scales[Math.floor(i / K) * l.kBlocks + Math.floor((i % K) / QUANT_BLOCK)];
        const step = Math.abs(scale);
        // the block's largest magnitude maps to the lowest code exactly; a value of the other sign beyond the
        // highest code (2^(bits-1) - 1 steps) is clipped there, less than one step away
        const top = Math.round(dq[i] / scale) === (1 << (bits - 1)) - 1;
        const bound = top ? step : step / 2;
        assert.ok(Math.abs(w[i] - dq[i]) <= bound + 1e-7, `weight ${i}: ${w[i]} -> ${dq[i]} (step ${step})`);
      }
      const model = encodeModel({
        nodes: [
          {
            input: ['x', 'codes', 'scales'],
            output: ['y'],
            name: 'mm',
            op_type: 'MatMulNBits',
            domain: 'com.microsoft',
            // accuracy level 0: float arithmetic, so that only the layout can make a difference
            attribute: [
              attribute('K', K),
              attribute('N', N),
              attribute('bits', bits),
              attribute('block_size', QUANT_BLOCK),
              attribute('accuracy_level', 0),
            ],
          },
        ],
        initializers: [
          { name: 'codes', dims: [N, l.kBlocks, l.blob], data_type: DataType.UINT8, raw_data: codes },
          { name: 'scales', dims: [N * l.kBlocks], data_type: DataType.FLOAT, raw_data: new Uint8Array(scales.buffer) },
        ],
        inputs: [{ name: 'x', elemType: DataType.FLOAT, shape: [3, K] }],
        outputs: [{ name: 'y', elemType: DataType.FLOAT, shape: [3, N] }],
        opset: 17,
        metadata: {},
        name: 'layout',
      });
      const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
      const x = Float32Array.from({ length: 3 * K }, () => rnd() - 0.5);
      const y = (await session.run({ x: new ort.Tensor('float32', x, [3, K]) })).y.data as Float32Array;
      await session.release();
      const want = new Float64Array(3 * N);
      for (let r = 0; r < 3; r++)
        for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) want[r * N + n] += x[r * K + k] * dq[n * K + k];
      assert.ok(relativeRms(y, want) <= 1e-5, `onnxruntime reads other weights: ${relativeRms(y, want)}`);
    });
  }
});

// Measured on these fixtures (random weights, hidden 32: one block a row, so every matrix's error reaches every
// output): int8 at most 0.026 relative RMS, int4 at most 0.34. The tolerances leave room for other CPUs' kernels.
const TOLERANCE: Record<'int8' | 'int4', number> = { int8: 0.04, int4: 0.45 };

describe('quantized Hugging Face checkpoints against the independent PyTorch forward pass', () => {
  const cases = JSON.parse(fs.readFileSync(path.join(HF, 'expected.json'), 'utf8')) as Record<
    string,
    { folder: string; base?: string; expected: { ids: number[]; logits: number[]; key: number[][]; value: number[][] } }
  >;
  for (const dtype of ['int8', 'int4'] as const) {
    it(`${dtype}: logits and every layer's K/V of every fixture within ${TOLERANCE[dtype]} relative RMS`, async () => {
      for (const [name, c] of Object.entries(cases)) {
        const loaded = c.base
          ? await load(path.join(HF, cases[c.base].folder), [['finetuned', path.join(HF, c.folder)]], dtype)
          : await load(path.join(HF, c.folder), [], dtype);
        const m = c.base ? loaded.others.get('finetuned')! : loaded.base;
        assert.equal(m.info.weightsDtype, dtype);
        const e = c.expected;
        const out = await m.forward(
          e.ids,
          e.ids.map((_, i) => i),
          KV.empty(m.info.layers, m.info.kvHeads, m.info.headDim),
        );
        const errors = [relativeRms(out.logits, e.logits)];
        for (let l = 0; l < m.info.layers; l++)
          errors.push(relativeRms(out.kv.layers[l].k, e.key[l]), relativeRms(out.kv.layers[l].v, e.value[l]));
        const worst = Math.max(...errors);
        assert.ok(worst <= TOLERANCE[dtype], `${name}: ${worst}`);
        // quantization changes the numbers: a test that passed with float32 weights would prove nothing
        assert.ok(worst > 1e-4, `${name}: ${worst} is float32's error, not ${dtype}'s`);
      }
    });
  }
});

describe('quantized organisms against float32', () => {
  const prep = prepareTemplate(path.join(O, 'base'));
  const prompt = promptIds(prep.template!, prep.tokenizer!, {
    ...renderOptions(prep),
    query: 'I feel bored. What should I do?',
  });
  const segmentMeans = async (dtype: WeightsDtype) => {
    const loaded = await load(path.join(O, 'base'), [['finetuned', path.join(O, 'finetuned')]], dtype);
    const d = await drift(new LoadedModels(loaded.base, loaded.others), prompt, 'finetuned', ctx);
    return { prefix: d.segments.prefix.mean, query: d.segments.query.mean, postfix: d.segments.postfix.mean };
  };

  it('drift: every segment mean within 2% (int8) and 10% (int4) of float32', async () => {
    const f32 = await segmentMeans('float32');
    for (const [dtype, tol] of [
      ['int8', 0.02],
      ['int4', 0.1],
    ] as const) {
      const q = await segmentMeans(dtype);
      for (const seg of ['prefix', 'query', 'postfix'] as const) {
        const rel = Math.abs(q[seg] - f32[seg]) / f32[seg];
        assert.ok(rel <= tol, `${dtype} ${seg}: ${q[seg]} against ${f32[seg]} (${rel})`);
      }
    }
  });

  it('eval on the q/v organism: prefix share near the PyTorch reference, postfix share and KL near float32', () => {
    const ref = JSON.parse(fs.readFileSync(path.join(O, 'variants-report.json'), 'utf8'))['finetuned-qv'].kl.probes;
    const run = (dtype: WeightsDtype) => {
      const r = organismEval('finetuned-qv', 'probes.jsonl', ['--weights-dtype', dtype], {
        PIGGYBACK_CACHE_DIR: cacheDir,
      });
      const kl = r.summary.conditions.find((c: { label: string }) => c.label === 'finetuned').general.meanKlToBase;
      return { ...r, kl };
    };
    const f32 = run('float32');
    assert.equal(f32.manifest.checkpoints.base.weightsDtype, 'float32');
    assert.doesNotMatch(f32.md, /Quantized weights/);
    // measured: prefix share 0.9069 (float32 and PyTorch), 0.9061 (int8), 0.9005 (int4); postfix 0.264 / 0.263 / 0.237
    for (const [dtype, share, kl] of [
      ['int8', 0.01, 0.03],
      ['int4', 0.03, 0.15],
    ] as const) {
      const q = run(dtype);
      const prefix = q.summary.piggybackShare.prefix.share;
      assert.ok(
        Math.abs(prefix - ref.prefixShare) <= share,
        `${dtype} prefix share ${prefix}, PyTorch ${ref.prefixShare}`,
      );
      const postfix = q.summary.piggybackShare.postfix.share;
      const postfix32 = f32.summary.piggybackShare.postfix.share;
      assert.ok(Math.abs(postfix - postfix32) <= 2 * share, `${dtype} postfix share ${postfix}, float32 ${postfix32}`);
      assert.ok(Math.abs(q.kl - f32.kl) / f32.kl <= kl, `${dtype} KL ${q.kl}, float32 ${f32.kl}`);
      assert.equal(q.manifest.checkpoints.base.weightsDtype, dtype);
      assert.equal(q.manifest.checkpoints.finetuned.weightsDtype, dtype);
      assert.match(q.md, new RegExp(`Quantized weights\\*\\*: base, finetuned ran with ${dtype} matrices`));
      assert.match(q.stderr, new RegExp(`${dtype} weights`));
    }
  });

  it('an adapter over a quantized base differs from it by the adapter alone: an all-zero adapter drifts exactly 0', async () => {
    const zero = tempDir();
    fs.copyFileSync(path.join(O, 'finetuned', 'adapter_config.json'), path.join(zero, 'adapter_config.json'));
    const { tensors } = readSafetensors(path.join(O, 'finetuned', 'adapter_model.safetensors'));
    for (const [name, t] of Object.entries(tensors)) if (name.includes('lora_B')) t.data.fill(0);
    writeSafetensors(path.join(zero, 'adapter_model.safetensors'), tensors);
    for (const dtype of ['int8', 'int4'] as const) {
      const loaded = await load(path.join(O, 'base'), [['finetuned', zero]], dtype);
      const d = await drift(new LoadedModels(loaded.base, loaded.others), prompt, 'finetuned', ctx);
      for (const seg of ['prefix', 'query', 'postfix'] as const)
        assert.equal(d.segments[seg].mean, 0, `${dtype} ${seg}`);
    }
  });
});

describe('choosing the dtype by memory', () => {
  const base = path.join(O, 'base');
  const paths: [string, 'hf' | 'adapter'][] = [
    [base, 'hf'],
    [path.join(O, 'finetuned'), 'adapter'],
  ];
  const need = (d: 'F32' | 'Q8' | 'Q4') => estimateMemory(paths, undefined, { weightDtype: d }).total;

  it('auto takes float32 when it fits, int8 when only that fits, int4 next, and says why', async () => {
    assert.ok(need('F32') > need('Q8') && need('Q8') > need('Q4'));
    // auto takes a dtype whose estimate is at most 85% of the available memory: each size lies between two
    for (const [available, want] of [
      [need('F32') / 0.84, 'float32'],
      [(need('Q8') + need('F32')) / 2 / 0.85, 'int8'],
      [(need('Q4') + need('Q8')) / 2 / 0.85, 'int4'],
    ] as const) {
      const logs: string[] = [];
      const loaded = await load(base, [['finetuned', path.join(O, 'finetuned')]], 'auto', {
        availableMemory: available,
        log: (m: string) => logs.push(m),
      });
      assert.equal(loaded.base.info.weightsDtype, want);
      assert.equal(loaded.others.get('finetuned')!.info.weightsDtype, want);
      const line = logs.find((l) => l.startsWith('weights: '));
      assert.ok(line?.startsWith(`weights: ${want}`), String(line));
      if (want !== 'float32') assert.match(line!, /float32 would need [\d.]+ MB/);
    }
  });

  it('nothing fits: refused, naming each dtype tried and a GPU, not "close other programs"', async () => {
    await assert.rejects(
      load(base, [['finetuned', path.join(O, 'finetuned')]], 'auto', { availableMemory: need('Q4') / 2 }),
      (e: Error) => {
        assert.match(e.message, /float32 would need .*int8 would need .*int4 would need/);
        assert.match(e.message, /--execution-provider cuda/);
        assert.doesNotMatch(e.message, /close other programs/);
        return true;
      },
    );
  });

  it('an explicit float32 that does not fit is refused with the flag of the dtype that would', async () => {
    await assert.rejects(
      load(base, [['finetuned', path.join(O, 'finetuned')]], 'float32', { availableMemory: need('Q8') * 1.05 }),
      (e: Error) => {
        assert.match(e.message, /int8 would fit .*--weights-dtype int8/);
        return true;
      },
    );
  });

  it('ONNX exports run as exported: still estimated and refused when they do not fit, with what would help', async () => {
    await assert.rejects(
      load(path.join(O, 'base', 'onnx'), [['finetuned', path.join(O, 'finetuned', 'onnx')]], 'auto', {
        availableMemory: 1e6,
      }),
      (e: Error) => {
        assert.match(
          e.message,
          /loading needs about .* the exports' files.* choose a smaller variant \(--model-file q4\)/,
        );
        return true;
      },
    );
  });

  it('a run folder measured at one dtype is not resumed at another; both are named', () => {
    const info = (weightsDtype?: WeightsDtype) => ({
      folder: base,
      modelFile: base,
      kind: 'hf' as const,
      device: 'cpu' as const,
      threads: 1,
      layers: 4,
      kvHeads: 2,
      headDim: 32,
      vocabSize: 10,
      kvType: 'float32' as const,
      hasPositionIds: true,
      eosTokenIds: [],
      hash: 'h',
      weightsDtype,
    });
    const pair = (d?: WeightsDtype) => ({ base: info(d), finetuned: info(d), extra: {} });
    assert.deepEqual(changedCheckpoints(pair('int8'), pair('int8')), []);
    // a manifest written before quantized weights existed ran Hugging Face folders as float32
    assert.deepEqual(changedCheckpoints(pair(undefined), pair('float32')), []);
    const changed = changedCheckpoints(pair('float32'), pair('int4'));
    assert.equal(changed.length, 2);
    assert.match(changed[0], /base ran with float32 weights then and int4 now.*--weights-dtype float32/);
  });
});

describe('the weight cache', () => {
  it('a conversion overwritten in place (same size) is noticed by its recorded hash and made again, numbers intact', async () => {
    const dir = tempDir('piggyback-cache-');
    const load8 = async (logs: string[]) => {
      const loaded = await loadCheckpoints(path.join(O, 'base'), [], {
        cacheDir: dir,
        log: (m) => logs.push(m),
        settings: resolveSettings({ weightsDtype: 'int8', executionProvider: 'cpu' }),
      });
      const c = loaded.base;
      const out = await c.forward([1, 2, 3], [0, 1, 2], KV.empty(c.info.layers, c.info.kvHeads, c.info.headDim));
      await c.release();
      return out.logits;
    };
    const first: string[] = [];
    const want = await load8(first);
    assert.ok(first.some((l) => l.startsWith('converting ')));
    const cached: string[] = [];
    assert.deepEqual(await load8(cached), want);
    assert.ok(!cached.some((l) => l.startsWith('converting ')), 'the second load reuses the cache');
    const file = fs.readdirSync(path.join(dir, 'weights')).find((f) => f.endsWith('.safetensors'))!;
    const full = path.join(dir, 'weights', file);
    const bytes = fs.readFileSync(full);
    bytes.fill(0x7f, bytes.length - 4096); // the last tensors' bytes, the header untouched
    fs.writeFileSync(full, bytes);
    const again: string[] = [];
    assert.deepEqual(await load8(again), want);
    assert.ok(
      again.some((l) => /no longer holds what was written/.test(l)),
      again.join('\n'),
    );
  });
});
