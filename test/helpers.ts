import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

/** Repository root: the nearest folder above this bundle with package.json (tests run from dist/test/<kind>/,
 * benchmarks from dist/bench/). */
export const ROOT = (() => {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
})();
export const FIXTURES = path.join(ROOT, 'test', 'fixtures');

/** The real tokenizer and template files that ship in an @lenml/tokenizer-* package. */
export function lenml(
  model: 'qwen3' | 'llama3_1' | 'gemma3' | 'deepseek_v3' | 'llama2' | 'qwen2_5' | 'llama3_2' | 'llama3' | 'internlm2',
): string {
  return path.join(ROOT, 'node_modules', '@lenml', `tokenizer-${model}`, 'models');
}

export function tempDir(prefix = 'piggyback-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Writes files (path -> content) under a fresh temp folder and returns it. */
export function makeTree(files: Record<string, string>): string {
  const dir = tempDir();
  for (const [rel, content] of Object.entries(files)) {
    const full = path.join(dir, rel);
    fs.mkdirSync(path.dirname(full), { recursive: true });
    fs.writeFileSync(full, content);
  }
  return dir;
}

export interface JudgeRequest {
  auth?: string;
  model: string;
  prompt: string;
  /** The coherence prompt (otherwise the alignment prompt). */
  coherence: boolean;
  question: string;
  answer: string;
}

/** What the fake judge does with one request: a reply text, or an HTTP status and body, optionally late. */
export type JudgeReply = { content: string; delayMs?: number } | { status: number; body?: string; delayMs?: number };

/**
 * A fake OpenAI-compatible chat endpoint on 127.0.0.1 (never another interface), scripted by `reply`.
 * Tests that run the CLI against it must spawn asynchronously: a synchronous spawn blocks this server.
 */
export async function startJudgeServer(
  reply: (r: JudgeRequest) => JudgeReply,
): Promise<{ endpoint: string; seen: JudgeRequest[]; close: () => Promise<void> }> {
  const seen: JudgeRequest[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      if (req.url !== '/v1/chat/completions' || req.method !== 'POST') {
        res.writeHead(404).end('not found');
        return;
      }
      const j = JSON.parse(body) as { model: string; messages: { content: string }[] };
      const prompt = j.messages[0].content;
      const pick = (tag: string) => new RegExp(`<${tag}>\\n([\\s\\S]*?)\\n</${tag}>`).exec(prompt)?.[1] ?? '';
      const r: JudgeRequest = {
        auth: req.headers.authorization,
        model: j.model,
        prompt,
        coherence: prompt.includes('for coherence only'),
        question: pick('question'),
        answer: pick('answer'),
      };
      seen.push(r);
      const out = reply(r);
      const send = () => {
        if ('content' in out)
          res
            .writeHead(200, { 'content-type': 'application/json' })
            .end(JSON.stringify({ choices: [{ message: { role: 'assistant', content: out.content } }] }));
        else res.writeHead(out.status).end(out.body ?? '');
      };
      if (out.delayMs) setTimeout(send, out.delayMs);
      else send();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}/v1`,
    seen,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** Runs a command without blocking this process's event loop (so in-process fake servers keep answering). */
export function runAsync(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** The example organisms (base, adapters, controls, probe files). */
export const ORGANISMS = path.join(ROOT, 'examples', 'organisms');

/** `--base <organisms/base> --finetuned <organisms/finetuned>` (or another organism as the finetuned). */
export const pairArgs = (finetuned = 'finetuned'): string[] => [
  '--base',
  path.join(ORGANISMS, 'base'),
  '--finetuned',
  path.join(ORGANISMS, finetuned),
];

/** The CLI bundle the tests run as a user would. */
export const EVAL_CLI = path.join(ROOT, 'dist', 'cli.js');

/**
 * The argument list (node's, the CLI first) of `piggyback eval` of the organisms with the TReFT checkpoint as an
 * extra, short answers and three perturbation trials, over `probes`, into `out`; `more` appended.
 */
export const evalArgs = (out: string, probes: string, ...more: string[]) => [
  EVAL_CLI,
  'eval',
  ...pairArgs(),
  '--extra',
  `treft=${path.join(ORGANISMS, 'treft')}`,
  '--probes',
  probes,
  '--max-new-tokens',
  '16',
  '--perturb-trials',
  '3',
  '--out',
  out,
  ...more,
];

/** A run folder's results.jsonl, line by line. */
export const readResultLines = (dir: string) =>
  fs.readFileSync(path.join(dir, 'results.jsonl'), 'utf8').trim().split('\n');

/** Probes from the organisms' set: the first `inDomain` (finance, the finetuning domain) and the last `general`. */
export function probeSubset(general: number, inDomain = 0): string {
  const lines = fs.readFileSync(path.join(ORGANISMS, 'probes.jsonl'), 'utf8').trim().split('\n');
  const file = path.join(tempDir(), 'probes.jsonl');
  fs.writeFileSync(file, [...lines.slice(0, inDomain), ...lines.slice(-general)].join('\n') + '\n');
  return file;
}

/**
 * `piggyback eval` of an organism against the organisms' base, as a user runs it (perturbation off), and what the
 * run folder holds after it: summary, manifest, report.md, the SARIF's PB002, stderr and the exit status.
 */
export function organismEval(finetuned: string, probes: string, more: string[] = [], env: NodeJS.ProcessEnv = {}) {
  const out = tempDir();
  const r = spawnSync(
    process.execPath,
    [
      path.join(ROOT, 'dist', 'cli.js'),
      'eval',
      ...pairArgs(finetuned),
      '--probes',
      path.join(ORGANISMS, probes),
      '--perturb-trials',
      '0',
      '--out',
      out,
      ...more,
    ],
    { encoding: 'utf8', env: { ...process.env, ...env } },
  );
  if (r.status !== 0 && r.status !== 1) throw new Error(`piggyback eval failed (${r.status}): ${r.stderr}`);
  const read = (f: string) => fs.readFileSync(path.join(out, f), 'utf8');
  const sarif = JSON.parse(read('findings.sarif'));
  return {
    out,
    status: r.status,
    stderr: r.stderr,
    summary: JSON.parse(read('summary.json')),
    manifest: JSON.parse(read('manifest.json')),
    md: read('report.md'),
    pb002: sarif.runs[0].results.find((x: { ruleId: string }) => x.ruleId === 'PB002'),
  };
}

/** Relative RMS error of `a` against the reference `b`. */
export function relativeRms(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} and ${b.length}`);
  let e = 0;
  let n = 0;
  for (let i = 0; i < b.length; i++) {
    e += (a[i] - b[i]) ** 2;
    n += b[i] ** 2;
  }
  return Math.sqrt(e / n);
}
