/**
 * The measurements of the paper on ONNX checkpoints: K/V drift, K/V patching, teacher-forced scores,
 * perturbation, generation, and the parity checks that keep them honest. Definitions: the README's "The model host
 * and what it measures" (drift, patching, the share), after arXiv 2606.06667.
 */
import type {
  Condition,
  DriftResult,
  ExportKVParams,
  ExportKVResult,
  GenerateParams,
  ParityResult,
  PatchParams,
  PatchResult,
  PatchSpan,
  PerturbParams,
  PerturbResult,
  PromptIds,
  ScoreParams,
  ScoreResult,
  SegmentDrift,
  Span,
} from '../contracts/modelHost';
import { BadRequestError, CancelledError } from './errors';
import { argmax, kl, logSoftmax, maxAbsDiff, mean, mulberry32, rotateKeys, sample } from './numerics';
import { DEFAULT_MAX_NEW_TOKENS, type PromptSegment } from '../contracts/modelHost';
import { queryControlFits } from '../domain/prompt';
import { type Tensor, writeSafetensors } from '../domain/safetensors';
import { type Checkpoint, KV } from './checkpoint';

export interface OpContext {
  isCancelled(): boolean;
  progress(done: number, total: number, message?: string): void;
}

export { BadRequestError, CancelledError } from './errors';

const range = (a: number, b: number) => Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i);

export function checkPrompt(p: PromptIds): void {
  const L = p.ids.length;
  const ok = p.prefix[0] === 0 && p.prefix[1] === p.query[0] && p.query[1] === p.postfix[0] && p.postfix[1] === L;
  if (!ok || L === 0)
    throw new BadRequestError(
      `segments must tile the prompt: prefix [0,P), query [P,Q), postfix [Q,${L}); got ${JSON.stringify([p.prefix, p.query, p.postfix])}`,
    );
}

/**
 * Which token positions a patch replaces. The query control (the paper's) patches exactly as many query positions
 * as the prefix has, from the query's start, so that "more positions" cannot explain a prefix effect; a query with
 * fewer tokens than the prefix has no such control (a BadRequestError; eval runs leave those probes out of it).
 */
export function patchedPositions(p: PromptIds, span: PatchSpan | undefined): number[] {
  if (!span) return [];
  const [P, Q, L] = [p.prefix[1], p.query[1], p.ids.length];
  if (span === 'prefix') return range(0, P);
  if (span === 'postfix') return range(Q, L);
  if (span === 'both') return [...range(0, P), ...range(Q, L)];
  if (!queryControlFits(p))
    throw new BadRequestError(
      `the query control patches as many query tokens as the prefix has (${P}), but this query has ${Q - P}`,
    );
  return range(P, 2 * P);
}

export class LoadedModels {
  private readonly prefixCache = new Map<string, KV>();
  constructor(
    readonly base: Checkpoint,
    private readonly byName: Map<string, Checkpoint>,
  ) {}

  get(name: string): Checkpoint {
    if (name === 'base') return this.base;
    const m = this.byName.get(name);
    if (!m)
      throw new BadRequestError(
        `no checkpoint named "${name}" is loaded (have: base, ${[...this.byName.keys()].join(', ')})`,
      );
    return m;
  }

  /**
   * The reference K/V for patched positions, from `ref` (the base model unless a parity check says otherwise):
   * prefix: ref on the prefix alone (query-independent: computed once per prefix and reused for every probe);
   * postfix: ref on prefix + postfix with an empty query (contiguous positions), keys rotated to the postfix's real
   * positions (the paper's method); query control: ref on prefix + query.
   */
  async reference(ref: Checkpoint, p: PromptIds, span: PromptSegment, refName: string): Promise<KV> {
    const [P, Q, L] = [p.prefix[1], p.query[1], p.ids.length];
    if (span === 'prefix') {
      const key = `${refName}|${p.ids.slice(0, P).join(',')}`;
      let kv = this.prefixCache.get(key);
      if (!kv) {
        kv = (await ref.forward(p.ids.slice(0, P), range(0, P), empty(ref), 1)).kv;
        if (this.prefixCache.size > 64) this.prefixCache.clear();
        this.prefixCache.set(key, kv);
      }
      return kv;
    }
    if (span === 'postfix') {
      // the paper's reference: the base with an empty query, where the postfix follows the prefix directly; its keys
      // are then rotated to the postfix's real positions (values carry no position). Running the postfix at its real
      // positions after a gap instead gives other hidden states: a different quantity.
      const prefix = await this.reference(ref, p, 'prefix', refName);
      const invFreq = ref.info.ropeInvFreq;
      if (!invFreq)
        throw new BadRequestError(
          `postfix patching needs the checkpoint's RoPE settings (rope_theta / rope_scaling in config.json) to move the base postfix keys to their positions; ${ref.info.folder} has none the host can read`,
        );
      const contiguous = (await ref.forward(p.ids.slice(Q, L), range(P, P + (L - Q)), prefix, 1)).kv;
      return rotateKeys(contiguous, invFreq, Q - P);
    }
    if (!queryControlFits(p))
      throw new BadRequestError(
        `the query control patches as many query tokens as the prefix has (${P}), but this query has ${Q - P}`,
      );
    const out = await ref.forward(p.ids.slice(0, 2 * P), range(0, 2 * P), empty(ref), 1);
    return out.kv.slice(P, 2 * P);
  }

  /**
   * Prefill with optional patching. Chunks follow the segments; patched chunks take the reference K/V instead of
   * running the model. The last prompt token always runs on its own so that the first response distribution comes
   * from the model reading the (patched) cache; if it lies in a patched span its own K/V are replaced too, so that
   * decoding reads the patched cache at every patched position. Unpatched conditions use the same schedule, which
   * makes "patch a model with its own K/V" exactly equal to no patch.
   */
  async prefill(
    model: Checkpoint,
    p: PromptIds,
    span?: PatchSpan,
    refModel?: Checkpoint,
    refName = 'base',
    layers?: readonly number[],
  ): Promise<{ cache: KV; logits: Float32Array; vocab: number; patched: number[] }> {
    checkPrompt(p);
    const ref = refModel ?? this.base;
    const some = patchedLayers(model, span, layers);
    const L = p.ids.length;
    const patched = new Set(patchedPositions(p, span));
    const refs: { span: PromptSegment; start: number; kv: KV }[] = [];
    if (span === 'prefix' || span === 'both')
      refs.push({ span: 'prefix', start: 0, kv: await this.reference(ref, p, 'prefix', refName) });
    if (span === 'postfix' || span === 'both')
      refs.push({ span: 'postfix', start: p.query[1], kv: await this.reference(ref, p, 'postfix', refName) });
    if (span === 'query')
      refs.push({ span: 'query', start: p.prefix[1], kv: await this.reference(ref, p, 'query', refName) });
    // a chunk never straddles two spans (chunks are cut at segment edges), so one reference holds it whole
    const refRange = (s: number, e: number) => {
      const r = refs.find((x) => s >= x.start && e <= x.start + x.kv.length)!;
      return r.kv.slice(s - r.start, e - r.start);
    };
    // chunk boundaries: segment edges and patched/unpatched edges, then the last token alone
    const cuts = new Set([0, p.prefix[1], p.query[1], L - 1, L]);
    for (let i = 1; i < L; i++) if (patched.has(i) !== patched.has(i - 1)) cuts.add(i);
    const edges = [...cuts].filter((x) => x >= 0 && x <= L).sort((a, b) => a - b);
    let cache = empty(model);
    let last: { logits: Float32Array; vocab: number } | undefined;
    for (let c = 0; c + 1 < edges.length; c++) {
      const [s, e] = [edges[c], edges[c + 1]];
      if (s === e) continue;
      const isLast = e === L;
      if (patched.has(s) && !isLast && !some) {
        cache = cache.concat(refRange(s, e));
        continue;
      }
      // only the prompt's last token's logits are read: the others are not materialised where the graph allows
      const out = await model.forward(p.ids.slice(s, e), range(s, e), cache, 1);
      let kv = out.kv;
      if (patched.has(s)) kv = some ? kv.withLayersOf(refRange(s, e), some) : refRange(s, e);
      cache = cache.concat(kv);
      if (isLast) last = { logits: out.logits.subarray((out.rows - 1) * out.vocab), vocab: out.vocab };
    }
    return { cache, logits: last!.logits, vocab: last!.vocab, patched: [...patched].sort((a, b) => a - b) };
  }

  /** Log-softmax distributions over a teacher-forced continuation: row i predicts continuation[i]. */
  async teacherForce(
    model: Checkpoint,
    pre: { cache: KV; logits: Float32Array; vocab: number },
    start: number,
    continuation: number[],
  ): Promise<Float32Array[]> {
    const rows = [logSoftmax(pre.logits, pre.vocab)];
    if (continuation.length > 1) {
      const out = await model.forward(
        continuation.slice(0, -1),
        range(start, start + continuation.length - 1),
        pre.cache,
      );
      for (let i = 0; i < continuation.length - 1; i++)
        rows.push(logSoftmax(out.logits.subarray(i * out.vocab, (i + 1) * out.vocab), out.vocab));
    }
    return rows;
  }

  async generate(
    model: Checkpoint,
    pre: { cache: KV; logits: Float32Array; vocab: number },
    start: number,
    maxNew: number,
    ctx: OpContext,
    temperature = 0,
    seed = 0,
  ): Promise<number[]> {
    const eos = new Set(model.info.eosTokenIds);
    // never past the model's context: positions beyond it were never trained (and RoPE tables may end there)
    if (model.info.maxPositions !== undefined) maxNew = Math.max(0, Math.min(maxNew, model.info.maxPositions - start));
    const rng = mulberry32(seed);
    let logits = pre.logits;
    let cache = pre.cache;
    const out: number[] = [];
    for (let i = 0; i < maxNew; i++) {
      if (ctx.isCancelled()) throw new CancelledError();
      const next = temperature > 0 ? sample(logits, temperature, rng) : argmax(logits);
      out.push(next);
      if (eos.has(next)) break;
      const step = await model.forward([next], [start + i], cache);
      cache = cache.concat(step.kv);
      logits = step.logits;
    }
    return out;
  }
}

/** The layers a patch replaces when it names some (a set), or undefined for all; checked against the model. */
function patchedLayers(
  model: Checkpoint,
  span: PatchSpan | undefined,
  layers: readonly number[] | undefined,
): ReadonlySet<number> | undefined {
  if (layers === undefined) return undefined;
  if (!span) throw new BadRequestError('layers needs a patch span');
  const n = model.info.layers;
  const bad = layers.filter((l) => !Number.isInteger(l) || l < 0 || l >= n);
  if (!layers.length || bad.length)
    throw new BadRequestError(`layers must be 0-based layer numbers below ${n}, got ${JSON.stringify(layers)}`);
  return layers.length === n ? undefined : new Set(layers);
}

function empty(m: Checkpoint): KV {
  return KV.empty(m.info.layers, m.info.kvHeads, m.info.headDim);
}

// ------------------------------------------------------------------------------------------------ operations

export async function drift(
  models: LoadedModels,
  prompt: PromptIds,
  against: string,
  ctx: OpContext,
): Promise<DriftResult> {
  checkPrompt(prompt);
  const other = models.get(against);
  const L = prompt.ids.length;
  ctx.progress(0, 2, 'base');
  const a = await models.base.forward(prompt.ids, range(0, L), empty(models.base), 1);
  if (ctx.isCancelled()) throw new CancelledError();
  ctx.progress(1, 2, against);
  const b = await other.forward(prompt.ids, range(0, L), empty(other), 1);
  ctx.progress(2, 2);
  const layers = models.base.info.layers;
  const perToken = (which: 'k' | 'v', pos: number) =>
    Array.from({ length: layers }, (_, l) => {
      const x = b.kv.vector(l, which, pos);
      const x0 = a.kv.vector(l, which, pos);
      let num = 0;
      let den = 0;
      let dot = 0;
      let nx = 0;
      for (let i = 0; i < x.length; i++) {
        const d = x[i] - x0[i];
        num += d * d;
        den += x0[i] * x0[i];
        dot += x[i] * x0[i];
        nx += x[i] * x[i];
      }
      return { rel: den > 0 ? num / den : 0, cos: den > 0 && nx > 0 ? 1 - dot / Math.sqrt(den * nx) : 0 };
    });
  const segment = (span: Span): SegmentDrift => {
    const positions = range(span[0], span[1]);
    const k = positions.map((pos) => perToken('k', pos));
    const v = positions.map((pos) => perToken('v', pos));
    const byLayer = (rows: { rel: number; cos: number }[][], f: 'rel' | 'cos') =>
      Array.from({ length: layers }, (_, l) => rows.map((r) => r[l][f]));
    const key = byLayer(k, 'rel');
    const value = byLayer(v, 'rel');
    const treft = (skip0: boolean) => {
      const idx = positions.map((p, i) => (skip0 && p === 0 ? -1 : i)).filter((i) => i >= 0);
      if (idx.length === 0) return null;
      let total = 0;
      for (let l = 0; l < layers; l++) total += mean(idx.map((i) => key[l][i])) + mean(idx.map((i) => value[l][i]));
      return total / layers;
    };
    return {
      positions,
      key,
      value,
      keyCosine: byLayer(k, 'cos'),
      valueCosine: byLayer(v, 'cos'),
      mean: treft(false) ?? 0,
      meanExcludingPosition0: treft(true),
    };
  };
  const prefix = segment(prompt.prefix);
  const p0 = L > 0 ? { key: perToken('k', 0).map((x) => x.rel), value: perToken('v', 0).map((x) => x.rel) } : null;
  return {
    layers,
    segments: { prefix, query: segment(prompt.query), postfix: segment(prompt.postfix) },
    position0: p0,
    treft: prefix.mean,
  };
}

export async function patch(models: LoadedModels, params: PatchParams, ctx: OpContext): Promise<PatchResult> {
  const target = models.get(params.target ?? 'finetuned');
  const p = params.prompt;
  const L = p.ids.length;
  const maxNew = params.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
  const total = 6;
  ctx.progress(0, total, 'base prefill');
  const basePre = await models.prefill(models.base, p);
  const ftPre = await models.prefill(target, p);
  const patchedPre = await models.prefill(target, p, params.span);
  ctx.progress(1, total, 'generating (base)');
  const gBase = await models.generate(models.base, basePre, L, maxNew, ctx);
  ctx.progress(2, total, 'generating (finetuned)');
  const gFt = await models.generate(target, ftPre, L, maxNew, ctx);
  ctx.progress(3, total, 'generating (patched)');
  const gPatched = await models.generate(target, patchedPre, L, maxNew, ctx);
  const response = params.responseIds ?? gBase;
  ctx.progress(4, total, 'distributions');
  const dBase = await models.teacherForce(models.base, basePre, L, response);
  const dFt = await models.teacherForce(target, ftPre, L, response);
  const dPatched = await models.teacherForce(target, patchedPre, L, response);
  ctx.progress(5, total);
  const klFt = dBase.map((row, i) => kl(row, dFt[i]));
  const klPatched = dBase.map((row, i) => kl(row, dPatched[i]));
  ctx.progress(total, total);
  return {
    span: params.span,
    patchedPositions: patchedPre.patched,
    responseIds: response,
    kl: { finetuned: mean(klFt), patched: mean(klPatched) },
    klPerPosition: { finetuned: klFt, patched: klPatched },
    generations: { base: gBase, finetuned: gFt, patched: gPatched },
  };
}

export async function score(models: LoadedModels, params: ScoreParams, ctx: OpContext): Promise<ScoreResult> {
  const p = params.prompt;
  const L = p.ids.length;
  if (params.continuations.length === 0) throw new BadRequestError('score needs at least one continuation');
  const bp = params.basePrompt ?? p;
  const basePre = await models.prefill(models.base, bp);
  const baseRows = await models.teacherForce(models.base, basePre, bp.ids.length, params.continuations[0]);
  const logprob: number[][] = [];
  const klToBase: number[] = [];
  let done = 0;
  for (const c of params.conditions) {
    const model = models.get(c.model);
    const pre =
      c.model === 'base' && !c.patch && bp === p
        ? basePre
        : await models.prefill(model, p, c.patch, undefined, 'base', c.layers);
    const row: number[] = [];
    for (const cont of params.continuations) {
      if (ctx.isCancelled()) throw new CancelledError();
      const dist = await models.teacherForce(model, pre, L, cont);
      row.push(cont.reduce((s, id, i) => s + dist[i][id], 0));
      if (cont === params.continuations[0]) klToBase.push(mean(baseRows.map((r, i) => kl(r, dist[i]))));
    }
    logprob.push(row);
    ctx.progress(++done, params.conditions.length);
  }
  return { logprob, klToBase };
}

const embeddingCache = new WeakMap<
  Checkpoint,
  { rows: number; dim: number; data: Float32Array; norms: Float32Array; source: string }
>();

/** The paper's perturbation: random positions of a segment, each replaced by one of its top-k cosine neighbours. */
export async function perturb(models: LoadedModels, params: PerturbParams, ctx: OpContext): Promise<PerturbResult> {
  const model = models.get(params.model ?? 'finetuned');
  const p = params.prompt;
  checkPrompt(p);
  let emb = embeddingCache.get(model);
  if (!emb) {
    const e = model.embeddings();
    const norms = new Float32Array(e.rows);
    for (let r = 0; r < e.rows; r++) {
      let s = 0;
      for (let j = 0; j < e.dim; j++) s += e.data[r * e.dim + j] ** 2;
      norms[r] = Math.sqrt(s);
    }
    emb = { ...e, norms };
    embeddingCache.set(model, emb);
  }
  const E = emb;
  const neighbours = (id: number, k: number): number[] => {
    const best: { id: number; sim: number }[] = [];
    const row = E.data.subarray(id * E.dim, (id + 1) * E.dim);
    for (let r = 0; r < E.rows; r++) {
      if (r === id || E.norms[r] === 0) continue;
      let dot = 0;
      const o = r * E.dim;
      for (let j = 0; j < E.dim; j++) dot += row[j] * E.data[o + j];
      const sim = dot / (E.norms[id] * E.norms[r]);
      if (best.length < k || sim > best[best.length - 1].sim) {
        best.push({ id: r, sim });
        best.sort((a, b) => b.sim - a.sim);
        if (best.length > k) best.pop();
      }
    }
    return best.map((b) => b.id);
  };
  const span = p[params.segment];
  const positions = range(span[0], span[1]);
  const count = Math.min(params.positions ?? 10, positions.length);
  const k = params.neighbours ?? 5;
  const trials = params.trials ?? 10;
  const rng = mulberry32(params.seed ?? 0);
  const L = p.ids.length;
  const margin = async (ids: number[]): Promise<number | null> => {
    if (!params.aligned || !params.misaligned) return null;
    const q = { ...p, ids };
    const pre = await models.prefill(model, q);
    const a = await models.teacherForce(model, pre, L, params.aligned);
    const m = await models.teacherForce(model, pre, L, params.misaligned);
    return (
      params.aligned.reduce((s, id, i) => s + a[i][id], 0) - params.misaligned.reduce((s, id, i) => s + m[i][id], 0)
    );
  };
  const baselineMargin = await margin(p.ids);
  const out: PerturbResult['trials'] = [];
  for (let t = 0; t < trials; t++) {
    if (ctx.isCancelled()) throw new CancelledError();
    const pool = positions.slice();
    const changed: number[] = [];
    for (let i = 0; i < count; i++) changed.push(pool.splice(Math.floor(rng() * pool.length), 1)[0]);
    changed.sort((a, b) => a - b);
    const ids = p.ids.slice();
    for (const pos of changed) {
      const cands = neighbours(ids[pos], k);
      if (cands.length) ids[pos] = cands[Math.floor(rng() * cands.length)];
    }
    out.push({ ids, changed, margin: await margin(ids) });
    ctx.progress(t + 1, trials);
  }
  const margins = out.map((t) => t.margin).filter((m): m is number => m !== null);
  return {
    baselineMargin,
    trials: out,
    best: margins.length ? Math.max(...margins) : null,
    avg: margins.length ? mean(margins) : null,
    embedding: { source: E.source, rows: E.rows, dim: E.dim },
  };
}

export async function generate(models: LoadedModels, params: GenerateParams, ctx: OpContext): Promise<number[]> {
  const c: Condition = params.condition;
  const model = models.get(c.model);
  const pre = await models.prefill(model, params.prompt, c.patch, undefined, 'base', c.layers);
  return models.generate(
    model,
    pre,
    params.prompt.ids.length,
    params.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
    ctx,
    params.temperature ?? 0,
    params.seed ?? 0,
  );
}

/** The K/V of each prefix, run alone from position 0 (what patching uses), written as safetensors. */
export async function exportKV(models: LoadedModels, params: ExportKVParams, ctx: OpContext): Promise<ExportKVResult> {
  const model = models.get(params.model ?? 'base');
  const { layers, kvHeads, headDim } = model.info;
  const tensors: Record<string, Tensor> = {};
  const metadata: Record<string, string> = {
    ...params.metadata,
    layout: 'prefix.{g}.layers.{l}.{key|value}: float32 [kv_heads, P, head_dim]',
    checkpoint: model.info.hash,
  };
  for (let g = 0; g < params.prefixes.length; g++) {
    if (ctx.isCancelled()) throw new CancelledError();
    const ids = params.prefixes[g];
    if (ids.length === 0) throw new BadRequestError(`prefix ${g} is empty`);
    const kv = (await model.forward(ids, range(0, ids.length), empty(model), 1)).kv;
    kv.layers.forEach((l, i) => {
      tensors[`prefix.${g}.layers.${i}.key`] = { shape: [kvHeads, ids.length, headDim], data: l.k };
      tensors[`prefix.${g}.layers.${i}.value`] = { shape: [kvHeads, ids.length, headDim], data: l.v };
    });
    metadata[`prefix.${g}.ids`] = JSON.stringify(ids);
    ctx.progress(g + 1, params.prefixes.length);
  }
  const bytes = writeSafetensors(params.file, tensors, metadata);
  return { file: params.file, bytes, layers, kvHeads, headDim };
}

export async function parity(models: LoadedModels, p: PromptIds, targetName = 'finetuned'): Promise<ParityResult> {
  checkPrompt(p);
  const L = p.ids.length;
  const P = p.prefix[1];
  const prefixThenRestVsFull: Record<string, number> = {};
  const target = models.get(targetName);
  for (const [name, m] of [
    ['base', models.base],
    [targetName, target],
  ] as const) {
    const full = await m.forward(p.ids, range(0, L), empty(m));
    const head = await m.forward(p.ids.slice(0, P), range(0, P), empty(m));
    const rest = await m.forward(p.ids.slice(P), range(P, L), head.kv);
    prefixThenRestVsFull[name] = maxAbsDiff(full.logits.subarray(P * full.vocab), rest.logits);
  }
  const plain = await models.prefill(target, p);
  const self = await models.prefill(target, p, 'prefix', target, `self:${targetName}`);
  const basePlain = await models.prefill(models.base, p);
  const baseSelf = await models.prefill(models.base, p, 'prefix', models.base, 'base');
  return {
    prefixThenRestVsFull,
    selfPatch: maxAbsDiff(plain.logits, self.logits),
    baseIntoBase: maxAbsDiff(basePlain.logits, baseSelf.logits),
  };
}

// ------------------------------------------------------------------------------------------------ numerics
