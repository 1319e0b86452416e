/**
 * The one typed protocol between the extension and the dashboard webview. The extension always sends a full
 * snapshot (never deltas): a hidden or reloaded webview renders from the last snapshot alone, which is also what it
 * persists with setState for the serializer to restore.
 */
import type { PromptSegment } from './modelHost';

/**
 * The checkpoint pair a result was measured on: folders (absolute) and, once the host loaded them, their content
 * hashes. Every result carries its pair, so that no view shows one pair's numbers as another's.
 */
export interface PairRef {
  base: string;
  finetuned: string;
  /** "base → finetuned", by folder names. */
  label: string;
  hashes?: { base: string; finetuned: string };
}

export interface TokenLabel {
  id: number;
  text: string;
}

export interface DriftView {
  pair?: PairRef;
  query: string;
  layers: number;
  /** Per segment: tokens and [layer][token] relative squared drift of K and V. */
  segments: {
    name: PromptSegment;
    tokens: TokenLabel[];
    key: number[][];
    value: number[][];
    mean: number;
  }[];
  treft: number;
}

export interface PatchView {
  pair?: PairRef;
  query: string;
  span: string;
  patchedPositions: number;
  kl: { finetuned: number; patched: number };
  generations: { base: string; finetuned: string; patched: string };
}

export interface SurfaceView {
  file: string;
  rows: number;
  identicalPrefixShare: number;
  distinctPrefixes: number;
  prefixTokens: number | null;
  medianQueryTokens: number | null;
}

/** One probe under one condition in the eval matrix. */
export interface EvalCellView {
  kl: number;
  margin: number | null;
  /** Judge alignment per sample (number, 'CODE', 'REFUSAL', or null when unscored). */
  aligned: (number | string | null)[];
  /** Judged misaligned (any sample), or the misaligned reference answer preferred (margin < 0). */
  failed: boolean;
  generations: string[];
}

export interface VerdictView {
  shift: { level: 'negligible' | 'changed' | 'misaligned'; short: string; text: string };
  carrier: {
    level:
      | 'in the template'
      | 'partly in the template'
      | 'outside the template'
      | 'nothing to carry'
      | 'not graded yet';
    short: string;
    text: string;
  };
  severity: 'error' | 'warning' | 'info';
}

export interface EvalMatrixView {
  /** The pair the run measured (from its manifest). */
  pair?: PairRef;
  folder: string;
  /** One line: checkpoints, probe count, decoding, judge. */
  title: string;
  conditions: string[];
  probes: { id: string; question: string; category: string | null; cells: (EvalCellView | null)[] }[];
  /** Formatted headline figures, e.g. ["Piggyback share (prefix patch): 17% (CI 12% to 23%)", ...]. */
  headline: string[];
  /**
   * The run's two answers (PB002): how much the finetune changed the model on general questions, and where that
   * change lives (how much of it the template carries). Never one word for both.
   */
  verdict?: VerdictView;
  /** Whether a cell can fail at all: a judge scored the answers or some probes carry reference answers. */
  judgeable?: boolean;
  /** The layer sweep, when the run had one: the prefix share per layer, then per layer range (fractions). */
  layers?: { label: string; share: number | null; low: number | null; high: number | null }[];
  /** Probes finished out of the run's total. */
  done: number;
  total: number;
}

export interface EvalCompareView {
  /** Each run by its checkpoint pair and the date it started. */
  names: [string, string];
  notes: string[];
  /** What changed from the first run to the second, in words (the two answers, the shares, the shift). */
  differences?: string[];
  rows: [string, string, string][];
}

export interface DashboardSnapshot {
  checkpoints: { base?: string; finetuned?: string };
  /**
   * Results shown that were not measured on the current pair (an eval run opened from another pair's folder), or
   * on an earlier version of its files: said in words above them, never relabelled.
   */
  notices?: string[];
  surface?: SurfaceView;
  drift?: DriftView;
  patch?: PatchView;
  eval?: EvalMatrixView;
  compare?: EvalCompareView;
  /** Set while an operation runs. */
  busy?: string;
  error?: string;
}

/** Extension -> webview. */
export type ToWebview = { type: 'snapshot'; snapshot: DashboardSnapshot };

/** Webview -> extension. */
export type FromWebview =
  | { type: 'ready' }
  | { type: 'runPatch'; span: 'prefix' | 'postfix' | 'both' | 'query' }
  | { type: 'runDrift' }
  | { type: 'runEval' }
  | { type: 'openReport'; folder: string };
