// Percentages in eval reports (shares and their intervals).
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { evalFindings, pct } from '../../src/core/eval/report';
import type { Summary } from '../../src/core/eval/summary';

it('a share or an interval bound that rounds to zero prints as 0%, never -0%', () => {
  assert.equal(pct(-0.002), '0%');
  assert.equal(pct(-0.004), '0%');
  assert.equal(pct(-0.006), '-1%');
  assert.equal(pct(0.17), '17%');
  assert.equal(pct(null), 'n/a');
});

it('PB002 is graded high only when the share clearly beats the query control', () => {
  const m = { checkpoints: {}, template: { file: null }, settings: { judge: null } } as unknown as Parameters<typeof evalFindings>[0];
  const ft = { label: 'finetuned', probes: 30, meanKlToBase: 0.3, alignedPreferred: null, meanMargin: null, general: { probes: 30, meanKlToBase: 0.3, alignedPreferred: null, meanMargin: null }, inDomain: null, judged: null };
  const share = { share: 0.7, low: 0.6, high: 0.8, probes: 30 };
  const grade = (overControl: Summary['overControl']) => evalFindings(m, { conditions: [ft], piggybackShare: { prefix: share }, overControl }).find((f) => f.code === 'PB002')!;
  const clear = grade({ prefix: { share: 0.5, low: 0.3, high: 0.7, probes: 30 } });
  assert.equal(clear.severity, 'error');
  assert.match(clear.message, /piggyback risk high$/);
  const unclear = grade({ prefix: { share: 0.1, low: -0.05, high: 0.25, probes: 30 } });
  assert.equal(unclear.severity, 'warning');
  assert.match(unclear.message, /not clearly above the query control \(10%, CI -5% to 25%\), so not graded high: piggyback risk medium/);
  const none = grade({ prefix: null });
  assert.equal(none.severity, 'warning');
  assert.match(none.message, /with no query control to beat/);
});
