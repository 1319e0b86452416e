/**
 * The conditions of an eval run: base, finetuned, each span patched with the base model's K/V, the perturbation
 * control, extra checkpoints by name, and the layer sweep.
 */
import type { Condition, PromptSegment } from '../../contracts/modelHost';

export type Segment = PromptSegment;

export interface EvalCondition {
  label: string;
  condition: Condition;
  /** Instead of patching: the paper's perturbation of this segment (nearest-neighbour token swaps), N trials. */
  perturb?: Segment;
  /** A layer-sweep condition: scored (KL, margins) but not generated or judged; shown as a chart, not a column. */
  sweep?: true;
}

/**
 * The layer sweep: the prefix patch on one layer at a time, then on contiguous ranges (early/late halves, or
 * early/middle/late thirds from 6 layers on). What is patched is the prefix K/V of those layers, not the residual
 * stream the paper's Fig. 4 patches, so a peak here need not sit where the paper's does.
 */
export function layerSweepConditions(layers: number): EvalCondition[] {
  const groups = layers >= 6 ? 3 : 2;
  const ranges: number[][] = [];
  if (layers >= 2) {
    for (let g = 0; g < groups; g++) {
      const [a, b] = [Math.round((g * layers) / groups), Math.round(((g + 1) * layers) / groups)];
      if (b - a > 1) ranges.push(Array.from({ length: b - a }, (_, i) => a + i));
    }
  }
  const singles = Array.from({ length: layers }, (_, l) => [l]);
  return [...singles, ...ranges].map((ls) => ({
    label: `finetuned+prefix@${ls.length === 1 ? `L${ls[0]}` : `L${ls[0]}-${ls[ls.length - 1]}`}`,
    condition: { model: 'finetuned', patch: 'prefix', layers: ls },
    sweep: true,
  }));
}

/**
 * Why extra checkpoint names cannot be used, or undefined: a name is a condition's label and a results key part, so
 * it must not be a role or another condition's label, nor hold the characters those keys are built with.
 */
export function extraNameProblem(names: string[]): string | undefined {
  const taken = new Set(['base', ...defaultConditions([], true).map((c) => c.label)]);
  for (const name of names) {
    if (!name.trim()) return 'an extra checkpoint needs a name';
    if (taken.has(name))
      return `extra checkpoint name "${name}" is a condition of every run already (${[...taken].join(', ')}): choose another`;
    if (/[+@|]/.test(name))
      return `extra checkpoint name "${name}" holds "+", "@" or "|", which condition labels and result keys are built with: choose another`;
  }
  return undefined;
}

export function defaultConditions(extra: string[] = [], perturb = true): EvalCondition[] {
  const problem = extra.length ? extraNameProblem(extra) : undefined;
  if (problem) throw new EvalSettingsError(problem);
  return [
    { label: 'base', condition: { model: 'base' } },
    { label: 'finetuned', condition: { model: 'finetuned' } },
    { label: 'finetuned+prefix', condition: { model: 'finetuned', patch: 'prefix' } },
    { label: 'finetuned+postfix', condition: { model: 'finetuned', patch: 'postfix' } },
    { label: 'finetuned+query', condition: { model: 'finetuned', patch: 'query' } },
    // the perturbation control on every segment: a large prefix-only gain is the piggyback signature
    ...(perturb
      ? (['prefix', 'postfix', 'query'] as const).map((seg) => ({
          label: `finetuned+${seg}-perturb`,
          condition: { model: 'finetuned' },
          perturb: seg,
        }))
      : []),
    ...extra.map((name) => ({ label: name, condition: { model: name } })),
  ];
}

/** Settings, options or a run folder that an eval cannot run with, in words (exit code 2 in the CLI). */
export class EvalSettingsError extends Error {}
