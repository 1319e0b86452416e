/**
 * The in-editor test entry point (extensionTestsPath). The same module serves @vscode/test-electron where VS Code
 * can be downloaded and the VS Code server of the code-server package here. Results are also written as JSON to
 * $PIGGYBACK_TEST_RESULTS, because a server-side extension host has no console the driver can read.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Mocha from 'mocha';

interface Result {
  title: string;
  state: 'passed' | 'failed';
  ms?: number;
  error?: string;
}

export function run(): Promise<void> {
  const mocha = new Mocha({ ui: 'bdd', timeout: 60_000, color: false });
  // a Restricted Mode session (workspace not trusted) runs its own suite; a trusted one runs all the others
  const suffix = process.env.PIGGYBACK_RESTRICTED ? '.restricted.js' : '.suite.js';
  for (const f of fs
    .readdirSync(__dirname)
    .filter((n) => n.endsWith(suffix))
    .sort())
    mocha.addFile(path.join(__dirname, f));
  const results: Result[] = [];
  const out = process.env.PIGGYBACK_TEST_RESULTS;
  return new Promise((resolve, reject) => {
    const runner = mocha.run((failures) => {
      if (out) fs.writeFileSync(out, JSON.stringify({ results, failures }, null, 2));
      if (failures > 0) reject(new Error(`${failures} in-editor tests failed`));
      else resolve();
    });
    runner.on('pass', (t) => results.push({ title: t.fullTitle(), state: 'passed', ms: t.duration }));
    runner.on('fail', (t, err: Error) =>
      results.push({ title: t.fullTitle(), state: 'failed', error: err.stack ?? String(err) }),
    );
  });
}
