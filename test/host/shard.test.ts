// Split eval runs: shards in separate processes, merged, equal one process's run of the same probes; merges that
// must be refused; a missing shard named and finished by resuming the merged folder.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { loadRun } from '../../src/app/eval/evalReport';
import { ORGANISMS, pairArgs, ROOT, runAsync, tempDir } from '../helpers';

const CLI = path.join(ROOT, 'dist', 'cli.js');
const FILES = ['manifest.json', 'results.jsonl', 'probes.jsonl', 'skipped.json', 'summary.json', 'report.md'];

/** `piggyback eval` of the organisms (with the TReFT checkpoint as an extra) over the organisms' probe file. */
const evalArgs = (out: string, ...more: string[]) => [
  CLI,
  'eval',
  ...pairArgs(),
  '--extra',
  `treft=${path.join(ORGANISMS, 'treft')}`,
  '--probes',
  path.join(ORGANISMS, 'probes.jsonl'),
  '--max-new-tokens',
  '12',
  '--perturb-trials',
  '2',
  '--threads',
  '1',
  '--out',
  out,
  ...more,
];
const evalRun = (out: string, ...more: string[]) => runAsync(process.execPath, evalArgs(out, ...more));
const merge = (...args: string[]) => spawnSync(process.execPath, [CLI, 'merge', ...args], { encoding: 'utf8' });
const read = (dir: string, f: string) => fs.readFileSync(path.join(dir, f), 'utf8');

describe('sharded eval runs', () => {
  const root = tempDir();
  const [full, s0, s1, s2] = ['full', 's0', 's1', 's2'].map((d) => path.join(root, d));
  let ready: Promise<void> | undefined;
  /** One unsharded run and the two shards of a 2-way split, all three processes at once. */
  const runs = () => {
    ready ??= Promise.all([evalRun(full), evalRun(s0, '--shard', '0/2'), evalRun(s1, '--shard', '1/2')]).then((rs) => {
      for (const r of rs) assert.ok(r.status === 0 || r.status === 1, r.stderr);
    });
    return ready;
  };

  it('two shards run in two processes and merged equal one run of the same probes: rows, shares, reports', async () => {
    await runs();
    const p0 = read(s0, 'probes.jsonl').trim().split('\n').length;
    const p1 = read(s1, 'probes.jsonl').trim().split('\n').length;
    const all = read(full, 'probes.jsonl').trim().split('\n').length;
    assert.equal(p0 + p1, all, 'every probe is in exactly one shard');
    assert.ok(p0 > 0 && p1 > 0, `both shards hold probes (${p0}, ${p1})`);
    const out = path.join(root, 'merged');
    const r = merge(s0, s1, '--out', out);
    assert.ok(r.status === 0 || r.status === 1, r.stderr);
    assert.match(r.stderr, new RegExp(`merged shards 0, 1 of 2 into .*: \\d+ rows for ${all} probes`));
    assert.doesNotMatch(r.stderr, /not finished/);
    // byte for byte: the merged run is the unsharded run (its manifest, hence its run id, rows and reports)
    for (const f of FILES) assert.equal(read(out, f), read(full, f), `${f} of the merged run`);
    const [a, b] = [loadRun(full), loadRun(out)];
    assert.deepEqual(b.summary, a.summary);
    assert.equal(b.progress.done, b.progress.expected);
    // the SARIF differs only in the folder its finding points to
    assert.equal(read(out, 'findings.sarif').replaceAll(out, full), read(full, 'findings.sarif'));
    // the exit status follows the findings, as eval's does
    const single = spawnSync(process.execPath, evalArgs(full), { encoding: 'utf8' });
    assert.equal(r.status, single.status, 'the same exit status as the (resumed, finished) unsharded run');
  });

  it('a shard given twice is merged once; a shard of other settings is refused with the difference named', async () => {
    await runs();
    const twice = merge(s0, s1, s0, '--out', path.join(root, 'twice'));
    assert.match(twice.stderr, /rows given twice, kept once/);
    assert.equal(read(path.join(root, 'twice'), 'results.jsonl'), read(full, 'results.jsonl'));
    const other = await evalRun(s2, '--shard', '1/2', '--seed', '7');
    assert.ok(other.status === 0 || other.status === 1, other.stderr);
    const refused = merge(s0, s2, '--out', path.join(root, 'other'));
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /does not belong with .*s0: settings: seed 1 vs 7/);
    assert.equal(fs.existsSync(path.join(root, 'other')), false, 'nothing is written for a refused merge');
    // an unsharded run is not a shard; the output folder never overwrites an input or a non-empty folder
    assert.match(merge(s0, full, '--out', path.join(root, 'x')).stderr, /full is not a shard/);
    assert.match(merge(s0, s1, '--out', s0).stderr, /is one of the shards/);
    assert.match(merge(s0, s1, '--out', full).stderr, /exists and is not an empty folder/);
    const split3 = await evalRun(path.join(root, 't0'), '--shard', '0/3', '--perturb-trials', '0');
    assert.ok(split3.status === 0 || split3.status === 1, split3.stderr);
    assert.match(merge(s0, path.join(root, 't0'), '--out', path.join(root, 'y')).stderr, /split: 2 shards vs 3/);
    // a shard another eval is still writing is not merged half-way; a merge writes nothing into its shards
    fs.writeFileSync(path.join(s1, '.lock'), JSON.stringify({ pid: process.pid }));
    const busy = merge(s0, s1, '--out', path.join(root, 'busy'));
    fs.rmSync(path.join(s1, '.lock'));
    assert.match(busy.stderr, new RegExp(`another eval \\(pid ${process.pid}\\) is writing to .*s1`));
    assert.deepEqual(
      fs.readdirSync(s0).filter((f) => f.startsWith('.')),
      [],
      'no lock left in a shard',
    );
    // a damaged probes.jsonl is named with its line, not an unexpected error
    const damaged = path.join(root, 'damaged');
    fs.cpSync(s0, damaged, { recursive: true });
    fs.appendFileSync(path.join(damaged, 'probes.jsonl'), '{not json\n');
    const lines = read(damaged, 'probes.jsonl').trim().split('\n').length;
    assert.match(
      merge(damaged, s1, '--out', path.join(root, 'z')).stderr,
      new RegExp(`piggyback merge: .*damaged/probes\\.jsonl:${lines}: not JSON`),
    );
  });

  it('a missing shard is named with its probes (exit 1); eval without --shard on the merged folder finishes it', async () => {
    await runs();
    const out = path.join(root, 'partial');
    const r = merge(s0, '--out', out);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /no folder holds shard 1\n/);
    const missing = read(s1, 'probes.jsonl')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).id as string);
    const named = /(\d+) of (\d+) probes are not finished: ([^;]+);/.exec(r.stderr);
    assert.ok(named, r.stderr);
    assert.equal(Number(named[1]), missing.length);
    for (const id of named[3].split(', ').filter((x) => x !== '...')) assert.ok(missing.includes(id), id);
    // the merged folder is the unsharded run, unfinished: the same eval resumes it and computes only the rest
    const resumed = spawnSync(process.execPath, evalArgs(out), { encoding: 'utf8' });
    assert.ok(resumed.status === 0 || resumed.status === 1, resumed.stderr);
    for (const f of ['manifest.json', 'summary.json', 'report.md'])
      assert.equal(read(out, f), read(full, f), `${f} once resumed`);
  });

  it('--shard is checked before any model loads', () => {
    for (const [arg, re] of [
      ['2/2', /i counts from 0 to N-1/],
      ['1', /--shard wants i\/N/],
      ['0/0', /N must be from 1/],
    ] as const) {
      const r = spawnSync(process.execPath, evalArgs(path.join(root, 'bad'), '--shard', arg), { encoding: 'utf8' });
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, re);
    }
  });
});
