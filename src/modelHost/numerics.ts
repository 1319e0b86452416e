/**
 * The numerics under the paper's operations, apart from them: log-softmax, KL, greedy and sampled decoding with a
 * seeded generator, and RoPE rotation of cached keys. No checkpoint and no protocol here.
 */
import { BadRequestError } from './errors';
import { KV } from './checkpoint';

/**
 * Moves cached keys `delta` positions on: RoPE (Hugging Face's rotate-half layout) composes, so a key computed at
 * position p becomes the key at p + delta by one more rotation of each pair (j, j + d/2) by delta * inv_freq[j].
 */
export function rotateKeys(kv: KV, invFreq: number[], delta: number): KV {
  const d = kv.dim;
  const half = d / 2;
  if (invFreq.length !== half)
    throw new BadRequestError(`RoPE has ${invFreq.length} frequencies, the keys have ${d} dimensions`);
  const cos = invFreq.map((f) => Math.cos(delta * f));
  const sin = invFreq.map((f) => Math.sin(delta * f));
  const layers = kv.layers.map(({ k, v }) => {
    const out = new Float32Array(k.length);
    for (let base = 0; base < k.length; base += d) {
      for (let j = 0; j < half; j++) {
        const x1 = k[base + j];
        const x2 = k[base + j + half];
        out[base + j] = x1 * cos[j] - x2 * sin[j];
        out[base + j + half] = x2 * cos[j] + x1 * sin[j];
      }
    }
    return { k: out, v };
  });
  return new KV(layers, kv.length, kv.heads, kv.dim);
}

export function logSoftmax(logits: Float32Array, vocab: number): Float32Array {
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < vocab; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const out = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) out[i] = logits[i] - lse;
  return out;
}

/** KL(p || q) for log-probability vectors. */
export function kl(logp: Float32Array, logq: Float32Array): number {
  let s = 0;
  for (let i = 0; i < logp.length; i++) {
    const pi = Math.exp(logp[i]);
    if (pi > 0) s += pi * (logp[i] - logq[i]);
  }
  return Math.max(0, s);
}

export function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

export function sample(logits: Float32Array, temperature: number, rng: () => number): number {
  const lp = logSoftmax(
    logits.map((x) => x / temperature),
    logits.length,
  );
  let r = rng();
  for (let i = 0; i < lp.length; i++) {
    r -= Math.exp(lp[i]);
    if (r <= 0) return i;
  }
  return lp.length - 1;
}

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
