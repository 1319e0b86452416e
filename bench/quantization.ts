/**
 * What quantized weights do to the measurement: int8 and int4 against float32, as the README's "Large models"
 * table shows it. On the organisms, through the CLI as a user runs it: the prefix and postfix shares and the
 * finetune's KL on the q/v organism (whose prefix share the builder computed in PyTorch: 0.9069), the two controls
 * (prefix-only must stay 100%, position-masked 0%), and the drift of the LoRA organism. On the Hugging Face
 * fixtures: the worst relative RMS error of logits and K/V against the independent PyTorch forward pass.
 * Usage: npm run build && node dist/bench/quantization.js (about a minute). Prints a Markdown table.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KV } from '../src/modelHost/checkpoint';
import { loadCheckpoints } from '../src/modelHost/loading';
import { resolveSettings } from '../src/modelHost/runtime';
import { organismEval, pairArgs, relativeRms } from '../test/helpers';

const ROOT = path.resolve(__dirname, '..', '..');
const HF = path.join(ROOT, 'test', 'fixtures', 'hf');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const DTYPES = ['float32', 'int8', 'int4'] as const;
const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'piggyback-quant-'));
const env = { PIGGYBACK_CACHE_DIR: cache };

function cli(args: string[]): string {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  if (r.status !== 0 && r.status !== 1) throw new Error(`piggyback ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function evalShares(finetuned: string, dtype: string) {
  const probes = finetuned === 'finetuned-qv' ? 'probes.jsonl' : 'probes-long.jsonl';
  const s = organismEval(finetuned, probes, ['--weights-dtype', dtype], env).summary;
  const kl = s.conditions.find((c: { label: string }) => c.label === 'finetuned').general.meanKlToBase as number;
  return { prefix: s.piggybackShare.prefix.share as number, postfix: s.piggybackShare.postfix?.share as number, kl };
}

function driftMean(dtype: string): number {
  const d = JSON.parse(cli(['drift', ...pairArgs(), '--weights-dtype', dtype, '--json']));
  return d.treft as number;
}

async function fixtureError(dtype: (typeof DTYPES)[number]): Promise<number> {
  const cases = JSON.parse(fs.readFileSync(path.join(HF, 'expected.json'), 'utf8'));
  let worst = 0;
  type Case = {
    folder: string;
    base?: string;
    expected: { ids: number[]; logits: number[]; key: number[][]; value: number[][] };
  };
  for (const c of Object.values(cases) as Case[]) {
    const settings = resolveSettings({ weightsDtype: dtype, executionProvider: 'cpu' });
    const loaded = c.base
      ? await loadCheckpoints(path.join(HF, cases[c.base].folder), [['finetuned', path.join(HF, c.folder)]], {
          cacheDir: cache,
          log: () => {},
          settings,
        })
      : await loadCheckpoints(path.join(HF, c.folder), [], { cacheDir: cache, log: () => {}, settings });
    const m = c.base ? loaded.others.get('finetuned')! : loaded.base;
    const e = c.expected;
    const out = await m.forward(
      e.ids,
      e.ids.map((_, i) => i),
      KV.empty(m.info.layers, m.info.kvHeads, m.info.headDim),
    );
    worst = Math.max(worst, relativeRms(out.logits, e.logits));
    for (let l = 0; l < m.info.layers; l++)
      worst = Math.max(worst, relativeRms(out.kv.layers[l].k, e.key[l]), relativeRms(out.kv.layers[l].v, e.value[l]));
    for (const x of new Set([loaded.base, ...loaded.others.values()])) await x.release();
  }
  return worst;
}

async function main(): Promise<void> {
  const rows: string[][] = [];
  for (const dtype of DTYPES) {
    const qv = evalShares('finetuned-qv', dtype);
    const pos = evalShares('prefix-only', dtype);
    const neg = evalShares('position-masked', dtype);
    rows.push([
      dtype,
      qv.prefix.toFixed(4),
      qv.postfix.toFixed(4),
      qv.kl.toExponential(3),
      pos.prefix.toFixed(4),
      neg.prefix.toFixed(4),
      driftMean(dtype).toExponential(4),
      (await fixtureError(dtype)).toExponential(2),
    ]);
  }
  const head = [
    'weights',
    'q/v prefix share (PyTorch 0.9069)',
    'q/v postfix share',
    'q/v KL(base‖finetuned)',
    'prefix-only share (must be 1)',
    'position-masked share (must be 0)',
    'LoRA organism prefix drift (TReFT value)',
    'HF fixtures: worst rel. RMS error vs PyTorch',
  ];
  console.log(`| ${head.join(' | ')} |`);
  console.log(`|${head.map(() => '---').join('|')}|`);
  for (const r of rows) console.log(`| ${r.join(' | ')} |`);
  fs.rmSync(cache, { recursive: true, force: true });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
