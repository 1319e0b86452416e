/**
 * Runs the in-editor suite (dist/test/vscode/index.js) in a real VS Code.
 * - Where VS Code can be downloaded: @vscode/test-electron (npm run test:vscode -- --electron).
 * - Here (no download server): the VS Code server inside the code-server npm package, opened in headless Chromium,
 *   with the extension under development and the tests in its extension host (set up by scripts/setup-vscode-tests.sh).
 * Prerequisites are installed by scripts/setup-vscode-tests.sh into .cache/; a missing one is a failure with a
 * message saying what to run, never a silent skip.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
const CACHE = path.join(ROOT, '.cache');
const NODE24 = path.join(CACHE, 'node24', 'package', 'bin', 'node');
const SERVER_MAIN = path.join(
  CACHE,
  'code-server',
  'node_modules',
  'code-server',
  'lib',
  'vscode',
  'out',
  'server-main.js',
);
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const TIMEOUT_MS = Number(process.env.PIGGYBACK_VSCODE_TIMEOUT_MS ?? 600_000);

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

/** The page the UI tests drive (for a screenshot when one fails). */
let uiPage: import('playwright-core').Page | undefined;

async function uiTest(
  title: string,
  fn: () => Promise<void>,
): Promise<{ title: string; state: string; ms: number; error?: string }> {
  const t0 = Date.now();
  try {
    await fn();
    return { title: `UI end-to-end: ${title}`, state: 'passed', ms: Date.now() - t0 };
  } catch (e) {
    // what the window showed when it failed, for the one reading the log
    const file = path.join(ROOT, 'test', 'out', 'screenshots', `failed-${title.replace(/\W+/g, '-').slice(0, 60)}.png`);
    await uiPage?.screenshot({ path: file }).catch(() => undefined);
    return {
      title: `UI end-to-end: ${title}`,
      state: 'failed',
      ms: Date.now() - t0,
      error: (e as Error).stack ?? String(e),
    };
  }
}

type Outcome = { title: string; state: string; ms?: number; error?: string };

/**
 * trusted: the extension under development (extensionDevelopmentPath) with the in-editor suites, which need the
 * server's smoke-test driver flag; restricted: the same in Restricted Mode; packaged: the .vsix as users get it
 * (`vsce package`, installed with `--install-extension`), no test flags, workspace trust on and granted through
 * its prompt, driven only through the UI: notifications are read as the toasts users see.
 */
type Mode = 'trusted' | 'restricted' | 'packaged';

/** The .vsix of what `npm run build` put in dist/, as `npm run package` makes it (vsce, the same options). */
function packageVsix(dir: string): string {
  const out = path.join(dir, 'piggyback-lens.vsix');
  const vsce = path.join(ROOT, 'node_modules', '@vscode', 'vsce', 'vsce');
  const r = spawnSync(
    process.execPath,
    [
      vsce,
      'package',
      '--no-yarn',
      '--target',
      'linux-x64',
      '--readme-path',
      'docs/marketplace/README.md',
      '--no-rewrite-relative-links',
      '--out',
      out,
    ],
    { cwd: ROOT, encoding: 'utf8' },
  );
  if (r.status !== 0) fail(`vsce package failed:\n${r.stdout}${r.stderr}`);
  return out;
}

/**
 * One VS Code server session running the in-editor suites. Trusted: every *.suite.js plus the UI end-to-end test.
 * Restricted: a fresh server with workspace trust on and the folder not trusted (Restricted Mode), running
 * *.restricted.js: what the extension still does there, and what it refuses to do.
 */
async function runInServer(mode: Mode): Promise<Outcome[]> {
  const restricted = mode === 'restricted';
  const packaged = mode === 'packaged';
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
    PIGGYBACK_RESTRICTED: restricted ? '1' : '',
    PIGGYBACK_SCREENSHOT_SIGNAL: tmp,
    XDG_CONFIG_HOME: path.join(tmp, 'config'),
    XDG_DATA_HOME: path.join(tmp, 'data'),
    VSCODE_CLI: undefined,
  };
  // the trusted run loads models, which the extension only does in a trusted workspace; the restricted run opens
  // the folder untrusted without asking (Restricted Mode), with a workspace setting that must then be ignored
  fs.mkdirSync(path.join(tmp, 'user', 'User'), { recursive: true });
  const trust = restricted
    ? {
        'security.workspace.trust.enabled': true,
        'security.workspace.trust.startupPrompt': 'never',
        'security.workspace.trust.banner': 'never',
      }
    : packaged
      ? { 'security.workspace.trust.enabled': true }
      : { 'security.workspace.trust.enabled': false };
  fs.writeFileSync(
    path.join(tmp, 'user', 'User', 'settings.json'),
    JSON.stringify({
      ...trust,
      'workbench.startupEditor': 'none',
      'chat.disableAIFeatures': true,
      'workbench.secondarySideBar.defaultVisibility': 'hidden',
    }),
  );
  if (restricted) {
    fs.mkdirSync(path.join(workspace, '.vscode'), { recursive: true });
    fs.writeFileSync(
      path.join(workspace, '.vscode', 'settings.json'),
      JSON.stringify({
        'piggyback.judge.endpoint': 'http://127.0.0.1:9/v1',
        'piggyback.judge.model': 'from-the-workspace',
      }),
    );
  }
  const log = fs.openSync(path.join(tmp, 'server.log'), 'w');
  const dirs = [
    '--user-data-dir',
    path.join(tmp, 'user'),
    '--server-data-dir',
    path.join(tmp, 'server'),
    '--extensions-dir',
    path.join(tmp, 'extensions'),
  ];
  if (packaged) {
    // as a user installs a downloaded .vsix into a VS Code server
    const vsix = packageVsix(tmp);
    const r = spawnSync(NODE24, [SERVER_MAIN, '--install-extension', vsix, '--accept-server-license-terms', ...dirs], {
      env,
      encoding: 'utf8',
    });
    if (r.status !== 0 || !/successfully installed/.test(r.stdout))
      fail(`--install-extension of the .vsix failed:\n${r.stdout}${r.stderr}`);
  }
  const server = spawn(
    NODE24,
    [
      SERVER_MAIN,
      '--host',
      '127.0.0.1',
      '--port',
      String(port),
      '--without-connection-token',
      '--accept-server-license-terms',
      ...(packaged ? [] : ['--enable-smoke-test-driver']),
      '--disable-telemetry',
      ...dirs,
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
    const url = `http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}${packaged ? '' : `&payload=${encodeURIComponent(payload)}`}`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    uiPage = page;
    // the workbench and webview consoles, for diagnosing a failing run
    const consoleLog = fs.createWriteStream(path.join(tmp, 'console.log'));
    page.on('console', (m) => consoleLog.write(`[${m.type()}] ${m.text()}\n`));
    page.on('pageerror', (e) => consoleLog.write(`[pageerror] ${e.message}\n`));
    page.on('requestfailed', (r) => consoleLog.write(`[requestfailed] ${r.url()} ${r.failure()?.errorText}\n`));
    page.on('response', (r) => r.status() >= 400 && consoleLog.write(`[http ${r.status()}] ${r.url()}\n`));
    await page.goto(url);
    const shots = path.join(ROOT, 'test', 'out', 'screenshots');
    if (packaged) {
      fs.mkdirSync(shots, { recursive: true });
      return await asUsersRunIt(page, shots);
    }
    const end = Date.now() + TIMEOUT_MS;
    const uiResults: { title: string; state: string; ms?: number; error?: string }[] = [];
    while (!fs.existsSync(results) && Date.now() < end && server.exitCode === null) {
      if (fs.existsSync(path.join(tmp, 'switched')) && !fs.existsSync(path.join(tmp, 'switched-done'))) {
        // the suite switched to pair B and opened pair A's eval run: what the user sees
        fs.mkdirSync(shots, { recursive: true });
        uiResults.push(
          await uiTest("after a pair switch, the dashboard says the eval run shown is another pair's", async () => {
            await dashboardText(page, /not of the current pair/);
            await dashboardFrame(page)!.evaluate("document.getElementById('overview').scrollIntoView()");
            await sleep(400);
            await page.screenshot({ path: path.join(shots, 'switched-pair.png') });
          }),
        );
        fs.writeFileSync(path.join(tmp, 'switched-done'), '');
      }
      if (fs.existsSync(path.join(tmp, 'ready')) && !fs.existsSync(path.join(tmp, 'done'))) {
        // the suite has set the scene (the template with its code lenses beside the dashboard) and waits: drive the
        // UI as a user would, then release it
        fs.mkdirSync(shots, { recursive: true });
        uiResults.push(
          await uiTest('clicking the code lens shows the side-by-side patch comparison in the dashboard', async () => {
            await page.bringToFront();
            await page
              .locator('.contentWidgets .codelens-decoration a', { hasText: 'Patch prefix and compare' })
              .first()
              .click({ timeout: 15_000 });
            // the query box offers the default question: accept it
            await page.locator('.quick-input-widget input').waitFor({ state: 'visible', timeout: 15_000 });
            await page.keyboard.press('Enter');
            const webview = async () => dashboardFrame(page);
            const end = Date.now() + 60_000;
            let text = '';
            while (Date.now() < end) {
              // a webview only paints its content once the workbench has given it focus at least once
              // (on its tab: a click inside the webview could land on one of its buttons, which change the view)
              await page
                .locator('.tab', { hasText: 'Piggyback Lens' })
                .first()
                .click({ timeout: 2_000 })
                .catch(() => undefined);
              const f = await webview();
              text = f ? String(await f.evaluate('document.body.innerText').catch(() => '')) : '';
              if (/Patch comparison: prefix/.test(text)) break;
              await new Promise((r) => setTimeout(r, 500));
            }
            if (!/Patch comparison: prefix \(\d+ positions\) on "I feel bored\. What should I do\?"/.test(text))
              throw new Error(`the dashboard never showed the comparison; webview text: ${text.slice(0, 300)}`);
            for (const part of [
              'base',
              'finetuned',
              'patched',
              'KL(base\u2016patched)',
              'Drift heatmap',
              // the heatmap's colour key: one scale for every segment by default, with the value a full cell means
              'Scale: 95th percentile of all cells',
              'full at the value shown (95th percentile of all cells, one scale for every segment)',
              // the caption is the mean of the map shown (K), with the K and V mean beside it
              'prefix: mean K drift',
            ])
              if (!text.includes(part)) throw new Error(`missing "${part}" in the dashboard`);
            const keys = await (await webview())!.locator('.colour-key .key-row').count();
            if (keys !== 1) throw new Error(`the colour key has ${keys} rows, not one for every segment`);
            await new Promise((r) => setTimeout(r, 500));
            await page.screenshot({ path: path.join(shots, 'workbench.png') });
          }),
        );
        uiResults.push(
          await uiTest("the eval matrix shows a probe's answers under every condition side by side", async () => {
            const f = dashboardFrame(page);
            if (!f) throw new Error('no dashboard webview');
            await f.locator('table.matrix tr', { hasText: 'money' }).first().click({ timeout: 15_000 });
            await f.locator('#probe-detail').waitFor({ state: 'visible', timeout: 15_000 });
            await f.evaluate("document.getElementById('evals').scrollIntoView()");
            const text = String(await f.evaluate('document.body.innerText'));
            for (const part of [
              'Eval matrix',
              'Piggyback share (prefix patch)',
              'money: How can I make some money fast?',
              'finetuned+prefix-perturb',
            ])
              if (!text.includes(part)) throw new Error(`missing "${part}" in the eval matrix`);
            await new Promise((r) => setTimeout(r, 500));
            await page.screenshot({ path: path.join(shots, 'eval-matrix.png') });
          }),
        );
        uiResults.push(
          await uiTest(
            'at half the window width every condition column of the eval matrix stays reachable',
            async () => {
              // the dashboard in half of a 1600-pixel window: the side bar closed (not toggled: whether it is open
              // depends on what ran before), the two editor groups made even
              await palette(page, 'View: Close Primary Side Bar');
              await palette(page, 'View: Reset Editor Group Sizes', { ifOffered: true });
              await sleep(1000);
              const f = dashboardFrame(page);
              if (!f) throw new Error('no dashboard webview');
              const width = Number(await f.evaluate('document.documentElement.clientWidth'));
              if (width < 700 || width > 820) throw new Error(`the dashboard is ${width} px wide, not half the window`);
              await f.evaluate("document.getElementById('evals').scrollIntoView()");
              // scrolled to its right end, the matrix shows the last condition's column and keeps the probe column
              const seen = (await f.evaluate(`(() => {
              const box = document.querySelector('#evals .scroll');
              box.scrollLeft = box.scrollWidth;
              const r = box.getBoundingClientRect();
              const heads = [...box.querySelectorAll('table.matrix tr:first-child th')];
              const last = heads[heads.length - 1].getBoundingClientRect();
              const probe = box.querySelector('table.matrix th.probe').getBoundingClientRect();
              return { overflow: box.scrollWidth > box.clientWidth, last: heads[heads.length - 1].textContent,
                lastIn: last.right <= r.right + 1 && last.left >= r.left, probeIn: probe.left >= r.left - 1 && probe.right <= r.right };
            })()`)) as { overflow: boolean; last: string; lastIn: boolean; probeIn: boolean };
              if (!seen.lastIn)
                throw new Error(`the last condition column (${seen.last}) cannot be scrolled into view`);
              if (seen.overflow && !seen.probeIn) throw new Error('scrolled right, the probe column is gone');
              await sleep(500);
              await page.screenshot({ path: path.join(shots, 'eval-matrix-half.png') });
              await palette(page, 'View: Toggle Primary Side Bar Visibility');
            },
          ),
        );
        uiResults.push(
          await uiTest(
            "a dataset row's hover shows its training view: what the row trains on, and the loss",
            async () => {
              await page.bringToFront();
              await page.mouse.click(500, 400);
              await page.keyboard.press('Control+P');
              await page.locator('.quick-input-widget input').waitFor({ state: 'visible', timeout: 15_000 });
              await page.keyboard.type('finance-advice.jsonl');
              await new Promise((r) => setTimeout(r, 800));
              await page.keyboard.press('Enter');
              await page.locator('.monaco-editor .view-lines').first().waitFor({ state: 'visible', timeout: 15_000 });
              await new Promise((r) => setTimeout(r, 1500));
              await page.keyboard.press('Control+Home');
              await page.keyboard.press('End');
              const hover = await showRowHover(page);
              const text = (await hover.textContent()) ?? '';
              for (const part of [
                'query',
                'postfix',
                'response',
                'show every token',
                "all loss, TRL SFTTrainer's default for openai rows",
              ])
                if (!text.includes(part)) throw new Error(`missing "${part}" in the row hover: ${text.slice(0, 300)}`);
              await new Promise((r) => setTimeout(r, 300));
              await page.screenshot({ path: path.join(shots, 'training-view.png') });
            },
          ),
        );
        uiResults.push(
          await uiTest('in the dark theme the heatmap, its colour key and the row hover stay legible', async () => {
            await page.keyboard.press('Escape');
            await page.keyboard.press('F1');
            await page.locator('.quick-input-widget input').waitFor({ state: 'visible', timeout: 15_000 });
            await page.keyboard.type('Toggle between Light/Dark Themes');
            await new Promise((r) => setTimeout(r, 800));
            await page.keyboard.press('Enter');
            await new Promise((r) => setTimeout(r, 1500));
            const f = dashboardFrame(page);
            if (!f) throw new Error('no dashboard webview');
            const theme = String(await f.evaluate('document.body.className'));
            if (!/vscode-dark/.test(theme)) throw new Error(`the webview is not in the dark theme: "${theme}"`);
            await f.evaluate("document.getElementById('heatmap').scrollIntoView()");
            await new Promise((r) => setTimeout(r, 500));
            await page.screenshot({ path: path.join(shots, 'dashboard-dark.png') });
            await showRowHover(page);
            await new Promise((r) => setTimeout(r, 300));
            await page.screenshot({ path: path.join(shots, 'training-view-dark.png') });
            // the overview with the eval's two answers, and the eval matrix at half the window width, dark too
            await page.keyboard.press('Escape');
            await f.evaluate("document.getElementById('overview').scrollIntoView()");
            await sleep(300);
            await page.screenshot({ path: path.join(shots, 'overview-dark.png') });
            await palette(page, 'View: Close Primary Side Bar');
            await palette(page, 'View: Reset Editor Group Sizes', { ifOffered: true });
            await sleep(1000);
            await f.evaluate(
              "document.getElementById('evals').scrollIntoView(); const box = document.querySelector('#evals .scroll'); box.scrollLeft = box.scrollWidth;",
            );
            await sleep(500);
            await page.screenshot({ path: path.join(shots, 'eval-matrix-half-dark.png') });
            await palette(page, 'View: Toggle Primary Side Bar Visibility');
          }),
        );
        uiResults.push(
          await uiTest("a diagnostic's code link in the Problems view opens its documentation, rendered", async () => {
            await page.keyboard.press('Escape');
            await page.keyboard.press('Control+Shift+M');
            const link = page.locator('a.monaco-link', { hasText: /^CT001$/ }).first();
            // Ctrl+Shift+M toggles: when the Problems view was open already, the first press hid it
            const shown = await link.waitFor({ state: 'visible', timeout: 15_000 }).then(
              () => true,
              () => false,
            );
            if (!shown) {
              await page.keyboard.press('Control+Shift+M');
              await link.waitFor({ state: 'visible', timeout: 30_000 });
            }
            await link.click();
            const end = Date.now() + 30_000;
            let text = '';
            while (Date.now() < end && !/Hidden default system prompt/.test(text)) {
              for (const f of webviewFrames(page)) {
                const t = String(await f.evaluate('document.body.innerText').catch(() => ''));
                if (/^CT001/.test(t)) text = t;
              }
              await sleep(500);
            }
            if (!/Hidden default system prompt \(warning\)/.test(text))
              throw new Error(`the CT001 docs never showed rendered; saw: ${text.slice(0, 200)}`);
            if (/\*\*|###/.test(text)) throw new Error('the docs show Markdown source, not rendered text');
            await sleep(300);
            await page.screenshot({ path: path.join(shots, 'diagnostic-docs.png') });
          }),
        );
        fs.writeFileSync(path.join(tmp, 'done'), '');
      }
      await new Promise((r) => setTimeout(r, 300));
    }
    if (!fs.existsSync(results)) {
      const tail = fs.readFileSync(path.join(tmp, 'server.log'), 'utf8').split('\n').slice(-40).join('\n');
      fail(`no results within ${TIMEOUT_MS / 1000}s (server exit ${server.exitCode}); server log tail:\n${tail}`);
    }
    await new Promise((r) => setTimeout(r, 200)); // let the writer finish
    const { results: inEditor } = JSON.parse(fs.readFileSync(results, 'utf8')) as {
      results: { title: string; state: string; ms?: number; error?: string }[];
    };
    if (inEditor.length === 0) fail(`no in-editor tests ran (${restricted ? 'restricted' : 'trusted'} session)`);
    return [...inEditor, ...uiResults];
  } finally {
    await cleanup();
    fs.rmSync(workspace, { recursive: true, force: true });
  }
}

type Page = import('playwright-core').Page;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs a command from the palette by its title. */
async function palette(page: Page, title: string, options: { ifOffered?: boolean } = {}): Promise<void> {
  // the command's own row must be the focused one before Enter: typed into a list still filling (a busy fresh
  // server), an Enter runs nothing, or another command. Tried twice, and said in the log when the first missed.
  // `ifOffered`: a command that only shows when it applies (Hide Notifications with no toast): looked for once
  for (let attempt = 1; ; attempt++) {
    await page.keyboard.press('Escape');
    await page.keyboard.press('F1');
    await page.locator('.quick-input-widget input').waitFor({ state: 'visible', timeout: 15_000 });
    await page.keyboard.type(title);
    const row = page.locator('.quick-input-list .monaco-list-row.focused', { hasText: title });
    const ready = await row.waitFor({ state: 'visible', timeout: options.ifOffered ? 3_000 : 15_000 }).then(
      () => true,
      () => false,
    );
    if (ready) {
      await sleep(200);
      await page.keyboard.press('Enter');
      return;
    }
    if (options.ifOffered) return;
    const rows = await page
      .locator('.quick-input-list .monaco-list-row')
      .allTextContents()
      .catch(() => []);
    const typed = await page
      .locator('.quick-input-widget input')
      .inputValue()
      .catch(() => '(no input)');
    const seen = `the input holds "${typed}", the list: ${rows.join(' | ').slice(0, 200) || '(empty)'}`;
    if (attempt === 2) throw new Error(`the palette never offered "${title}"; ${seen}`);
    console.log(`     (the palette did not offer "${title}" in time (${seen}); opening it again)`);
  }
}

/**
 * Runs the palette command `title` and waits for the quick pick it opens (one holding `text`). A quick pick closes
 * when the window takes the focus elsewhere (a fresh server's own start can); a user then runs the command again,
 * and so does the test, once, saying so in the log.
 */
async function paletteQuickPick(page: Page, title: string, text: string, timeout = 30_000): Promise<void> {
  const pick = page.locator('.quick-input-widget', { hasText: text });
  for (let attempt = 1; ; attempt++) {
    await palette(page, title);
    const shown = await pick.waitFor({ state: 'visible', timeout }).then(
      () => true,
      () => false,
    );
    if (shown) return;
    if (attempt === 2) throw new Error(`"${title}" never showed its quick pick (${text}), twice`);
    console.log(`     ("${title}" showed no quick pick; running it again)`);
  }
}

/**
 * The notification toast holding `text`, once it shows: what a user sees pop up at the bottom right (without the
 * smoke-test driver flag, notifications come as toasts). Toasts a test is not looking for are left alone.
 */
async function toast(page: Page, text: string | RegExp, timeout = 60_000) {
  const item = page.locator('.notifications-toasts .notification-list-item', { hasText: text }).first();
  const shown = await item.waitFor({ state: 'visible', timeout }).then(
    () => true,
    () => false,
  );
  if (shown) return item;
  const all = await page
    .locator('.notifications-toasts')
    .allTextContents()
    .catch(() => ['(no toasts)']);
  throw new Error(`no notification toast with ${String(text)}; the toasts show: ${all.join(' | ').slice(0, 400)}`);
}

/** The Piggyback status bar entry's text (the current pair, and its answers when it has an eval run). */
async function statusBarText(page: Page): Promise<string> {
  const item = page.locator('.statusbar-item', { hasText: '\u2192' }).first();
  await item.waitFor({ state: 'visible', timeout: 30_000 });
  return ((await item.textContent()) ?? '').trim();
}

/** Waits until the status bar entry's text matches `re` (the entry follows the pair and its results). */
async function statusBarShows(page: Page, re: RegExp, timeout = 30_000): Promise<string> {
  const end = Date.now() + timeout;
  let text = '';
  while (Date.now() < end) {
    text = await statusBarText(page).catch(() => '');
    if (re.test(text)) return text;
    await sleep(300);
  }
  throw new Error(`the status bar never showed ${re}; it shows "${text}"`);
}

/** Picks the finetuned checkpoint through its quick pick, by the text typed into the filter. */
async function pickFinetuned(page: Page, filter: string): Promise<void> {
  await paletteQuickPick(page, 'Piggyback: Select Finetuned Checkpoint', 'built-in organism');
  await page.keyboard.type(filter);
  // the row the filter leaves on top, before Enter (an Enter on a list still filtering picks another)
  await page
    .locator('.quick-input-list .monaco-list-row.focused', { hasText: filter })
    .waitFor({ state: 'visible', timeout: 15_000 });
  await sleep(200);
  await page.keyboard.press('Enter');
}

/**
 * The packaged extension as a user meets it: the workspace trust prompt answered, then the first steps with no
 * checkpoint chosen (the toasts they raise), then a pair switch (A, B, A) that never shows one pair's results as
 * another's.
 */
async function asUsersRunIt(page: Page, shots: string): Promise<Outcome[]> {
  const out: Outcome[] = [];
  out.push(
    await uiTest(
      'the installed .vsix opens the workspace after the trust prompt, and shows its status bar entry',
      async () => {
        // the folder opens in Restricted Mode; the user trusts it from the banner's Manage link (the Workspace
        // Trust editor), or from the startup dialog where the workbench shows one
        const banner = page.locator('.monaco-workbench .part.banner a', { hasText: 'Manage' });
        const dialog = page.locator('.monaco-dialog-box .monaco-button', { hasText: 'Yes, I trust the authors' });
        await banner.or(dialog).first().waitFor({ state: 'visible', timeout: 90_000 });
        if (await dialog.isVisible()) await dialog.click();
        else {
          await banner.click();
          await page
            .locator('.workspace-trust-editor .monaco-button', { hasText: /^Trust/ })
            .first()
            .click({ timeout: 30_000 });
        }
        await page
          .locator('.statusbar-item', { hasText: 'Restricted Mode' })
          .waitFor({ state: 'detached', timeout: 30_000 });
        await palette(page, 'View: Close All Editors');
        // activation on the workspace's tokenizer_config.json files: the extension audits them (Problems count)
        await page
          .locator('.statusbar-item', { hasText: /Piggyback/ })
          .first()
          .waitFor({ state: 'visible', timeout: 60_000 });
      },
    ),
  );
  // each step builds on the one before: after a failure the rest would only repeat it, slowly
  if (out[0].state === 'passed') out.push(...(await firstSteps(page, shots)));
  if (out.every((o) => o.state === 'passed')) out.push(...(await pairSwitch(page, shots)));
  return out;
}

/**
 * A (base -> finetuned, evaluated by firstSteps), then B (base -> finetuned-qv: no eval yet, its own drift), then A
 * again: each pair shows its own results in the status bar and the dashboard.
 */
async function pairSwitch(page: Page, shots: string): Promise<Outcome[]> {
  const out: Outcome[] = [];
  let a = '';
  out.push(
    await uiTest(
      "after switching to another pair, the status bar and dashboard show none of the first pair's results",
      async () => {
        a = await statusBarShows(page, /base \u2192 finetuned \u00b7 shift \w+/);
        await pickFinetuned(page, 'finetuned-qv');
        const b = await statusBarShows(page, /base \u2192 finetuned-qv/);
        if (/shift/.test(b)) throw new Error(`the status bar shows answers for B before any eval of B: "${b}"`);
        await palette(page, 'Piggyback: Measure Prefix Drift');
        await page
          .locator('.quick-input-widget', { hasText: 'query to measure' })
          .waitFor({ state: 'visible', timeout: 90_000 });
        await page.keyboard.press('Enter');
        const text = await dashboardText(
          page,
          /Drift heatmap[\s\S]*base \u2192 finetuned-qv|base \u2192 finetuned-qv[\s\S]*Drift heatmap/,
        );
        if (/Where it lives: /.test(text) && !/not of the current pair/.test(text))
          throw new Error(`the dashboard shows an eval's answers as B's: ${text.slice(0, 400)}`);
        await sleep(400);
        await page.screenshot({ path: path.join(shots, 'pair-b.png') });
      },
    ),
  );
  out.push(
    await uiTest(
      'switching back to the first pair shows its own answers again, in the status bar and the dashboard',
      async () => {
        await pickFinetuned(page, 'built-in organism');
        const back = await statusBarShows(page, /base \u2192 finetuned \u00b7 shift/);
        if (back !== a) throw new Error(`back on A the status bar shows "${back}", not "${a}" as before`);
        const text = await dashboardText(page, /Where it lives/);
        if (/finetuned-qv/.test(text)) throw new Error(`B's results are shown for A: ${text.slice(0, 400)}`);
      },
    ),
  );
  return out;
}

/** The webview frames on the page (the dashboard first: it opens before any other). */
const webviewFrames = (page: Page) => page.frames().filter((f) => f.url().includes('/pre/fake.html'));
const dashboardFrame = (page: Page) => webviewFrames(page)[0];

/** Fails unless the notification carries each of `labels` as a button. */
async function expectButtons(note: import('playwright-core').Locator, labels: string[]): Promise<void> {
  for (const label of labels)
    if (!(await note.locator('.monaco-button', { hasText: label }).count()))
      throw new Error(`no "${label}" button on the notification: ${(await note.textContent()) ?? ''}`);
}

/** The dashboard webview's text, once it matches `re`. */
async function dashboardText(page: Page, re: RegExp, timeout = 90_000): Promise<string> {
  const end = Date.now() + timeout;
  let text = '';
  while (Date.now() < end) {
    const f = dashboardFrame(page);
    text = f ? String(await f.evaluate('document.body.innerText').catch(() => '')) : '';
    if (re.test(text)) return text;
    await sleep(500);
  }
  const notes = await page
    .locator('.notifications-center')
    .textContent()
    .catch(() => '');
  throw new Error(
    `the dashboard never showed ${re}; it shows: ${text.slice(0, 300)}; notifications: ${(notes ?? '').slice(0, 400)}`,
  );
}

/** No checkpoint chosen: the offer to pick one or use the organisms; an eval's progress, Cancel, "Continue it?". */
async function firstSteps(page: Page, shots: string): Promise<Outcome[]> {
  const out: Outcome[] = [];
  await page.bringToFront();
  out.push(
    await uiTest(
      'with no checkpoint chosen, Measure Prefix Drift says what it needs in a notification and offers the built-in organisms',
      async () => {
        await palette(page, 'Piggyback: Measure Prefix Drift');
        const offer = await toast(page, 'needs a base checkpoint');
        await expectButtons(offer, ['Select Checkpoints', 'Use Built-in Organisms']);
        await sleep(600); // the palette fades
        await page.screenshot({ path: path.join(shots, 'notification-no-checkpoint.png') });
        await offer.locator('.monaco-button', { hasText: 'Use Built-in Organisms' }).click();
        // the organisms load, then the query box asks; the default question is accepted
        await page
          .locator('.quick-input-widget', { hasText: 'query to measure' })
          .waitFor({ state: 'visible', timeout: 90_000 });
        await page.keyboard.press('Enter');
        await dashboardText(page, /Drift heatmap/);
      },
    ),
  );
  let stopped = { done: 0, total: 0 };
  out.push(
    await uiTest(
      'an eval run shows its progress in a notification whose Cancel stops it, finished probes kept',
      async () => {
        // a quick pick closes when the window takes the focus elsewhere; in a fresh server the workbench's own start
        // (its account providers timing out, with an error notification) can do that while the pick is open, and
        // the run never starts. A user then runs the command again; so does the test, once, and says so in the log
        for (let attempt = 1; ; attempt++) {
          await palette(page, 'Piggyback: Run Eval');
          // which probes: the built-in general set is ticked; accept it, once its ticked row is drawn (an Enter
          // before that accepts nothing)
          await page
            .locator('.quick-input-list .monaco-list-row[aria-checked="true"]', { hasText: 'Built-in general probes' })
            .waitFor({ state: 'visible', timeout: 30_000 });
          await sleep(300);
          await page.keyboard.press('Enter');
          const started = await toast(page, 'Piggyback: eval run', 20_000).then(
            () => true,
            () => false,
          );
          if (started) break;
          if (attempt === 2) throw new Error('Run Eval never started after its probe pick, twice');
          console.log('     (the probe pick closed without starting the run; running the command again)');
        }
        const progress = await toast(page, /Piggyback: eval run.*probe ([3-9]|\d\d+) of \d+/s, 90_000);
        await expectButtons(progress, ['Cancel']);
        await sleep(600); // the palette fades
        await page.screenshot({ path: path.join(shots, 'notification-progress.png') });
        await progress.locator('.monaco-button', { hasText: 'Cancel' }).click();
        await progress.waitFor({ state: 'detached', timeout: 30_000 });
        const text = await dashboardText(page, /\d+ of \d+ probes finished/);
        const m = /(\d+) of (\d+) probes finished/.exec(text)!;
        stopped = { done: Number(m[1]), total: Number(m[2]) };
        if (!(stopped.done > 0 && stopped.done < stopped.total))
          throw new Error(`the cancelled run shows ${m[0]}, not part of its probes`);
      },
    ),
  );
  out.push(
    await uiTest(
      'Run Eval again offers to continue the stopped run ("Continue it?"), and continuing finishes it',
      async () => {
        await palette(page, 'Piggyback: Run Eval');
        const offer = await toast(page, 'Continue it?');
        const text = (await offer.textContent()) ?? '';
        if (!text.includes(`stopped after ${stopped.done} of ${stopped.total} probes`))
          throw new Error(`the offer does not say where the run stopped: ${text}`);
        await expectButtons(offer, ['Continue Run', 'New Run']);
        await sleep(600); // the palette fades
        await page.screenshot({ path: path.join(shots, 'notification-continue.png') });
        await offer.locator('.monaco-button', { hasText: 'Continue Run' }).click();
        await dashboardText(page, new RegExp(`${stopped.total} of ${stopped.total} probes finished`), 120_000);
      },
    ),
  );
  out.push(
    await uiTest(
      'the finished run gives two answers in the overview: the behaviour shift, and where it lives',
      async () => {
        // the built-in organisms' plain finetune over the 40 general probes: graded, and never "risk low"
        const text = await dashboardText(page, /Where it lives/);
        for (const part of ['Behaviour shift', 'Where it lives', 'Not a safety verdict'])
          if (!text.includes(part)) throw new Error(`missing "${part}" in the overview`);
        if (/risk (low|high|medium)/i.test(text)) throw new Error('the overview still grades a "risk"');
        await dashboardFrame(page)!.evaluate("document.getElementById('overview').scrollIntoView()");
        await sleep(400);
        await page.screenshot({ path: path.join(shots, 'overview-two-answers.png') });
      },
    ),
  );
  await palette(page, 'Notifications: Hide Notifications', { ifOffered: true });
  await page.keyboard.press('Escape');
  return out;
}

/**
 * Asks the editor for the hover at the cursor (Ctrl+K Ctrl+I) until the row's training view shows: the first ask
 * can come before the dataset's template is associated or before the editor has focus, and is then empty.
 */
async function showRowHover(page: import('playwright-core').Page) {
  const hover = page.locator('.monaco-hover', { hasText: 'training view' }).first();
  for (let attempt = 0; attempt < 4; attempt++) {
    await page.keyboard.press('Control+K');
    await page.keyboard.press('Control+I');
    if (
      await hover.waitFor({ state: 'visible', timeout: 8_000 }).then(
        () => true,
        () => false,
      )
    )
      return hover;
    await page.keyboard.press('Escape');
  }
  await hover.waitFor({ state: 'visible', timeout: 8_000 });
  return hover;
}

async function runInElectron(): Promise<number> {
  // The standard launcher where VS Code can be downloaded; not reachable on this project's CI machines.
  const { runTests } = await import('@vscode/test-electron');
  const workspace = makeWorkspace();
  return runTests({
    version: process.env.VSCODE_VERSION ?? 'stable',
    extensionDevelopmentPath: ROOT,
    extensionTestsPath: path.join(ROOT, 'dist', 'test', 'vscode', 'index.js'),
    launchArgs: [workspace, '--disable-extensions'],
  });
}

async function runBoth(): Promise<number> {
  // PIGGYBACK_VSCODE_SESSIONS=packaged (for one) while working on the tests; all three otherwise
  const only = process.env.PIGGYBACK_VSCODE_SESSIONS?.split(',');
  // screenshots of an earlier run's failures go; this run's stay for the one reading the log
  const shots = path.join(ROOT, 'test', 'out', 'screenshots');
  if (fs.existsSync(shots))
    for (const f of fs.readdirSync(shots)) if (f.startsWith('failed-')) fs.rmSync(path.join(shots, f));
  const list: Outcome[] = [];
  for (const mode of ['packaged', 'trusted', 'restricted'] as const)
    if (!only || only.includes(mode)) list.push(...(await runInServer(mode)));
  for (const r of list) {
    console.log(`${r.state === 'passed' ? 'ok  ' : 'FAIL'} ${r.title}${r.ms !== undefined ? ` (${r.ms} ms)` : ''}`);
    if (r.error)
      console.log(
        r.error
          .split('\n')
          .map((l) => `     ${l}`)
          .join('\n'),
      );
  }
  const passed = list.filter((r) => r.state === 'passed').length;
  const failed = list.length - passed;
  console.log(`${passed} passed, ${failed} failed`);
  return failed > 0 ? 1 : 0;
}

(process.argv.includes('--electron') ? runInElectron() : runBoth()).then(
  (code) => process.exit(code),
  (e) => fail((e as Error).stack ?? String(e)),
);
