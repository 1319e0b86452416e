/**
 * Activation benchmark: the extension's cold load + activate() time against a minimal extension's (an output
 * channel, a status bar item, a command), measured in the same run: 15 rounds, each a fresh process per side
 * (order alternating), reported as medians and the median per-round ratio.
 * Targets: under 100 ms absolute (load + activate), and no onnxruntime or native module loaded by activation
 * (models load only in the model host process, on the first command that needs one).
 * The `vscode` module is a stand-in whose calls cost nothing: this measures the extension's own work; the editor's
 * part (reading package.json, the extension host itself) is the same for every extension.
 * Usage: npm run bench (or node dist/bench/activation.js after npm run build)
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
const CHILD = path.join(__dirname, 'activationChild.js');
const ROUNDS = 15;
const TARGET_MS = 100;

interface Sample {
  loadMs: number;
  activateMs: number;
  forbidden: string[];
}

function once(main: string): Sample {
  const r = spawnSync(process.execPath, [CHILD, main], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`activation of ${main} failed:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Sample;
}

const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];

function main(): void {
  const ours = path.join(ROOT, 'dist', 'extension.js');
  const minimal = path.join(ROOT, 'bench', 'fixtures', 'minimal-extension.js');
  once(ours); // warm the file cache
  once(minimal);
  const a: Sample[] = [];
  const b: Sample[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    if (i % 2) {
      a.push(once(ours));
      b.push(once(minimal));
    } else {
      b.push(once(minimal));
      a.push(once(ours));
    }
  }
  const total = (s: Sample) => s.loadMs + s.activateMs;
  const ratio = median(a.map((s, i) => total(s) / Math.max(0.01, total(b[i]))));
  const ms = median(a.map(total));
  const forbidden = [...new Set(a.flatMap((s) => s.forbidden))];
  console.log(
    `activation: load ${median(a.map((s) => s.loadMs)).toFixed(1)} ms + activate ${median(a.map((s) => s.activateMs)).toFixed(1)} ms = ${ms.toFixed(1)} ms (target < ${TARGET_MS} ms)`,
  );
  console.log(`baseline (minimal extension): ${median(b.map(total)).toFixed(2)} ms; ratio ${ratio.toFixed(1)}x`);
  console.log(`modules activation must not load: ${forbidden.length ? forbidden.join(', ') : 'none'}`);
  if (ms >= TARGET_MS || forbidden.length) process.exitCode = 1;
}

main();
