// How the model host picks where it runs: on a machine without onnxruntime-node's CUDA provider (CI, a laptop)
// `auto` falls back to the CPU and says why, `cuda` refuses, and both name the command that installs the provider
// into the onnxruntime-node this checkout runs.
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { cudaUnavailable, resolveSettings, SettingsError } from '../../src/modelHost/session';
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
