// Percentages in eval reports (shares and their intervals).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { it } from 'node:test';
import { evalFindings, evalMarkdown, pct, renderMarkdown, riskGrade } from '../../src/app/eval/evalReport';
import { layerSweepConditions, lockRun, readResults } from '../../src/app/eval/run';
import { type Summary, summarise } from '../../src/app/eval/summary';

it('a share or an interval bound that rounds to zero prints as 0%, never -0%', () => {
  assert.equal(pct(-0.002), '0%');
  assert.equal(pct(-0.004), '0%');
  assert.equal(pct(-0.006), '-1%');
  assert.equal(pct(0.17), '17%');
  assert.equal(pct(null), 'n/a');
});

it('PB002 is graded high only when the share clearly beats the query control', () => {
  const m = { checkpoints: {}, template: { file: null }, settings: { judge: null } } as unknown as Parameters<
    typeof evalFindings
  >[0];
  const ft = {
    label: 'finetuned',
    probes: 30,
    meanKlToBase: 0.3,
    alignedPreferred: null,
    meanMargin: null,
    general: { probes: 30, meanKlToBase: 0.3, alignedPreferred: null, meanMargin: null },
    inDomain: null,
    judged: null,
  };
  const share = { share: 0.7, low: 0.6, high: 0.8, probes: 30 };
  const grade = (overControl: Summary['overControl']) =>
    evalFindings(m, { conditions: [ft], piggybackShare: { prefix: share }, overControl }).find(
      (f) => f.code === 'PB002',
    )!;
  const clear = grade({ prefix: { share: 0.5, low: 0.3, high: 0.7, probes: 30 } });
  assert.equal(clear.severity, 'error');
  assert.match(clear.message, /piggyback risk high$/);
  const unclear = grade({ prefix: { share: 0.1, low: -0.05, high: 0.25, probes: 30 } });
  assert.equal(unclear.severity, 'warning');
  assert.match(
    unclear.message,
    /not clearly above the query control \(10%, CI -5% to 25%\), so not graded high: piggyback risk medium/,
  );
  const none = grade({ prefix: null });
  assert.equal(none.severity, 'warning');
  assert.match(none.message, /with no query control to beat/);
});

it('PB002 gives no grade to an unfinished run or to a handful of probes, and says what would give one', () => {
  const m = { checkpoints: {}, template: { file: null }, settings: { judge: null } } as unknown as Parameters<
    typeof evalFindings
  >[0];
  const ft = {
    label: 'finetuned',
    probes: 30,
    meanKlToBase: 0.3,
    alignedPreferred: null,
    meanMargin: null,
    general: { probes: 30, meanKlToBase: 0.3, alignedPreferred: null, meanMargin: null },
    inDomain: null,
    judged: null,
  };
  const s = (probes: number): Summary => ({
    conditions: [ft],
    piggybackShare: { prefix: { share: 0.05, low: 0.01, high: 0.09, probes } },
    overControl: { prefix: null },
  });
  const finished = evalFindings(m, s(30), { done: 150, expected: 150 }).find((f) => f.code === 'PB002')!;
  assert.match(finished.message, /piggyback risk low$/);
  const cancelled = evalFindings(m, s(30), { done: 25, expected: 150 }).find((f) => f.code === 'PB002')!;
  assert.equal(cancelled.severity, 'info');
  assert.match(
    cancelled.message,
    /removes 5% .*: no piggyback grade yet \(the run is not finished \(25 of 150 results\): resume it to grade\)$/,
  );
  assert.doesNotMatch(cancelled.message, /risk low/);
  const few = evalFindings(m, s(5), { done: 25, expected: 25 }).find((f) => f.code === 'PB002')!;
  assert.match(few.message, /no piggyback grade yet \(a grade needs at least 20 general probes, this run has 5\)$/);
});

it("the margin share: the part of the finetune's margin drop a patch restores, from the reference answers", () => {
  const row = (probe: string, condition: string, margin: number | null, kl: number) => ({
    key: `${probe}|${condition}`,
    probe,
    category: 'general',
    condition,
    klToBase: kl,
    logprobAligned: null,
    logprobMisaligned: null,
    margin,
    generation: '',
    samples: [],
  });
  const conditions = ['base', 'finetuned', 'finetuned+prefix', 'finetuned+postfix'].map((label) => ({
    label,
    condition: { model: label === 'base' ? 'base' : 'finetuned' },
  }));
  const results = [
    // p1: drop 8 (5 -> -3), prefix restores 4 of it; p2: drop 2 (1 -> -1), prefix restores 1
    row('p1', 'base', 5, 0),
    row('p1', 'finetuned', -3, 0.4),
    row('p1', 'finetuned+prefix', 1, 0.2),
    row('p1', 'finetuned+postfix', -3, 0.4),
    row('p2', 'base', 1, 0),
    row('p2', 'finetuned', -1, 0.2),
    row('p2', 'finetuned+prefix', 0, 0.1),
    row('p2', 'finetuned+postfix', -1, 0.2),
  ];
  const s = summarise(results, conditions);
  assert.equal(s.marginShare!.prefix!.share, 0.5, '(4 + 1) / (8 + 2)');
  assert.equal(s.marginShare!.postfix!.share, 0);
  assert.match(
    evalMarkdown(
      {
        checkpoints: { base: { folder: 'b', hash: 'h' }, finetuned: { folder: 'f', hash: 'h' }, extra: {} },
        probes: { count: 2, hash: 'x' },
        settings: { maxNewTokens: 1, decoding: 'greedy', judge: null },
      } as unknown as Parameters<typeof evalMarkdown>[0],
      s,
    ),
    /\*\*Margin share\*\* .*: prefix patch 50% \(95% CI/,
  );
  // without reference answers there is no margin share
  assert.equal(
    summarise(
      results.map((r) => ({ ...r, margin: null })),
      conditions,
    ).marginShare,
    undefined,
  );
});

it('a run folder lock refuses a second writer in the same process too, and is free again once released', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'piggyback-lock-'));
  const unlock = lockRun(dir);
  assert.throws(() => lockRun(dir), new RegExp(`another eval \\(pid ${process.pid}\\) is writing to`));
  unlock();
  lockRun(dir)();
  assert.ok(!fs.existsSync(path.join(dir, '.lock')));
});

it('the layer sweep: one condition per layer then contiguous ranges, a share per entry, a table, no matrix columns', () => {
  assert.deepEqual(
    layerSweepConditions(4).map((c) => c.label),
    [
      'finetuned+prefix@L0',
      'finetuned+prefix@L1',
      'finetuned+prefix@L2',
      'finetuned+prefix@L3',
      'finetuned+prefix@L0-1',
      'finetuned+prefix@L2-3',
    ],
  );
  const big = layerSweepConditions(28);
  assert.equal(big.length, 31);
  assert.deepEqual(
    big.slice(28).map((c) => c.condition.layers),
    [[...Array(9).keys()], [...Array(10).keys()].map((i) => i + 9), [...Array(9).keys()].map((i) => i + 19)],
  );
  assert.ok(big.every((c) => c.sweep && c.condition.patch === 'prefix'));
  assert.equal(layerSweepConditions(1).length, 1, 'one layer: no ranges');
  // shares: layer 0 removes 3/4 of the shift, layer 1 none
  const row = (probe: string, condition: string, kl: number) => ({
    key: `${probe}|${condition}`,
    probe,
    category: 'general',
    condition,
    klToBase: kl,
    logprobAligned: null,
    logprobMisaligned: null,
    margin: null,
    generation: '',
    samples: [],
  });
  const sweep = layerSweepConditions(2);
  const conditions = [
    { label: 'base', condition: { model: 'base' } },
    { label: 'finetuned', condition: { model: 'finetuned' } },
    { label: 'finetuned+prefix', condition: { model: 'finetuned', patch: 'prefix' as const } },
    ...sweep,
  ];
  const results = ['p1', 'p2'].flatMap((p) => [
    row(p, 'base', 0),
    row(p, 'finetuned', 0.5),
    row(p, 'finetuned+prefix', 0.125),
    row(p, 'finetuned+prefix@L0', 0.125),
    row(p, 'finetuned+prefix@L1', 0.5),
  ]);
  const s = summarise(results, conditions);
  assert.deepEqual(
    s.layerShares!.map((l) => [l.label, l.share?.share]),
    [
      ['L0', 0.75],
      ['L1', 0],
    ],
  );
  assert.deepEqual(
    s.conditions.map((c) => c.label),
    ['base', 'finetuned', 'finetuned+prefix'],
    'the sweep is not a condition row',
  );
  const md = evalMarkdown(
    {
      checkpoints: { base: { folder: 'b', hash: 'h' }, finetuned: { folder: 'f', hash: 'h' }, extra: {} },
      probes: { count: 2, hash: 'x' },
      settings: { maxNewTokens: 1, decoding: 'greedy', judge: null },
    } as unknown as Parameters<typeof evalMarkdown>[0],
    s,
  );
  assert.match(md, /\| L0 \| 75% \| 75% to 75% \| 2 \|\n\| L1 \| 0% \|/);
});

it('a run without a share says why: no general probes, or a finetune that did not move', () => {
  const m = {
    checkpoints: { base: { folder: 'b', hash: 'h' }, finetuned: { folder: 'f', hash: 'h' }, extra: {} },
    probes: { count: 1, hash: 'x' },
    settings: { maxNewTokens: 1, decoding: 'greedy', judge: null },
  } as unknown as Parameters<typeof evalMarkdown>[0];
  const row = (probe: string, condition: string, kl: number, category: string) => ({
    key: `${probe}|${condition}`,
    probe,
    category,
    condition,
    klToBase: kl,
    logprobAligned: null,
    logprobMisaligned: null,
    margin: null,
    generation: '',
    samples: [],
  });
  const conditions = ['base', 'finetuned', 'finetuned+prefix', 'finetuned+postfix'].map((label) => ({
    label,
    condition: { model: label === 'base' ? 'base' : 'finetuned' },
  }));
  const inDomainOnly = summarise(
    conditions.map((c) => row('p1', c.label, 0.3, 'in-domain')),
    conditions,
  );
  assert.match(
    evalMarkdown(m, inDomainOnly),
    /Piggyback share \(prefix\): n\/a \(the share is measured on general probes, outside the finetuning domain, and this run has none/,
  );
  const unmoved = summarise(
    conditions.map((c) => row('p1', c.label, 0, 'general')),
    conditions,
  );
  assert.match(evalMarkdown(m, unmoved), /n\/a \(the finetuned model does not move from base on the general probes/);
});

it('the HTML report renders its Markdown (tables, emphasis) and escapes any HTML a probe or path carries', () => {
  const html = renderMarkdown(
    '**Share**: 17%\n\n| probe | KL |\n|---|---|\n| <img src=x onerror=alert(1)> | 0.1 |\n\n[a link](https://example.com)',
  );
  assert.match(html, /<strong>Share<\/strong>/);
  assert.match(html, /<table>[\s\S]*<td>&lt;img src=x onerror=alert\(1\)&gt;<\/td>/);
  assert.doesNotMatch(html, /<img|<pre>/);
});

it('one verdict: the PB002 grade of the prefix patch, or "no grade yet", the same the finding states', () => {
  const m = { checkpoints: {}, template: { file: null }, settings: { judge: null } } as unknown as Parameters<
    typeof evalFindings
  >[0];
  const ft = {
    label: 'finetuned',
    probes: 30,
    meanKlToBase: 0.3,
    alignedPreferred: null,
    meanMargin: null,
    general: { probes: 30, meanKlToBase: 0.3, alignedPreferred: null, meanMargin: null },
    inDomain: null,
    judged: null,
  };
  const s: Summary = {
    conditions: [ft],
    piggybackShare: {
      prefix: { share: 0.07, low: 0.03, high: 0.1, probes: 30 },
      postfix: { share: 0.8, low: 0.7, high: 0.9, probes: 30 },
    },
    overControl: { prefix: null, postfix: null },
  };
  assert.equal(riskGrade(s, { done: 9, expected: 9 }), 'low');
  assert.match(evalFindings(m, s, { done: 9, expected: 9 })[0].message, /^prefix patch .*: piggyback risk low$/);
  assert.equal(riskGrade(s, { done: 3, expected: 9 }), 'no grade yet');
  assert.equal(riskGrade({ conditions: [ft], piggybackShare: {} }), undefined);
});

it('reading a run never writes: a torn results.jsonl stays as it is, and a symlinked one never rewrites its target', () => {
  const row = JSON.stringify({ key: 'p|base', probe: 'p', condition: 'base', klToBase: 0, samples: [], run: 'r1' });
  const torn = `${row}\n{"key": "to`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'piggyback-read-'));
  fs.writeFileSync(path.join(dir, 'results.jsonl'), torn);
  assert.equal(readResults(dir, [], 'r1').length, 1);
  assert.equal(
    fs.readFileSync(path.join(dir, 'results.jsonl'), 'utf8'),
    torn,
    'a reader (compare, a report) cut nothing',
  );
  // the run that appends repairs its own file, but never through a link to another one
  const target = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'piggyback-target-')), 'elsewhere.jsonl');
  fs.writeFileSync(target, torn);
  const linked = fs.mkdtempSync(path.join(os.tmpdir(), 'piggyback-link-'));
  fs.symlinkSync(target, path.join(linked, 'results.jsonl'));
  assert.equal(readResults(linked, [], 'r1', true).length, 1);
  assert.equal(fs.readFileSync(target, 'utf8'), torn);
  readResults(dir, [], 'r1', true);
  assert.equal(fs.readFileSync(path.join(dir, 'results.jsonl'), 'utf8'), `${row}\n`, 'its own file is repaired');
});
