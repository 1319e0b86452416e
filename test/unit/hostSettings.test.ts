// How the model host picks where it runs: on a machine without onnxruntime-node's CUDA provider (CI, a laptop)
// `auto` falls back to the CPU and says why, `cuda` refuses, and both name the command that installs the provider
// into the onnxruntime-node this checkout runs.
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { cudaUnavailable, defaultThreads, resolveSettings, SettingsError } from '../../src/modelHost/runtime';
import { ROOT } from '../helpers';

describe('the execution provider on a machine without the CUDA provider (as in CI)', () => {
  it('auto runs on the CPU and says why, cuda refuses, both naming the install command for this onnxruntime-node', () => {
    // where the CUDA provider is installed (a GPU box), the CPU fallback is not what happens: nothing to check there
    if (cudaUnavailable() === undefined) return;
    const script = path.join(ROOT, 'node_modules', 'onnxruntime-node', 'script', 'install.js');
    const hint = `ONNXRUNTIME_NODE_INSTALL=cuda12 node ${script}`;
    const auto = resolveSettings({ executionProvider: 'auto', threads: 2 });
    assert.equal(auto.device, 'cpu');
    assert.equal(auto.weightDtype, 'F32');
    assert.ok(auto.note?.startsWith('running on the CPU with 2 threads: '), auto.note);
    assert.ok(auto.note?.includes(hint), auto.note);
    assert.throws(
      () => resolveSettings({ executionProvider: 'cuda' }),
      (e: Error) => e instanceof SettingsError && e.message.includes(hint),
    );
  });
});

describe('threads and weights dtype', () => {
  it('more threads than cores are capped at the core count (100000 would exhaust the process limit)', () => {
    const cores = defaultThreads();
    assert.equal(resolveSettings({ executionProvider: 'cpu', threads: 100000 }).threads, cores);
    assert.equal(resolveSettings({ executionProvider: 'cpu', threads: 1 }).threads, 1);
    assert.throws(() => resolveSettings({ threads: 0 }), SettingsError);
  });

  it('auto on the CPU leaves the dtype to the load (chosen by memory); an explicit one is taken as it is', () => {
    const auto = resolveSettings({ executionProvider: 'cpu' });
    assert.equal(auto.chooseDtype, true);
    assert.equal(resolveSettings({ executionProvider: 'cpu', weightsDtype: 'int4' }).weightDtype, 'Q4');
    assert.equal(resolveSettings({ executionProvider: 'cpu', weightsDtype: 'int8' }).chooseDtype, undefined);
    assert.throws(
      () => resolveSettings({ weightsDtype: 'int3' as 'int4' }),
      (e: Error) => e instanceof SettingsError && /auto, float32, float16, int8, int4/.test(e.message),
    );
  });
});
