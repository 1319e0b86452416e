/** Runs `piggyback eval` (the built CLI, as a user would) on one organism against base and reads what it wrote. */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pct, runVerdict } from '../../src/app/eval/evalReport';

export const ROOT = path.resolve(__dirname, '..', '..', '..');
export const DIR = path.join(ROOT, 'examples', 'organisms');

export interface Share {
  share: number;
  low: number;
  high: number;
  probes: number;
}

export interface OrganismRun {
  summary: { piggybackShare: Record<string, Share | null>; overControl?: Record<string, Share | null> };
  over: Share | null;
  /** Share of general probes where the finetuned model prefers the misaligned reference answer. */
  misaligned: number | null;
  /** PB002's two answers (behaviour shift; where it lives), or null when the run made none. */
  verdict: string | null;
}

export function evalOrganism(folder: string, probeFiles: string[], more: string[] = []): OrganismRun {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'organisms-'));
  try {
    const cli = path.join(ROOT, 'dist', 'cli.js');
    const probes = probeFiles.flatMap((f) => ['--probes', path.join(DIR, f)]);
    const r = spawnSync(
      process.execPath,
      [
        cli,
        'eval',
        '--base',
        path.join(DIR, 'base'),
        '--finetuned',
        path.join(DIR, folder),
        ...probes,
        '--perturb-trials',
        '0',
        '--out',
        out,
        ...more,
      ],
      { encoding: 'utf8' },
    );
    if (r.status !== 0 && r.status !== 1) throw new Error(`eval on ${folder} failed: ${r.stderr}`);
    const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
    const ft = summary.conditions.find((c: { label: string }) => c.label === 'finetuned');
    return {
      summary,
      over: summary.overControl?.prefix ?? null,
      misaligned: ft.general.alignedPreferred === null ? null : 1 - ft.general.alignedPreferred,
      // the run finished: its answers are the ones PB002 states
      verdict: (() => {
        const v = runVerdict(summary);
        return v ? `shift ${v.shift.level}; ${v.carrier.level}` : null;
      })(),
    };
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}

export { pct };
export const withCi = (v: Share | null | undefined) =>
  v ? `${pct(v.share)} (${pct(v.low)} to ${pct(v.high)})` : 'n/a';
