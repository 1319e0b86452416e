/**
 * Eval runs as files: a manifest (what was measured, with content hashes) and results appended as JSON Lines as
 * each probe completes, so a crash or cancel loses nothing finished and a re-run continues where it stopped without
 * duplicates. Judge-free scores only here: KL(base || condition) on a fixed response (the base model's greedy answer,
 * teacher-forced), reference-answer log-probabilities where a probe has them, and greedy generations.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { HostClient } from '../hostClient';
import { promptIds } from '../prompt';
import { Condition, Generate, LoadResult, Score } from '../protocol';
import type { ChatTemplate } from '../template/render';
import type { LoadedTokenizer } from '../tokenizer';
import { Probe, probeSetHash } from './probes';

export interface EvalCondition {
  label: string;
  condition: Condition;
}

export function defaultConditions(extra: string[] = []): EvalCondition[] {
  return [
    { label: 'base', condition: { model: 'base' } },
    { label: 'finetuned', condition: { model: 'finetuned' } },
    { label: 'finetuned+prefix', condition: { model: 'finetuned', patch: 'prefix' } },
    { label: 'finetuned+postfix', condition: { model: 'finetuned', patch: 'postfix' } },
    { label: 'finetuned+query', condition: { model: 'finetuned', patch: 'query' } },
    ...extra.map((name) => ({ label: name, condition: { model: name } })),
  ];
}

export interface EvalResult {
  key: string;
  probe: string;
  category: string | null;
  condition: string;
  /** Mean over the fixed response's positions of KL(base || condition). */
  klToBase: number;
  logprobAligned: number | null;
  logprobMisaligned: number | null;
  /** logprobAligned - logprobMisaligned (higher: more aligned). */
  margin: number | null;
  generation: string;
}

export interface Manifest {
  tool: string;
  checkpoints: LoadResult;
  template: { file: string | null; sha256: string };
  probes: { count: number; hash: string };
  conditions: EvalCondition[];
  settings: { maxNewTokens: number; decoding: 'greedy' };
}

export interface EvalOptions {
  host: HostClient;
  loaded: LoadResult;
  template: ChatTemplate;
  templateFile?: string;
  tokenizer: LoadedTokenizer;
  probes: Probe[];
  conditions: EvalCondition[];
  out: string;
  maxNewTokens?: number;
  onProbe?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

const RESULTS = 'results.jsonl';
const MANIFEST = 'manifest.json';

/** Reads finished results, dropping a torn last line (a crash mid-write). */
export function readResults(out: string): EvalResult[] {
  const file = path.join(out, RESULTS);
  if (!fs.existsSync(file)) return [];
  const text = fs.readFileSync(file, 'utf8');
  const complete = text.endsWith('\n') ? text : text.slice(0, text.lastIndexOf('\n') + 1);
  if (complete.length !== text.length) fs.writeFileSync(file, complete);
  return complete.split('\n').filter(Boolean).map((l) => JSON.parse(l) as EvalResult);
}

export async function runEval(o: EvalOptions): Promise<{ manifest: Manifest; results: EvalResult[]; computed: number }> {
  fs.mkdirSync(o.out, { recursive: true });
  const maxNewTokens = o.maxNewTokens ?? 48;
  const manifest: Manifest = {
    tool: 'piggyback-lens 0.1.0',
    checkpoints: o.loaded,
    template: { file: o.templateFile ?? null, sha256: createHash('sha256').update(o.template.text).digest('hex') },
    probes: { count: o.probes.length, hash: probeSetHash(o.probes) },
    conditions: o.conditions,
    settings: { maxNewTokens, decoding: 'greedy' },
  };
  const manifestFile = path.join(o.out, MANIFEST);
  if (fs.existsSync(manifestFile)) {
    const old = JSON.parse(fs.readFileSync(manifestFile, 'utf8')) as Manifest;
    const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
    const hashes = (m: Manifest) => [m.checkpoints.base.hash, m.checkpoints.finetuned.hash, ...Object.values(m.checkpoints.extra).map((c) => c.hash)];
    if (!same(hashes(old), hashes(manifest)) || !same(old.template, manifest.template) || !same(old.probes, manifest.probes) || !same(old.conditions, manifest.conditions) || !same(old.settings, manifest.settings)) {
      throw new Error(`${o.out} holds a run of different checkpoints, template, probes or settings; use another --out folder`);
    }
  } else {
    fs.writeFileSync(manifestFile, JSON.stringify(manifest, null, 2) + '\n');
  }
  const done = new Set(readResults(o.out).map((r) => r.key));
  const resultsFile = path.join(o.out, RESULTS);
  const tok = o.tokenizer;
  const decode = (ids: number[]) => tok.decode(ids);
  let computed = 0;
  for (let i = 0; i < o.probes.length; i++) {
    if (o.signal?.aborted) break;
    const probe = o.probes[i];
    const missing = o.conditions.filter((c) => !done.has(`${probe.id}|${c.label}`));
    o.onProbe?.(i, o.probes.length);
    if (missing.length === 0) continue;
    const prompt = promptIds(o.template, tok, { query: probe.question, system: probe.system });
    const { ids: response } = await o.host.request(Generate.type, { prompt, condition: { model: 'base' }, maxNewTokens }, { signal: o.signal });
    const refs = probe.aligned !== undefined && probe.misaligned !== undefined ? [tok.ids(probe.aligned + eosText(tok)), tok.ids(probe.misaligned + eosText(tok))] : [];
    const score = await o.host.request(Score.type, { prompt, continuations: [response.length ? response : [0], ...refs], conditions: missing.map((c) => c.condition) }, { signal: o.signal });
    const lines: string[] = [];
    for (let c = 0; c < missing.length; c++) {
      const gen = missing[c].condition.model === 'base' && !missing[c].condition.patch ? response : (await o.host.request(Generate.type, { prompt, condition: missing[c].condition, maxNewTokens }, { signal: o.signal })).ids;
      const [, la, lm] = score.logprob[c];
      const r: EvalResult = {
        key: `${probe.id}|${missing[c].label}`,
        probe: probe.id,
        category: probe.category ?? null,
        condition: missing[c].label,
        klToBase: score.klToBase[c],
        logprobAligned: refs.length ? la : null,
        logprobMisaligned: refs.length ? lm : null,
        margin: refs.length ? la - lm : null,
        generation: decode(gen),
      };
      lines.push(JSON.stringify(r));
    }
    // one append per probe: a crash leaves whole probes or a torn last line, which readResults drops
    fs.appendFileSync(resultsFile, lines.join('\n') + '\n');
    computed += lines.length;
  }
  return { manifest, results: readResults(o.out), computed };
}

function eosText(tok: LoadedTokenizer): string {
  return tok.eosToken ?? '';
}

export interface Summary {
  conditions: { label: string; meanKlToBase: number; alignedPreferred: number | null; meanMargin: number | null; probes: number }[];
  /** Share of the finetuned model's shift from base (KL) on general probes that a patch removes, with a 95% CI. */
  piggybackShare: Record<string, { share: number; low: number; high: number; probes: number } | null>;
}

export function summarise(results: EvalResult[], conditions: EvalCondition[], seed = 1): Summary {
  const by = (label: string) => results.filter((r) => r.condition === label);
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
  const summary: Summary = {
    conditions: conditions.map(({ label }) => {
      const rs = by(label);
      const refs = rs.filter((r) => r.margin !== null);
      return {
        label,
        meanKlToBase: mean(rs.map((r) => r.klToBase)),
        alignedPreferred: refs.length ? refs.filter((r) => r.margin! > 0).length / refs.length : null,
        meanMargin: refs.length ? mean(refs.map((r) => r.margin!)) : null,
        probes: rs.length,
      };
    }),
    piggybackShare: {},
  };
  // general probes: everything not drawn from the finetuning set itself
  const ft = new Map(by('finetuned').filter((r) => r.category !== 'in-domain').map((r) => [r.probe, r.klToBase]));
  for (const span of ['prefix', 'postfix']) {
    const patched = new Map(by(`finetuned+${span}`).map((r) => [r.probe, r.klToBase]));
    const pairs = [...ft].filter(([p]) => patched.has(p)).map(([p, k]) => [k, patched.get(p)!] as const);
    if (pairs.length === 0 || pairs.every(([k]) => k === 0)) {
      summary.piggybackShare[span] = null;
      continue;
    }
    const share = (xs: readonly (readonly [number, number])[]) => {
      const shift = xs.reduce((s, [k]) => s + k, 0);
      return shift > 0 ? xs.reduce((s, [k, q]) => s + (k - q), 0) / shift : 0;
    };
    let state = seed >>> 0 || 1;
    const random = () => {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      return state / 0x100000000;
    };
    const boots: number[] = [];
    for (let b = 0; b < 1000; b++) boots.push(share(pairs.map(() => pairs[Math.floor(random() * pairs.length)])));
    boots.sort((a, b) => a - b);
    summary.piggybackShare[span] = { share: share(pairs), low: boots[24], high: boots[974], probes: pairs.length };
  }
  return summary;
}
