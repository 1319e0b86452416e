// The TReFT export on the organisms: positions for every row, the base prefix K/V, meta and the recipe.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { readSafetensors } from '../../src/domain/safetensors';
import { EVAL_CLI, ORGANISMS, tempDir } from '../helpers';

describe('treft-export', () => {
  it('writes positions for every row, the base prefix K/V, meta and the recipe', () => {
    const out = tempDir();
    const data = path.join(ORGANISMS, 'finetune.jsonl');
    const r = spawnSync(
      process.execPath,
      [EVAL_CLI, 'treft-export', data, '--base', path.join(ORGANISMS, 'base'), '--out', out],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(r.status, 0, r.stderr);
    const rows = fs
      .readFileSync(path.join(out, 'positions.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.equal(rows.length, fs.readFileSync(data, 'utf8').trim().split('\n').length);
    assert.ok(
      rows.every((x) => x.prefixGroup === 0 && x.prefix[1] === rows[0].prefix[1]),
      'one shared prefix: the default system prompt',
    );
    const meta = JSON.parse(fs.readFileSync(path.join(out, 'meta.json'), 'utf8'));
    assert.match(meta.base.hash, /^[0-9a-f]{16}$/);
    assert.equal(meta.dataset.sha256.length, 64);
    const kv = readSafetensors(path.join(out, 'reference_kv.safetensors'));
    assert.deepEqual(kv.tensors['prefix.0.layers.0.key'].shape, [
      meta.base.kvHeads,
      rows[0].prefix[1],
      meta.base.headDim,
    ]);
    assert.equal(Object.keys(kv.tensors).length, 2 * meta.base.layers);
    const recipe = fs.readFileSync(path.join(out, 'RECIPE.md'), 'utf8');
    assert.match(recipe, /L\s+= L_SFT \+ lambda \* L_KV/);
    assert.match(recipe, /between 1 and 30/);
    assert.match(recipe, /shape \[2, P, 32\]/);
    // without a base checkpoint: positions and recipe only, no model run
    const lite = tempDir();
    const r2 = spawnSync(
      process.execPath,
      [EVAL_CLI, 'treft-export', data, '--template', path.join(ORGANISMS, 'base'), '--out', lite],
      { encoding: 'utf8' },
    );
    assert.equal(r2.status, 0, r2.stderr);
    assert.ok(!fs.existsSync(path.join(lite, 'reference_kv.safetensors')));
    assert.equal(
      fs.readFileSync(path.join(lite, 'positions.jsonl'), 'utf8'),
      fs.readFileSync(path.join(out, 'positions.jsonl'), 'utf8'),
    );
  });
});
