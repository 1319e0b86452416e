// Run folders cannot be corrupted: a lock against a second writer, resume that reads only this run's valid rows, a
// manifest that is not a licence to relabel results, other-domain files that keep their probe ids apart.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { otherDomainProbeSets } from '../../src/app/eval/probes';
import { EVAL_CLI, makeTree, pairArgs, probeSubset, tempDir } from '../helpers';

describe('run folders cannot be corrupted', () => {
  const quick = (out: string, probes: string, ...more: string[]) =>
    spawnSync(
      process.execPath,
      [
        EVAL_CLI,
        'eval',
        ...pairArgs(),
        '--probes',
        probes,
        '--max-new-tokens',
        '4',
        '--perturb-trials',
        '0',
        '--out',
        out,
        ...more,
      ],
      { encoding: 'utf8' },
    );

  it('a lock: a second eval into a folder a live process writes to refuses with its pid; a stale lock is taken over', () => {
    const out = tempDir();
    const probes = probeSubset(1);
    fs.writeFileSync(path.join(out, '.lock'), JSON.stringify({ pid: process.pid }));
    const r = quick(out, probes);
    assert.equal(r.status, 2);
    assert.match(r.stderr, new RegExp(`another eval \\(pid ${process.pid}\\) is writing to`));
    // a lock left by a process that is gone (kill -9) does not block
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {
      encoding: 'utf8',
    }).stdout;
    fs.writeFileSync(path.join(out, '.lock'), JSON.stringify({ pid: Number(dead) }));
    assert.ok((quick(out, probes).status ?? 2) < 2);
    assert.ok(!fs.existsSync(path.join(out, '.lock')), 'released at the end');
  });

  it('resume reads only valid rows of this run: a duplicate, a foreign row and a torn middle line are reported by line, never counted twice', () => {
    const out = tempDir();
    const probes = probeSubset(2);
    assert.ok((quick(out, probes).status ?? 2) < 2);
    const file = path.join(out, 'results.jsonl');
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    const n = lines.length;
    const foreign = JSON.stringify({ ...JSON.parse(lines[0]), run: 'someotherrun0000' });
    // drop the last probe's rows so that the rerun has work to do, and damage the rest
    const keep = lines.slice(0, n / 2);
    const anonymous = JSON.stringify({ ...JSON.parse(lines[0]), run: undefined });
    fs.writeFileSync(file, [keep[0], keep[0], '{"key": "torn', foreign, anonymous, ...keep.slice(1)].join('\n') + '\n');
    const r = quick(out, probes);
    assert.ok((r.status ?? 2) < 2, r.stderr);
    assert.match(r.stderr, /results\.jsonl:2: a second row for .*; the first is kept/);
    assert.match(r.stderr, /results\.jsonl:3: not JSON \(a torn or edited line\); left out/);
    assert.match(r.stderr, /results\.jsonl:4: a row of another run \(someotherrun0000\); left out/);
    assert.match(r.stderr, /results\.jsonl:5: a row without this run's id; left out/);
    const rows = fs
      .readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .flatMap((l) => {
        try {
          return [JSON.parse(l)];
        } catch {
          return [];
        }
      });
    const valid = rows.filter((x) => x.run !== 'someotherrun0000');
    assert.equal(new Set(valid.map((x) => x.key)).size, n, 'every probe x condition once');
    assert.match(fs.readFileSync(path.join(out, 'report.md'), 'utf8'), /General probes: 2;/);
  });

  it('a deleted or edited manifest is not a licence to relabel old results; --resume needs a run', () => {
    const out = tempDir();
    const probes = probeSubset(1);
    assert.ok((quick(out, probes).status ?? 2) < 2);
    const manifest = path.join(out, 'manifest.json');
    const m = JSON.parse(fs.readFileSync(manifest, 'utf8'));
    fs.writeFileSync(manifest, JSON.stringify({ ...m, settings: { ...m.settings, maxNewTokens: 8 } }, null, 2));
    const edited = quick(out, probes, '--max-new-tokens', '8');
    assert.equal(edited.status, 2);
    assert.match(edited.stderr, /manifest\.json was edited after the run started/);
    fs.rmSync(manifest);
    const deleted = quick(out, probes);
    assert.equal(deleted.status, 2);
    assert.match(deleted.stderr, /holds results\.jsonl but no manifest\.json/);
    const nothing = quick(tempDir(), probes, '--resume');
    assert.equal(nothing.status, 2);
    assert.match(nothing.stderr, /--resume: .* holds no run to resume/);
  });

  it('other-domain files with the same name keep their probe ids apart', () => {
    const a = makeTree({
      'health.jsonl': '{"messages":[{"role":"user","content":"q1"},{"role":"assistant","content":"a"}]}\n',
    });
    const b = makeTree({
      'health.jsonl': '{"messages":[{"role":"user","content":"q2"},{"role":"assistant","content":"a"}]}\n',
    });
    const ids = otherDomainProbeSets([path.join(a, 'health.jsonl'), path.join(b, 'health.jsonl')]).map((p) => p.id);
    assert.deepEqual(ids, ['other-health-line-1', 'other-health-2-line-1']);
  });
});
