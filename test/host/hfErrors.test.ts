// Bad Hugging Face checkpoints and adapters: one line naming the file and the cause (exit 1 from the CLI), never
// a stack trace, and nothing half-written in the weight cache.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { CheckpointError } from '../../src/modelHost/errors';
import { readSafetensors, writeSafetensors } from '../../src/domain/safetensors';
import { KV } from '../../src/modelHost/checkpoint';
import { BadRequestError } from '../../src/modelHost/errors';
import { readDecoderSpec } from '../../src/domain/hfConfig';
import { loadCheckpoints } from '../../src/modelHost/loading';
import { resolveSettings } from '../../src/modelHost/runtime';
import { float32Weights, WeightIndex } from '../../src/modelHost/hf/weights';
import { FIXTURES, ROOT, tempDir } from '../helpers';

const HF = path.join(FIXTURES, 'hf');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const TEMPLATE = path.join(ROOT, 'examples', 'organisms', 'base');

/** A copy of a fixture checkpoint to break. */
function copy(name: string): string {
  const dir = path.join(tempDir(), name);
  fs.cpSync(path.join(HF, name), dir, { recursive: true });
  return dir;
}

async function loadError(base: string, finetuned?: string, cacheDir = tempDir()): Promise<CheckpointError> {
  try {
    const r = await loadCheckpoints(base, finetuned ? [['finetuned', finetuned]] : [], { cacheDir, log: () => {} });
    for (const c of [r.base, ...r.others.values()]) await c.release();
  } catch (e) {
    assert.ok(e instanceof CheckpointError, `not a CheckpointError: ${(e as Error).stack}`);
    assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
    return e;
  }
  assert.fail('loaded without an error');
}

/** Rewrites one tensor's dtype (and shape) in a safetensors header; the data section stays as it is. */
function setDtype(file: string, tensor: string, dtype: string, shape?: number[]): void {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  header[tensor].dtype = dtype;
  if (shape) header[tensor].shape = shape;
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, buf.subarray(8 + n)]));
}

describe('bad Hugging Face checkpoints', () => {
  it('a missing shard names the index and the absent file', async () => {
    const dir = copy('llama3-bf16-sharded-tied');
    fs.rmSync(path.join(dir, 'model-00002-of-00003.safetensors'));
    const e = await loadError(dir);
    assert.equal(e.file, path.join(dir, 'model.safetensors.index.json'));
    assert.match(e.message, /names model-00002-of-00003\.safetensors \(\d+ tensors\), but that file is missing/);
  });

  it('an index naming a file outside the folder, or a tensor the shard lacks, is refused', async () => {
    const dir = copy('llama3-bf16-sharded-tied');
    const indexFile = path.join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
    index.weight_map['model.norm.weight'] = '../elsewhere.safetensors';
    fs.writeFileSync(indexFile, JSON.stringify(index));
    assert.match(
      (await loadError(dir)).message,
      /"model\.norm\.weight" maps to "\.\.\/elsewhere\.safetensors", not a file name in this folder/,
    );
    index.weight_map['model.norm.weight'] = 'model-00001-of-00003.safetensors';
    index.weight_map['model.extra.weight'] = 'model-00001-of-00003.safetensors';
    fs.writeFileSync(indexFile, JSON.stringify(index));
    assert.match(
      (await loadError(dir)).message,
      /the index places "model\.(norm|extra)\.weight" in model-00001-of-00003\.safetensors, but that file's header has no such tensor/,
    );
  });

  it('a truncated safetensors file: a header length past the end, or data cut short', async () => {
    const dir = copy('llama');
    const file = path.join(dir, 'model.safetensors');
    const full = fs.readFileSync(file);
    fs.writeFileSync(file, full.subarray(0, 200));
    let e = await loadError(dir);
    assert.equal(e.file, file);
    assert.match(
      e.message,
      /truncated: the header says it is \d+ bytes long, but the file has 192 bytes after the length/,
    );
    fs.writeFileSync(file, full.subarray(0, full.length - 1000));
    e = await loadError(dir);
    assert.match(e.message, /lie outside the \d+-byte data section \(truncated file\?\)/);
    fs.writeFileSync(file, full.subarray(0, 5));
    assert.match((await loadError(dir)).message, /truncated: 5 bytes, shorter than the 8-byte header length/);
  });

  it('tensors that share bytes are refused, as the format forbids', async () => {
    const dir = copy('llama');
    const file = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    // the output head pointed at the embedding's bytes (same size): it would load and measure another model
    header['lm_head.weight'].data_offsets = header['model.embed_tokens.weight'].data_offsets;
    let json = Buffer.from(JSON.stringify(header));
    json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(file, Buffer.concat([len, json, buf.subarray(8 + n)]));
    const e = await loadError(dir);
    assert.equal(e.file, file);
    assert.match(
      e.message,
      /tensors "(lm_head|model\.embed_tokens)\.weight" and "(lm_head|model\.embed_tokens)\.weight" overlap .*the format forbids it/,
    );
  });

  it('an adapter of rank 0 is refused before it can make the shared session NaN', async () => {
    const dir = copy('llama-lora');
    const cfgFile = path.join(dir, 'adapter_config.json');
    const { tensors } = readSafetensors(path.join(dir, 'adapter_model.safetensors'));
    const empty: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [name, t] of Object.entries(tensors))
      empty[name] = name.includes('lora_A')
        ? { shape: [0, t.shape[1]], data: new Float32Array(0) }
        : { shape: [t.shape[0], 0], data: new Float32Array(0) };
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), empty);
    fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), r: 0 }));
    const e = await loadError(path.join(HF, 'llama'), dir);
    assert.equal(e.file, cfgFile);
    assert.match(e.message, /rank 0 and lora_alpha \d+ give no finite scale/);
  });

  it('an adapter that does not change the model says so at load, before any measurement', async () => {
    const load = async (adapter: string) => {
      const r = await loadCheckpoints(path.join(HF, 'llama'), [['finetuned', adapter]], {
        cacheDir: tempDir(),
        log: () => {},
      });
      const info = r.others.get('finetuned')!.info;
      for (const c of [r.base, ...r.others.values()]) await c.release();
      return info;
    };
    // all-zero lora_B: an adapter saved right after PEFT initialised it (it loads: an inert adapter is a fair
    // control, and is the base model in the base role)
    const untrained = copy('llama-lora');
    const weights = path.join(untrained, 'adapter_model.safetensors');
    const { tensors } = readSafetensors(weights);
    const zeroB = (keep: (name: string) => boolean) =>
      Object.fromEntries(
        Object.entries(tensors).map(([name, t]) => [
          name,
          { shape: t.shape, data: name.includes('lora_B') && !keep(name) ? new Float32Array(t.data.length) : t.data },
        ]),
      );
    writeSafetensors(
      weights,
      zeroB(() => false),
    );
    assert.match(
      (await load(untrained)).unchanged ?? '',
      /^this adapter does not change the model: every lora_B weight is zero, as PEFT initialises them.*its measurements will equal the base model's$/,
    );
    // the CLI says it before measuring
    const cli = spawnSync(
      process.execPath,
      [CLI, 'drift', '--base', path.join(HF, 'llama'), '--finetuned', untrained, '--template', TEMPLATE],
      { encoding: 'utf8' },
    );
    assert.match(cli.stderr, /warning: finetuned .*llama-lora: this adapter does not change the model/);
    // lora_alpha 0: every update scaled away
    const scaled = copy('llama-lora');
    const cfgFile = path.join(scaled, 'adapter_config.json');
    fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), lora_alpha: 0 }));
    assert.match((await load(scaled)).unchanged ?? '', /lora_alpha 0 makes the scale of every update 0/);
    // some modules inert, others trained: it changes the model, and its description says how many do nothing
    const partial = copy('llama-lora');
    const names = Object.keys(tensors).filter((n) => n.includes('lora_B'));
    writeSafetensors(
      path.join(partial, 'adapter_model.safetensors'),
      zeroB((n) => n === names[0]),
    );
    const info = await load(partial);
    assert.equal(info.unchanged, undefined);
    assert.match(info.description ?? '', new RegExp(`; ${names.length - 1} of them change nothing`));
  });

  it('sizes beyond any real model are refused from config.json alone, before a RoPE table or graph is built', async () => {
    for (const [key, value] of [
      ['num_hidden_layers', 100000],
      ['head_dim', 1e9],
      ['vocab_size', 2.5],
    ] as const) {
      const dir = copy('llama');
      const cfgFile = path.join(dir, 'config.json');
      fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), [key]: value }));
      const e = await loadError(dir);
      assert.equal(e.file, cfgFile);
      assert.match(e.message, new RegExp(`"${key}" is ${value}: (beyond any real model|not a whole number)`));
      // decided by reading config.json alone: the spec reader (which builds nothing) already refuses it
      assert.throws(
        () => readDecoderSpec(dir),
        (x: Error) => x.message === e.message,
      );
    }
  });

  it('a prompt longer than the context is refused before the graph runs, naming both lengths', async () => {
    const r = await loadCheckpoints(path.join(HF, 'llama'), [], { cacheDir: tempDir(), log: () => {} });
    try {
      const c = r.base;
      assert.equal(c.info.maxPositions, 128);
      const ids = Array.from({ length: 200 }, (_, i) => i % 60);
      await assert.rejects(
        c.forward(
          ids,
          ids.map((_, i) => i),
          KV.empty(c.info.layers, c.info.kvHeads, c.info.headDim),
        ),
        (e: Error) =>
          e instanceof BadRequestError && /200 tokens is longer than the model's context of 128/.test(e.message),
      );
    } finally {
      await r.base.release();
    }
  });

  it('a header that is not JSON', async () => {
    const dir = copy('llama');
    const file = path.join(dir, 'model.safetensors');
    const full = fs.readFileSync(file);
    full.fill(0x7b, 8, 30); // '{{{{...': not JSON
    fs.writeFileSync(file, full);
    const e = await loadError(dir);
    assert.equal(e.file, file);
    assert.match(e.message, /the header is not valid JSON/);
  });

  it('unsupported dtypes (F8, I8, packed 4-bit) and quantization configs are named, not converted', async () => {
    for (const dtype of ['F8_E4M3', 'I8']) {
      const dir = copy('llama');
      // these are 1-byte types: give the tensor a shape whose byte count matches its float32 data
      setDtype(path.join(dir, 'model.safetensors'), 'model.layers.0.mlp.up_proj.weight', dtype, [48, 128]);
      const e = await loadError(dir);
      assert.match(
        e.message,
        new RegExp(`"model.layers.0.mlp.up_proj.weight" (is ${dtype}; only F32, F16 and BF16|has shape \\[48,128\\])`),
      );
    }
    const packed = copy('llama');
    // bitsandbytes 4-bit: uint8 storage of two values per byte
    setDtype(path.join(packed, 'model.safetensors'), 'model.layers.1.self_attn.q_proj.weight', 'U8', [4096]);
    assert.match(
      (await loadError(packed)).message,
      /"model\.layers\.1\.self_attn\.q_proj\.weight" (is U8|has shape \[4096\])/,
    );
    const quantized = copy('llama');
    const cfg = JSON.parse(fs.readFileSync(path.join(quantized, 'config.json'), 'utf8'));
    cfg.quantization_config = { quant_method: 'bitsandbytes', load_in_4bit: true };
    fs.writeFileSync(path.join(quantized, 'config.json'), JSON.stringify(cfg));
    const e = await loadError(quantized);
    assert.equal(e.file, path.join(quantized, 'config.json'));
    assert.match(e.message, /quantized weights \(bitsandbytes\) are not supported/);
  });

  it('unsupported architectures and RoPE types say what is supported and the ONNX route', async () => {
    const gpt2 = copy('llama');
    fs.writeFileSync(path.join(gpt2, 'config.json'), JSON.stringify({ model_type: 'gpt2', n_embd: 32 }));
    assert.match(
      (await loadError(gpt2)).message,
      /model_type "gpt2" is not supported; supported: llama, mistral, qwen2, qwen3; for other architectures export an ONNX decoder .*optimum-cli export onnx --task text-generation-with-past/,
    );
    const yarn = copy('llama');
    const cfg = JSON.parse(fs.readFileSync(path.join(yarn, 'config.json'), 'utf8'));
    cfg.rope_scaling = { rope_type: 'yarn', factor: 4 };
    fs.writeFileSync(path.join(yarn, 'config.json'), JSON.stringify(cfg));
    assert.match((await loadError(yarn)).message, /rope scaling type "yarn" is not supported/);
    const pickle = tempDir();
    fs.copyFileSync(path.join(HF, 'llama', 'config.json'), path.join(pickle, 'config.json'));
    fs.writeFileSync(path.join(pickle, 'pytorch_model.bin'), 'never unpickled');
    const e = await loadError(pickle);
    assert.equal(e.file, path.join(pickle, 'pytorch_model.bin'));
    assert.match(e.message, /only pytorch_model\.bin here: that is a Python pickle, which is never unpickled/);
  });

  it('adapters: given as the base, over a base they do not fit, with unsupported PEFT features', async () => {
    const adapter = path.join(HF, 'llama-lora');
    let e = await loadError(adapter, adapter);
    // an adapter can be the base only over the model it was trained on: "tiny/base" is no folder and not in the cache
    assert.match(
      e.message,
      /this adapter was trained over "tiny\/base", which is neither a model folder here nor a download in the Hugging Face cache .*: download it there \(huggingface-cli download tiny\/base\), or set base_model_name_or_path/,
    );
    assert.equal(e.file, path.join(adapter, 'adapter_config.json'));
    // target modules the base does not have
    const foreign = copy('llama-lora');
    const cfgFile = path.join(foreign, 'adapter_config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
    fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, target_modules: ['c_attn', 'c_proj'] }));
    e = await loadError(path.join(HF, 'llama'), foreign);
    assert.equal(e.file, cfgFile);
    assert.match(e.message, /target_modules \["c_attn","c_proj"\] match no module of the base model/);
    // shapes that do not fit the base (the qwen3 fixture has other widths)
    e = await loadError(path.join(HF, 'qwen3-qknorm-headdim'), adapter);
    assert.match(
      e.message,
      /module "model\.layers\.\d\.(self_attn|mlp)\.\w+_proj": lora_A \[4,32\] and lora_B \[\d+,4\] do not fit the base weight/,
    );
    for (const [key, value, pattern] of [
      ['use_dora', true, /DoRA \(use_dora\) is not supported/],
      ['modules_to_save', ['lm_head'], /modules_to_save \(lm_head\) is not supported/],
      ['peft_type', 'IA3', /peft_type "IA3" is not supported/],
      ['r', 16, /adapter_config.json gives r 16, the weights have rank 4/],
    ] as const) {
      fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, [key]: value }));
      assert.match((await loadError(path.join(HF, 'llama'), foreign)).message, pattern);
    }
    // an adapter over an ONNX export
    e = await loadError(path.join(ROOT, 'examples', 'organisms', 'base', 'onnx'), adapter);
    assert.match(e.message, /a LoRA adapter applies to a Hugging Face base folder/);
  });

  it('the CLI: one line naming the file and the cause, exit 1, no stack trace', () => {
    const dir = copy('llama');
    fs.writeFileSync(path.join(dir, 'model.safetensors'), Buffer.alloc(3));
    const r = spawnSync(
      process.execPath,
      [
        CLI,
        'drift',
        '--base',
        dir,
        '--finetuned',
        path.join(HF, 'llama'),
        '--template',
        TEMPLATE,
        '--cache-dir',
        tempDir(),
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 1, r.stderr);
    const lines = r.stderr.trim().split('\n');
    // the progress line, then the error: one line naming the file and the cause
    assert.deepEqual(lines, [
      'loading llama, llama...',
      `piggyback: ${path.join(dir, 'model.safetensors')}: truncated: 3 bytes, shorter than the 8-byte header length`,
    ]);
  });

  it('a conversion that fails half-way leaves nothing in the cache', () => {
    const dir = copy('qwen2-f16-bias-newer-config');
    const index = WeightIndex.open(dir);
    const refs = [...index.names()].map((n) => index.get(n)!);
    // the file shrinks under the converter (another program rewrote it): the last tensor cannot be read whole
    const last = refs.reduce((a, b) => (b.end > a.end ? b : a));
    fs.truncateSync(last.file, last.end - 10);
    const cacheDir = tempDir();
    assert.throws(() => float32Weights(refs, cacheDir, () => {}), /the file ended early/);
    assert.deepEqual(fs.readdirSync(path.join(cacheDir, 'weights')), []);
  });

  it('memory guard: a load that will not fit is refused with the numbers, unless the check is turned off', async () => {
    const base = path.join(ROOT, 'examples', 'organisms', 'base');
    const adapter = path.join(ROOT, 'examples', 'organisms', 'finetuned');
    const opts = { cacheDir: tempDir(), log: () => {}, availableMemory: 5e6 };
    await assert.rejects(
      loadCheckpoints(base, [['finetuned', adapter]], opts),
      (e: unknown) =>
        e instanceof CheckpointError &&
        /^.*: no weights dtype fits in memory: float32 would need \d+\.\d MB, int8 would need \d+\.\d MB, int4 would need \d+\.\d MB, and only 5\.0 MB is available\. Run on a GPU .*--no-memory-check/.test(
          e.message,
        ),
    );
    // an explicit dtype: the estimate's parts are named
    await assert.rejects(
      loadCheckpoints(base, [['finetuned', adapter]], {
        ...opts,
        settings: resolveSettings({ weightsDtype: 'float32', executionProvider: 'cpu' }),
      }),
      (e: unknown) =>
        e instanceof CheckpointError &&
        /^.*: loading needs about \d+\.\d MB as float32 \(base \d+\.\d MB \+ finetuned \d+\.\d MB: weights, K\/V for 4096 tokens, logits, activations\), but only 5\.0 MB of memory is available; no smaller dtype fits either/.test(
          e.message,
        ),
    );
    const r = await loadCheckpoints(base, [['finetuned', adapter]], { ...opts, memoryCheck: false });
    for (const c of [r.base, ...r.others.values()]) await c.release();
  });
});
