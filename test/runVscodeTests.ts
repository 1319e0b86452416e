/**
 * Runs the in-editor suite (dist/test/vscode/index.js) in a real VS Code.
 * - Where VS Code can be downloaded: @vscode/test-electron (npm run test:vscode -- --electron).
 * - Here (no download server): the VS Code server inside the code-server npm package, opened in headless Chromium,
 *   with the extension under development and the tests in its extension host (recipe: shared/reference/toolchain.md).
 * Prerequisites are installed by scripts/setup-vscode-tests.sh into .cache/; a missing one is a failure with a
 * message saying what to run, never a silent skip.
 */
import { spawn, ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
const CACHE = path.join(ROOT, '.cache');
const NODE24 = path.join(CACHE, 'node24', 'package', 'bin', 'node');
const SERVER_MAIN = path.join(CACHE, 'code-server', 'node_modules', 'code-server', 'lib', 'vscode', 'out', 'server-main.js');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const TIMEOUT_MS = Number(process.env.PIGGYBACK_VSCODE_TIMEOUT_MS ?? 240_000);

function fail(message: string): never {
  console.error(`in-editor tests: ${message}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

function waitForHttp(url: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const req = http.get(url, (res) => {
        res.resume();
        resolve();
      });
      req.on('error', () => (Date.now() > end ? reject(new Error(`no answer from ${url}`)) : setTimeout(attempt, 250)));
    };
    attempt();
  });
}

/** The example workspace, copied so the tests can write into it. */
function makeWorkspace(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'piggyback-ws-'));
  fs.cpSync(path.join(ROOT, 'examples'), dir, { recursive: true });
  return dir;
}

function killGroup(p: ChildProcess | undefined): void {
  if (!p?.pid) return;
  try {
    process.kill(-p.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

async function runInServer(): Promise<number> {
  for (const [what, file] of [
    ['Node 24', NODE24],
    ['the VS Code server (code-server)', SERVER_MAIN],
    ['Chromium', CHROMIUM],
  ]) {
    if (!fs.existsSync(file)) fail(`${what} not found at ${file}; run: bash scripts/setup-vscode-tests.sh`);
  }
  const { chromium } = await import('playwright-core');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'piggyback-vscode-'));
  const results = path.join(tmp, 'results.json');
  const workspace = makeWorkspace();
  const port = await freePort();
  const env = {
    ...process.env,
    PIGGYBACK_TEST_RESULTS: results,
    XDG_CONFIG_HOME: path.join(tmp, 'config'),
    XDG_DATA_HOME: path.join(tmp, 'data'),
    VSCODE_CLI: undefined,
  };
  const log = fs.openSync(path.join(tmp, 'server.log'), 'w');
  const server = spawn(
    NODE24,
    [
      SERVER_MAIN,
      '--host', '127.0.0.1',
      '--port', String(port),
      '--without-connection-token',
      '--accept-server-license-terms',
      '--enable-smoke-test-driver',
      '--disable-telemetry',
      '--user-data-dir', path.join(tmp, 'user'),
      '--server-data-dir', path.join(tmp, 'server'),
      '--extensions-dir', path.join(tmp, 'extensions'),
    ],
    { env, detached: true, stdio: ['ignore', log, log] },
  );
  let browser: Awaited<ReturnType<typeof chromium.launch>> | undefined;
  const cleanup = async () => {
    await browser?.close().catch(() => undefined);
    killGroup(server);
  };
  process.on('SIGINT', () => void cleanup().then(() => process.exit(130)));
  try {
    await waitForHttp(`http://127.0.0.1:${port}/`, 60_000);
    const remote = (p: string) => `vscode-remote://127.0.0.1:${port}${p}`;
    const payload = JSON.stringify([
      ['extensionDevelopmentPath', remote(ROOT)],
      ['extensionTestsPath', remote(path.join(ROOT, 'dist', 'test', 'vscode', 'index.js'))],
    ]);
    const url = `http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}&payload=${encodeURIComponent(payload)}`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = await browser.newPage();
    await page.goto(url);
    const end = Date.now() + TIMEOUT_MS;
    while (!fs.existsSync(results) && Date.now() < end && server.exitCode === null) await new Promise((r) => setTimeout(r, 500));
    if (!fs.existsSync(results)) {
      const tail = fs.readFileSync(path.join(tmp, 'server.log'), 'utf8').split('\n').slice(-40).join('\n');
      fail(`no results within ${TIMEOUT_MS / 1000}s (server exit ${server.exitCode}); server log tail:\n${tail}`);
    }
    await new Promise((r) => setTimeout(r, 200)); // let the writer finish
    const { results: list } = JSON.parse(fs.readFileSync(results, 'utf8')) as { results: { title: string; state: string; ms?: number; error?: string }[] };
    for (const r of list) {
      console.log(`${r.state === 'passed' ? 'ok  ' : 'FAIL'} ${r.title}${r.ms !== undefined ? ` (${r.ms} ms)` : ''}`);
      if (r.error) console.log(r.error.split('\n').map((l) => `     ${l}`).join('\n'));
    }
    const passed = list.filter((r) => r.state === 'passed').length;
    const failed = list.length - passed;
    console.log(`${passed} passed, ${failed} failed`);
    return failed > 0 || list.length === 0 ? 1 : 0;
  } finally {
    await cleanup();
    fs.rmSync(workspace, { recursive: true, force: true });
  }
}

async function runInElectron(): Promise<number> {
  // The standard launcher where VS Code can be downloaded; not reachable on this project's CI machines.
  const moduleName = '@vscode/test-electron';
  const { runTests } = (await import(moduleName)) as { runTests: (o: object) => Promise<number> };
  const workspace = makeWorkspace();
  return runTests({
    extensionDevelopmentPath: ROOT,
    extensionTestsPath: path.join(ROOT, 'dist', 'test', 'vscode', 'index.js'),
    launchArgs: [workspace, '--disable-extensions'],
  });
}

(process.argv.includes('--electron') ? runInElectron() : runInServer()).then(
  (code) => process.exit(code),
  (e) => fail((e as Error).stack ?? String(e)),
);
