// Percentages in eval reports (shares and their intervals).
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { pct } from '../../src/core/eval/report';

it('a share or an interval bound that rounds to zero prints as 0%, never -0%', () => {
  assert.equal(pct(-0.002), '0%');
  assert.equal(pct(-0.004), '0%');
  assert.equal(pct(-0.006), '-1%');
  assert.equal(pct(0.17), '17%');
  assert.equal(pct(null), 'n/a');
});
