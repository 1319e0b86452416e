// Hugging Face folders and PEFT adapters opened directly: the host builds an ONNX decoder from config.json and
// the safetensors weights. Checked, per layer and token, against an independent PyTorch forward pass
// (scripts/hf-fixtures/make.py, run offline with Debian's python3-torch; its outputs are committed as fixtures).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { type Checkpoint, KV } from '../../src/modelHost/checkpoint';
import { loadCheckpoints } from '../../src/modelHost/loading';
import { f32BitsToF16 } from '../../src/modelHost/hf/weights';
import { readSafetensorsHeader } from '../../src/domain/safetensors';
import { LoadedModels } from '../../src/modelHost/operations';
import { FIXTURES, tempDir } from '../helpers';

const HF = path.join(FIXTURES, 'hf');
interface Expected {
  ids: number[];
  logits: number[];
  vocab: number;
  key: number[][];
  value: number[][];
}
const cases = JSON.parse(fs.readFileSync(path.join(HF, 'expected.json'), 'utf8')) as Record<
  string,
  { folder: string; base?: string; expected: Expected }
>;
const cacheDir = tempDir('piggyback-cache-');
const opened: Checkpoint[] = [];
const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

async function open(name: string): Promise<Checkpoint> {
  const c = cases[name];
  const loaded = c.base
    ? await loadCheckpoints(path.join(HF, cases[c.base].folder), [['finetuned', path.join(HF, c.folder)]], {
        cacheDir,
        log: () => {},
      })
    : await loadCheckpoints(path.join(HF, c.folder), [], { cacheDir, log: () => {} });
  opened.push(loaded.base, ...loaded.others.values());
  return c.base ? loaded.others.get('finetuned')! : loaded.base;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('Hugging Face checkpoints against an independent PyTorch forward', () => {
  after(async () => {
    for (const c of opened) await c.release();
  });

  for (const name of Object.keys(cases)) {
    it(`${name}: logits and every layer's K/V at every token match (1e-4)`, async () => {
      const e = cases[name].expected;
      const model = await open(name);
      const out = await model.forward(
        e.ids,
        range(e.ids.length),
        KV.empty(model.info.layers, model.info.kvHeads, model.info.headDim),
      );
      assert.equal(out.vocab, e.vocab);
      const d = maxDiff(out.logits, e.logits);
      assert.ok(d <= 1e-4, `logits differ by ${d}`);
      for (let l = 0; l < model.info.layers; l++) {
        const dk = maxDiff(out.kv.layers[l].k, e.key[l]);
        const dv = maxDiff(out.kv.layers[l].v, e.value[l]);
        assert.ok(dk <= 1e-4 && dv <= 1e-4, `layer ${l}: K differs by ${dk}, V by ${dv}`);
      }
      // the KV cache: the same sequence fed in two steps gives the same last logits
      const split = 4;
      const head = await model.forward(
        e.ids.slice(0, split),
        range(split),
        KV.empty(model.info.layers, model.info.kvHeads, model.info.headDim),
      );
      const rest = await model.forward(e.ids.slice(split), range(e.ids.length - split, split), head.kv);
      assert.ok(
        maxDiff(rest.logits, out.logits.subarray(split * out.vocab)) <= 1e-5,
        'prefix-then-rest differs from the full sequence',
      );
    });
  }

  it('float16 matrices (the GPU graph, run here on the CPU): every case close to the reference, matrices at half the bytes', async () => {
    const half = { threads: 1, device: 'cpu' as const, weightDtype: 'F16' as const };
    for (const name of Object.keys(cases)) {
      const c = cases[name];
      const logs: string[] = [];
      const loaded = c.base
        ? await loadCheckpoints(path.join(HF, cases[c.base].folder), [['finetuned', path.join(HF, c.folder)]], {
            cacheDir,
            log: (m) => logs.push(m),
            settings: half,
          })
        : await loadCheckpoints(path.join(HF, c.folder), [], { cacheDir, log: (m) => logs.push(m), settings: half });
      opened.push(loaded.base, ...loaded.others.values());
      const model = c.base ? loaded.others.get('finetuned')! : loaded.base;
      const e = c.expected;
      const out = await model.forward(
        e.ids,
        range(e.ids.length),
        KV.empty(model.info.layers, model.info.kvHeads, model.info.headDim),
      );
      // float16 and bfloat16 checkpoints convert to float16 exactly (measured: ~3e-7 of the largest logit); float32
      // ones are rounded to float16's 11 significant bits (measured: under 1e-3)
      const scale = Math.max(...e.logits.map(Math.abs));
      const d = maxDiff(out.logits, e.logits);
      const exact = /bf16|f16/.test(name);
      assert.ok(d <= (exact ? 1e-5 : 2e-3) * scale, `${name}: logits differ by ${d} (largest ${scale})`);
      assert.match(loaded.base.info.description ?? '', /run as float16 matrices/);
      assert.ok(
        logs.some((m) => / with float16 matrices in memory/.test(m)),
        logs.join('\n'),
      );
    }
    // the converted cache holds the matrices as F16 (2 bytes each)
    const f16 = fs
      .readdirSync(path.join(cacheDir, 'weights'))
      .filter((f) => f.endsWith('.safetensors'))
      .map((f) => readSafetensorsHeader(path.join(cacheDir, 'weights', f)));
    const withHalf = f16.find((h) => h.tensors.get('model.layers.0.self_attn.q_proj.weight')?.dtype === 'F16');
    assert.ok(withHalf, 'a cache file with float16 matrices');
    assert.equal(withHalf.tensors.get('model.norm.weight')?.dtype, 'F32', 'norms stay float32');
  });

  it('float32 to float16 rounds to nearest even, as torch does', () => {
    const bits = (x: number) => new Uint32Array(Float32Array.of(x).buffer)[0];
    assert.equal(f32BitsToF16(bits(1)), 0x3c00);
    assert.equal(f32BitsToF16(bits(-2)), 0xc000);
    assert.equal(f32BitsToF16(bits(65504)), 0x7bff);
    assert.equal(f32BitsToF16(bits(1e6)), 0x7c00);
    assert.equal(f32BitsToF16(bits(2 ** -24)), 0x0001);
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1); 1 + 3*2^-11 goes up
    assert.equal(f32BitsToF16(bits(1 + 2 ** -11)), 0x3c00);
    assert.equal(f32BitsToF16(bits(1 + 3 * 2 ** -11)), 0x3c02);
  });

  it('reads what each config form says: eos from generation_config.json, kinds, descriptions', async () => {
    const qwen2 = await open('qwen2-f16-bias-newer-config');
    assert.deepEqual(qwen2.info.eosTokenIds, [2, 63]);
    assert.equal(qwen2.info.kind, 'hf');
    assert.match(qwen2.info.description ?? '', /qwen2 2 layers.*F16 weights \(cache .*\), RoPE default, theta 1000000/);
    const llama3 = await open('llama3-bf16-sharded-tied');
    assert.match(llama3.info.description ?? '', /BF16 weights .*RoPE llama3 x8/);
    const adapter = await open('llama-rslora');
    assert.equal(adapter.info.kind, 'adapter');
    assert.equal(adapter.info.baseModelNameOrPath, 'tiny/base');
    assert.match(
      adapter.info.description ?? '',
      /LoRA r2\/6 alpha 4 \(rsLoRA\) on 5 modules \(k_proj, lm_head, o_proj\)/,
    );
  });

  it('a base and its adapter share one session: the base through the adapter graph is bitwise the plain base', async () => {
    const plain = await open('llama');
    const loaded = await loadCheckpoints(
      path.join(HF, 'llama'),
      [
        ['finetuned', path.join(HF, 'llama-lora')],
        ['other', path.join(HF, 'llama-rslora')],
      ],
      { cacheDir, log: () => {} },
    );
    opened.push(loaded.base, ...loaded.others.values());
    const ids = cases.llama.expected.ids;
    const empty = () => KV.empty(plain.info.layers, plain.info.kvHeads, plain.info.headDim);
    const a = await plain.forward(ids, range(ids.length), empty());
    const b = await loaded.base.forward(ids, range(ids.length), empty());
    assert.equal(maxDiff(a.logits, b.logits), 0);
    // each adapter switched on alone reproduces its own reference
    const lora = await loaded.others.get('finetuned')!.forward(ids, range(ids.length), empty());
    assert.ok(maxDiff(lora.logits, cases['llama-lora'].expected.logits) <= 1e-4);
    const rs = await loaded.others.get('other')!.forward(ids, range(ids.length), empty());
    assert.ok(maxDiff(rs.logits, cases['llama-rslora'].expected.logits) <= 1e-4);
  });

  it("PEFT's target_modules forms: a list, a regex, and the all-linear shorthand select the same adapted modules", async () => {
    const dir = path.join(tempDir(), 'all-linear');
    fs.cpSync(path.join(HF, 'llama-lora'), dir, { recursive: true });
    const cfgFile = path.join(dir, 'adapter_config.json');
    fs.writeFileSync(
      cfgFile,
      JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), target_modules: 'all-linear' }),
    );
    const logs: string[] = [];
    const loaded = await loadCheckpoints(path.join(HF, 'llama'), [['finetuned', dir]], {
      cacheDir,
      log: (m) => logs.push(m),
    });
    opened.push(loaded.base, ...loaded.others.values());
    const e = cases['llama-lora'].expected;
    const out = await loaded.others.get('finetuned')!.forward(e.ids, range(e.ids.length), KV.empty(2, 2, 8));
    assert.ok(maxDiff(out.logits, e.logits) <= 1e-4);
    assert.ok(
      logs.some((m) =>
        m.includes('LoRA r4 alpha 8 on 5 modules (down_proj, q_proj, v_proj) (trained over "tiny/base"; applied to'),
      ),
      logs.join('\n'),
    );
  });

  it("generation stops at the model's context length (max_position_embeddings)", async () => {
    const model = await open('llama');
    assert.equal(model.info.maxPositions, 128);
    const models = new LoadedModels(model, new Map());
    const ids = Array.from({ length: 125 }, (_, i) => (i * 7) % 60);
    const prompt = {
      ids,
      prefix: [0, 5] as [number, number],
      query: [5, 120] as [number, number],
      postfix: [120, 125] as [number, number],
    };
    const out = await models.generate(model, await models.prefill(model, prompt), ids.length, 48, {
      isCancelled: () => false,
      progress: () => undefined,
    });
    // 3 positions are left (125, 126, 127); fewer only when the model ended its answer (EOS, id 2) earlier
    assert.ok(
      out.length === 3 || (out.length < 3 && out[out.length - 1] === 2),
      `${out.length} tokens after a 125-token prompt in a 128-token context: ${out}`,
    );
  });

  it('identity: the hash covers config.json and the weights, and the adapter hash covers its base', async () => {
    const a = await open('llama');
    const b = await open('mistral-sliding-window');
    const lora = await open('llama-lora');
    assert.match(a.info.hash, /^[0-9a-f]{16}$/);
    assert.notEqual(a.info.hash, b.info.hash);
    assert.notEqual(lora.info.hash, a.info.hash);
  });

  it('the base named again, as itself or through a symbolic link, is the base checkpoint: one session', async () => {
    const base = path.join(HF, 'llama');
    const link = path.join(tempDir(), 'same-llama');
    fs.symlinkSync(base, link);
    const loaded = await loadCheckpoints(
      base,
      [
        ['finetuned', link],
        ['again', base],
      ],
      { cacheDir, log: () => {} },
    );
    opened.push(loaded.base);
    assert.equal(loaded.others.get('finetuned'), loaded.base);
    assert.equal(loaded.others.get('again'), loaded.base);
  });

  it('converts half-precision weights once into the cache, under a name from their content, and reuses it', async () => {
    const dir = path.join(cacheDir, 'weights');
    const before = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors'));
    assert.ok(before.length >= 2, 'the bf16 and f16 cases were converted');
    assert.ok(!fs.readdirSync(dir).some((f) => f.includes('.tmp-')), 'no temporary file left');
    const logs: string[] = [];
    const again = await loadCheckpoints(path.join(HF, 'qwen2-f16-bias-newer-config'), [], {
      cacheDir,
      log: (m) => logs.push(m),
    });
    opened.push(again.base);
    assert.deepEqual(
      fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')),
      before,
    );
    assert.ok(!logs.some((m) => m.startsWith('converting')), 'the second load converts nothing');
    assert.ok(
      logs.some((m) => /qwen2, \d+\.\dk parameters \(F16\), about 0\.\d MB as float32 in memory/.test(m)),
      logs.join('\n'),
    );
  });
});
