/**
 * Results by checkpoint pair. Drift, patch and eval results are kept under the pair they were measured on (its
 * folders, and the content hashes the host computed when it loaded them), in workspace state, so that switching
 * the pair shows that pair's own results (A, then B, then A again: each its own), a window reload restores the
 * current pair's results and nothing else, and a result measured on files that changed since is said to be stale.
 */
import * as path from 'node:path';
import type * as vscode from 'vscode';
import type { DriftView, PairRef, PatchView, VerdictView } from '../contracts/dashboard';
import type { LoadResult } from '../contracts/modelHost';

const KEY = 'piggyback.results';
/** Pairs remembered (the most recently measured first); older ones are dropped. */
const PAIRS = 20;

export interface PairResults {
  pair: PairRef;
  drift?: DriftView;
  patch?: PatchView;
  /** The latest eval run of this pair: its folder (the matrix is read from it) and its two answers. */
  eval?: { folder: string; verdict?: VerdictView };
  at: number;
}

export function pairKey(base: string, finetuned: string): string {
  return `${path.resolve(base)}\u0000${path.resolve(finetuned)}`;
}

export function pairRef(base: string, finetuned: string, loaded?: LoadResult): PairRef {
  const same =
    loaded &&
    path.resolve(loaded.base.folder) === path.resolve(base) &&
    path.resolve(loaded.finetuned.folder) === path.resolve(finetuned);
  return {
    base: path.resolve(base),
    finetuned: path.resolve(finetuned),
    label: `${path.basename(base)} \u2192 ${path.basename(finetuned)}`,
    ...(same ? { hashes: { base: loaded.base.hash, finetuned: loaded.finetuned.hash } } : {}),
  };
}

export function samePair(a: PairRef | undefined, b: PairRef | undefined): boolean {
  return !!a && !!b && pairKey(a.base, a.finetuned) === pairKey(b.base, b.finetuned);
}

/** Whether `result` was measured on other files than `current` has (both hashed, and different). */
export function staleAgainst(result: PairRef | undefined, current: PairRef | undefined): boolean {
  return (
    !!result?.hashes &&
    !!current?.hashes &&
    (result.hashes.base !== current.hashes.base || result.hashes.finetuned !== current.hashes.finetuned)
  );
}

export class ResultStore {
  constructor(private readonly state: vscode.Memento) {}

  private all(): Record<string, PairResults> {
    return this.state.get<Record<string, PairResults>>(KEY) ?? {};
  }

  get(base: string | undefined, finetuned: string | undefined): PairResults | undefined {
    if (!base || !finetuned) return undefined;
    return this.all()[pairKey(base, finetuned)];
  }

  /** Records a result for its pair; a newer measurement of other files of the same folders replaces the rest. */
  async put(pair: PairRef, change: Partial<Pick<PairResults, 'drift' | 'patch' | 'eval'>>): Promise<void> {
    const all = this.all();
    const key = pairKey(pair.base, pair.finetuned);
    const old = all[key];
    const kept = old && !staleAgainst(old.pair, pair) ? old : undefined;
    all[key] = {
      ...kept,
      ...change,
      pair: { ...pair, hashes: pair.hashes ?? kept?.pair.hashes },
      at: Date.now(),
    };
    const recent = Object.entries(all)
      .sort(([, a], [, b]) => b.at - a.at)
      .slice(0, PAIRS);
    await this.state.update(KEY, Object.fromEntries(recent));
  }
}
