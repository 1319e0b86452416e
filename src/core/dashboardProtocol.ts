/**
 * The one typed protocol between the extension and the dashboard webview. The extension always sends a full
 * snapshot (never deltas): a hidden or reloaded webview renders from the last snapshot alone, which is also what it
 * persists with setState for the serializer to restore.
 */

export interface TokenLabel {
  id: number;
  text: string;
}

export interface DriftView {
  query: string;
  layers: number;
  /** Per segment: tokens and [layer][token] relative squared drift of K and V. */
  segments: { name: 'prefix' | 'query' | 'postfix'; tokens: TokenLabel[]; key: number[][]; value: number[][]; mean: number }[];
  treft: number;
}

export interface PatchView {
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

export interface DashboardSnapshot {
  checkpoints: { base?: string; finetuned?: string };
  surface?: SurfaceView;
  drift?: DriftView;
  patch?: PatchView;
  /** Set while an operation runs. */
  busy?: string;
  error?: string;
}

/** Extension -> webview. */
export type ToWebview = { type: 'snapshot'; snapshot: DashboardSnapshot };

/** Webview -> extension. */
export type FromWebview = { type: 'ready' } | { type: 'runPatch'; span: 'prefix' | 'postfix' | 'both' | 'query' } | { type: 'runDrift' };

/** Severity thresholds for the drift diagnostic (PB001), on the TReFT value (mean relative squared K/V drift). */
export const DRIFT_THRESHOLDS = { warning: 0.05, info: 0.005 };
