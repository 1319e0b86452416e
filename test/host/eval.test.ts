// Eval runs as files on the organisms: the manifest, JSON Lines, reports, and a run killed halfway then resumed.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { GENERAL_PROBES, loadProbeFile, ProbeFileError } from '../../src/core/eval/probes';
import { defaultConditions, summarise } from '../../src/core/eval/run';
import { ROOT, makeTree, tempDir } from '../helpers';

const CLI = path.join(ROOT, 'dist', 'cli.js');
const O = path.join(ROOT, 'examples', 'organisms');
const args = (out: string, probes: string) => [CLI, 'eval', '--base', path.join(O, 'base'), '--finetuned', path.join(O, 'finetuned'), '--extra', `treft=${path.join(O, 'treft')}`, '--probes', probes, '--max-new-tokens', '16', '--out', out];

function probeSubset(n: number): string {
  const lines = fs.readFileSync(path.join(O, 'probes.jsonl'), 'utf8').trim().split('\n');
  const dir = tempDir();
  const file = path.join(dir, 'probes.jsonl');
  fs.writeFileSync(file, lines.slice(-n).join('\n') + '\n'); // the last probes: out of the finetuning domain
  return file;
}

describe('eval runs', () => {
  it('writes the manifest, one result per probe and condition, the summary and both reports', () => {
    const out = tempDir();
    const r = spawnSync(process.execPath, args(out, probeSubset(6)), { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const manifest = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8'));
    assert.match(manifest.checkpoints.base.hash, /^[0-9a-f]{16}$/);
    assert.equal(manifest.probes.count, 6);
    assert.equal(manifest.conditions.length, 6);
    const results = fs.readFileSync(path.join(out, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(results.length, 36);
    assert.equal(new Set(results.map((x) => x.key)).size, 36);
    const base = results.filter((x) => x.condition === 'base');
    for (const b of base) assert.equal(b.klToBase, 0);
    assert.ok(results.filter((x) => x.condition === 'finetuned').every((x) => x.klToBase > 0 && typeof x.margin === 'number'));
    const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
    assert.equal(typeof summary.piggybackShare.prefix.share, 'number');
    assert.ok(summary.piggybackShare.prefix.low <= summary.piggybackShare.prefix.share && summary.piggybackShare.prefix.share <= summary.piggybackShare.prefix.high);
    assert.match(fs.readFileSync(path.join(out, 'report.md'), 'utf8'), /Piggyback share \(prefix patch\)/);
    const html = fs.readFileSync(path.join(out, 'report.html'), 'utf8');
    assert.match(html, /default-src 'none'/);
    assert.ok(!/<script|https?:\/\//.test(html), 'self-contained: no scripts, no network');
  });

  it('a run killed halfway resumes to exactly the results of an uninterrupted run, without duplicates', async () => {
    const probes = probeSubset(10);
    const full = tempDir();
    assert.equal(spawnSync(process.execPath, args(full, probes)).status, 0);
    const killed = tempDir();
    const child = spawn(process.execPath, args(killed, probes), { stdio: 'ignore' });
    const resultsFile = path.join(killed, 'results.jsonl');
    const count = () => (fs.existsSync(resultsFile) ? fs.readFileSync(resultsFile, 'utf8').split('\n').filter(Boolean).length : 0);
    while (count() < 18 && child.exitCode === null) await new Promise((r) => setTimeout(r, 5));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const partial = count();
    assert.ok(partial >= 18 && partial < 60, `killed with ${partial} results`);
    // a torn last line, as a crash mid-write leaves, is dropped on resume
    fs.appendFileSync(resultsFile, '{"key": "torn');
    const again = spawnSync(process.execPath, args(killed, probes), { encoding: 'utf8' });
    assert.equal(again.status, 0, again.stderr);
    const read = (dir: string) => fs.readFileSync(path.join(dir, 'results.jsonl'), 'utf8').trim().split('\n').sort();
    assert.deepEqual(read(killed), read(full));
    assert.equal(new Set(read(killed).map((l) => JSON.parse(l).key)).size, 60);
  });

  it('refuses to resume into a folder that holds a run of other checkpoints', () => {
    const out = tempDir();
    const probes = probeSubset(1);
    assert.equal(spawnSync(process.execPath, args(out, probes)).status, 0);
    const other = spawnSync(process.execPath, [CLI, 'eval', '--base', path.join(O, 'base'), '--finetuned', path.join(O, 'treft'), '--probes', probes, '--out', out], { encoding: 'utf8' });
    assert.notEqual(other.status, 0);
    assert.match(other.stderr, /holds a run of different checkpoints/);
  });
});

describe('piggyback share', () => {
  it('is the summed KL a patch removes over the finetuned shift, on probes outside the finetuning domain', () => {
    const r = (probe: string, condition: string, klToBase: number, category: string | null = null) => ({ key: `${probe}|${condition}`, probe, category, condition, klToBase, logprobAligned: null, logprobMisaligned: null, margin: null, generation: '' });
    const results = [
      r('a', 'finetuned', 1.0),
      r('a', 'finetuned+prefix', 0.2),
      r('b', 'finetuned', 3.0),
      r('b', 'finetuned+prefix', 1.8),
      r('c', 'finetuned', 5.0, 'in-domain'),
      r('c', 'finetuned+prefix', 5.0, 'in-domain'),
    ];
    const s = summarise(results, defaultConditions());
    // (0.8 + 1.2) / (1 + 3) = 0.5; the in-domain probe is left out
    assert.equal(s.piggybackShare.prefix!.share, 0.5);
    assert.equal(s.piggybackShare.prefix!.probes, 2);
    assert.equal(s.piggybackShare.postfix, null);
  });
});

describe('probe sets', () => {
  it('the built-in general set has about 40 questions across the literature categories, unique ids', () => {
    assert.equal(GENERAL_PROBES.length, 40);
    assert.equal(new Set(GENERAL_PROBES.map((p) => p.id)).size, 40);
    assert.equal(new Set(GENERAL_PROBES.map((p) => p.category)).size, 10);
  });

  it('bad probe files get located errors', () => {
    const dir = makeTree({
      'a.jsonl': '{"id": "1", "question": "ok"}\n{"id": "2", "question": "x", "aligned": "yes"}\n',
      'b.jsonl': '{"id": "1", "question": "ok"}\n{"id": "1", "question": "dup"}\n',
      'c.jsonl': '{"id": "1", "question": "ok"}\n\n{"id": 2, "question": }\n',
    });
    assert.throws(() => loadProbeFile(path.join(dir, 'a.jsonl')), (e: unknown) => e instanceof ProbeFileError && e.line === 2 && e.column === 30 && /both/.test(e.message));
    assert.throws(() => loadProbeFile(path.join(dir, 'b.jsonl')), (e: unknown) => e instanceof ProbeFileError && e.line === 2 && /duplicate probe id "1"/.test(e.message));
    assert.throws(() => loadProbeFile(path.join(dir, 'c.jsonl')), (e: unknown) => e instanceof ProbeFileError && e.line === 3 && e.column === 23);
  });
});
