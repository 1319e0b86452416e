/**
 * Model-host benchmarks on the organisms, each against a baseline measured in the same run: 9 rounds after a
 * warm-up, each round timing both sides back to back (order alternating); the figure is the median of the
 * per-round ratios, which cancels drift in machine load:
 * 1. patched vs unpatched: scoring the probe set with the finetuned model + base prefix K/V against the finetuned
 *    model alone. Target <= 1.1x: the base prefix is computed once and reused for every probe.
 * 2. host round-trip vs in-process: the same scoring through the host process (JSON-RPC over IPC) against calling
 *    onnxruntime in this process. Target >= 0.9x the in-process throughput.
 * Usage: npm run bench
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HostClient } from '../src/app/hostClient';
import { prepareTemplate, renderOptions } from '../src/app/audits';
import { promptIds } from '../src/domain/prompt';
import { type Condition, type PromptIds, Score, type ScoreParams } from '../src/contracts/modelHost';
import { Checkpoint } from '../src/modelHost/checkpoint';
import { LoadedModels, score } from '../src/modelHost/operations';

const ROOT = path.resolve(__dirname, '..', '..');
const DIR = path.join(ROOT, 'examples', 'organisms');
const ROUNDS = 9;

const ctx = { isCancelled: () => false, progress: () => undefined };
const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];

async function main(): Promise<void> {
  const probes = fs
    .readFileSync(path.join(DIR, 'probes.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { question: string; aligned: string; misaligned: string });
  const prep = prepareTemplate(path.join(DIR, 'base'));
  const tok = prep.tokenizer!;
  const work: { prompt: PromptIds; continuations: number[][] }[] = probes.map((p) => ({
    prompt: promptIds(prep.template!, tok, { ...renderOptions(prep), query: p.question }),
    continuations: [tok.ids(p.aligned + '<|im_end|>'), tok.ids(p.misaligned + '<|im_end|>')],
  }));
  const base = await Checkpoint.load(path.join(DIR, 'base'));
  const finetuned = await Checkpoint.load(path.join(DIR, 'finetuned'));
  const models = new LoadedModels(base, new Map([['finetuned', finetuned]]));
  const inProcess = async (conditions: Condition[]) => {
    const t0 = process.hrtime.bigint();
    for (const w of work) await score(models, { ...w, conditions }, ctx);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  const host = new HostClient({ script: path.join(ROOT, 'dist', 'host.js') });
  await host.load({ base: path.join(DIR, 'base'), finetuned: path.join(DIR, 'finetuned') });
  // as an eval runner drives it: a few requests in flight, so the IPC round trip overlaps the host's compute
  const viaHost = async (conditions: Condition[]) => {
    const t0 = process.hrtime.bigint();
    let next = 0;
    const lane = async () => {
      while (next < work.length) await host.request(Score.type, { ...work[next++], conditions } as ScoreParams);
    };
    await Promise.all([lane(), lane()]);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  const unpatched: Condition[] = [{ model: 'finetuned' }];
  const patched: Condition[] = [{ model: 'finetuned', patch: 'prefix' }];
  // warm-up: sessions, caches, JIT
  await inProcess(unpatched);
  await inProcess(patched);
  await viaHost(unpatched);
  const t = { unpatched: [] as number[], patched: [] as number[], inProcess: [] as number[], host: [] as number[] };
  const patchRatio: number[] = [];
  const hostRatio: number[] = [];
  /** Times a and b back to back, in alternating order. */
  const pair = async (r: number, a: () => Promise<number>, b: () => Promise<number>): Promise<[number, number]> => {
    if (r % 2 === 0) {
      const x = await a();
      return [x, await b()];
    }
    const y = await b();
    return [await a(), y];
  };
  for (let r = 0; r < ROUNDS; r++) {
    const [un, pa] = await pair(
      r,
      () => inProcess(unpatched),
      () => inProcess(patched),
    );
    t.unpatched.push(un);
    t.patched.push(pa);
    patchRatio.push(pa / un);
    const [ip, h] = await pair(
      r,
      () => inProcess(unpatched),
      () => viaHost(unpatched),
    );
    t.inProcess.push(ip);
    t.host.push(h);
    hostRatio.push(ip / h);
  }
  await host.dispose();
  const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)])) as Record<keyof typeof t, number>;
  const result = {
    probes: work.length,
    scoredContinuationsPerRound: work.length * 2,
    ms: {
      unpatched: Math.round(m.unpatched),
      patched: Math.round(m.patched),
      inProcess: Math.round(m.inProcess),
      host: Math.round(m.host),
    },
    patchedOverUnpatched: Number(median(patchRatio).toFixed(3)),
    hostThroughputOverInProcess: Number(median(hostRatio).toFixed(3)),
    targets: { patchedOverUnpatchedAtMost: 1.1, hostThroughputOverInProcessAtLeast: 0.9 },
  };
  const pass = result.patchedOverUnpatched <= 1.1 && result.hostThroughputOverInProcess >= 0.9;
  console.log(`model host on the organisms, ${work.length} probes x 2 answers, median of ${ROUNDS}:`);
  console.log(
    `  unpatched ${result.ms.unpatched} ms, prefix-patched ${result.ms.patched} ms: ratio ${result.patchedOverUnpatched} (target <= 1.1)`,
  );
  console.log(
    `  in-process ${result.ms.inProcess} ms, through the host ${result.ms.host} ms: throughput ratio ${result.hostThroughputOverInProcess} (target >= 0.9)`,
  );
  console.log(`  ${pass ? 'within targets' : 'OUTSIDE TARGETS'}`);
  const out = path.join(ROOT, 'bench', 'out');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'host.json'), JSON.stringify(result, null, 2) + '\n');
  if (!pass) process.exitCode = 1;
}

void main();
