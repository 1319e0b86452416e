// The whole suite behind `npm test`: unit and CLI tests (node's runner), then the in-editor tests in a real VS Code
// (set up on first use by scripts/setup-vscode-tests.sh). Prints one closing "total: N passed, N failed" line.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// the model host's weight cache and hash memo go to a temporary folder, not the user's ~/.cache
const cacheDir = mkdtempSync(join(tmpdir(), 'piggyback-test-cache-'));
process.env.PIGGYBACK_CACHE_DIR = cacheDir;

function run(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  process.stdout.write(r.stdout ?? '');
  return { code: r.status ?? 1, out: r.stdout ?? '' };
}

let passed = 0;
let failed = 0;

// the tiers: unit (in-process, seconds), integration (the CLI as a process, hostile input at size, fuzz targets),
// host (the model host on real checkpoints); one node --test run so their counts add up in one summary
const unit = run(process.execPath, ['--test', 'dist/test/unit/', 'dist/test/integration/', 'dist/test/host/']);
const pass = /^# pass (\d+)$/m.exec(unit.out);
const fail = /^# fail (\d+)$/m.exec(unit.out);
passed += pass ? Number(pass[1]) : 0;
failed += fail ? Number(fail[1]) : 1;
if (unit.code !== 0 && !(fail && Number(fail[1]) > 0)) failed++;

const setup = spawnSync('bash', ['scripts/setup-vscode-tests.sh'], { stdio: 'inherit' });
if (setup.status !== 0) {
  console.log('in-editor tests: setup failed (see above)');
  failed++;
} else {
  const editor = run(process.execPath, ['dist/test/runVscodeTests.js']);
  const m = /^(\d+) passed, (\d+) failed$/m.exec(editor.out);
  if (m) {
    passed += Number(m[1]);
    failed += Number(m[2]);
  }
  if (!m || (editor.code !== 0 && Number(m[2]) === 0)) failed++;
}

rmSync(cacheDir, { recursive: true, force: true });
console.log(`total: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
