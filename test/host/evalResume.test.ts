// Resuming eval runs on the organisms: a run killed halfway resumes to the uninterrupted run's results, and a folder
// holding another run (new weights in the same folder, other checkpoints or settings) is refused, never resumed.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { EVAL_CLI, evalArgs, ORGANISMS, probeSubset, readResultLines, tempDir, pairArgs } from '../helpers';
import { organismExport } from '../layouts';

describe('eval runs resume, or refuse', () => {
  it('a sampled run killed halfway resumes to exactly the results of an uninterrupted run, without duplicates', async () => {
    const probes = probeSubset(8);
    const sampled = ['--temperature', '1', '--samples', '2', '--seed', '7', '--perturb-trials', '2'];
    const full = tempDir();
    assert.ok((spawnSync(process.execPath, evalArgs(full, probes, ...sampled)).status ?? 2) < 2);
    const killed = tempDir();
    const child = spawn(process.execPath, evalArgs(killed, probes, ...sampled), { stdio: 'ignore' });
    const resultsFile = path.join(killed, 'results.jsonl');
    const count = () =>
      fs.existsSync(resultsFile) ? fs.readFileSync(resultsFile, 'utf8').split('\n').filter(Boolean).length : 0;
    while (count() < 16 && child.exitCode === null) await new Promise((r) => setTimeout(r, 5));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const partial = count();
    assert.ok(partial >= 16 && partial < 64, `killed with ${partial} results`);
    // a torn last line, as a crash mid-write leaves, is dropped on resume
    fs.appendFileSync(resultsFile, '{"key": "torn');
    const again = spawnSync(process.execPath, evalArgs(killed, probes, ...sampled), { encoding: 'utf8' });
    assert.ok((again.status ?? 2) < 2, again.stderr);
    assert.deepEqual(readResultLines(killed).sort(), readResultLines(full).sort());
    const results = readResultLines(killed).map((l) => JSON.parse(l));
    assert.equal(
      new Set(results.map((x) => x.key)).size,
      64,
      '8 probes x 8 conditions (the query control leaves out the short organism questions)',
    );
    // seeds are recorded, differ between samples, and sampling differs from greedy
    const ft = results.find((x) => x.condition === 'finetuned');
    assert.equal(ft.samples.length, 2);
    assert.ok(
      ft.samples.every((s: { seed: number }) => Number.isInteger(s.seed)) && ft.samples[0].seed !== ft.samples[1].seed,
    );
    assert.equal(
      results.find((x) => x.condition === 'finetuned+prefix-perturb').samples.length,
      4,
      '2 trials x 2 samples',
    );
  });

  it('identity: new weights exported into the same folder are refused, naming the file, never resumed', () => {
    const out = tempDir();
    const probes = probeSubset(1);
    const ft = organismExport('treft', { graph: 'onnx/model.onnx' });
    const run = () =>
      spawnSync(
        process.execPath,
        [
          EVAL_CLI,
          'eval',
          '--base',
          path.join(ORGANISMS, 'base'),
          '--finetuned',
          ft,
          '--probes',
          probes,
          '--out',
          out,
          '--max-new-tokens',
          '4',
          '--perturb-trials',
          '0',
        ],
        { encoding: 'utf8' },
      );
    assert.ok((run().status ?? 2) < 2);
    const before = fs.readFileSync(path.join(out, 'results.jsonl'), 'utf8');
    // re-export: the same graph file, other weights in its external data (the base's)
    fs.copyFileSync(path.join(ORGANISMS, 'base', 'model.safetensors'), path.join(ft, 'onnx', 'model.onnx_data'));
    const again = run();
    assert.equal(again.status, 2);
    assert.match(
      again.stderr,
      /holds results of other weights, so it is not resumed: finetuned changed under the same path .*\(onnx\/model\.onnx_data: [0-9a-f]{16} -> [0-9a-f]{16}\)/,
    );
    assert.equal(fs.readFileSync(path.join(out, 'results.jsonl'), 'utf8'), before, 'earlier results untouched');
  });

  it('refuses to resume into a folder that holds a run of other checkpoints or settings', () => {
    const out = tempDir();
    const probes = probeSubset(1);
    assert.ok((spawnSync(process.execPath, evalArgs(out, probes)).status ?? 2) < 2);
    const other = spawnSync(
      process.execPath,
      [EVAL_CLI, 'eval', ...pairArgs('treft'), '--probes', probes, '--out', out],
      { encoding: 'utf8' },
    );
    assert.equal(other.status, 2);
    assert.match(
      other.stderr,
      /holds results of other weights, so it is not resumed: finetuned is another checkpoint \(.*finetuned then, .*treft now\)/,
    );
    const settings = spawnSync(process.execPath, evalArgs(out, probes, '--max-new-tokens', '8'), { encoding: 'utf8' });
    assert.match(settings.stderr, /holds a run of different settings/);
    const greedySamples = spawnSync(process.execPath, evalArgs(tempDir(), probes, '--samples', '3'), {
      encoding: 'utf8',
    });
    assert.equal(greedySamples.status, 2);
    assert.match(greedySamples.stderr, /several samples per probe need a temperature above 0/);
  });
});
