// Either role may be a LoRA adapter: base = plain LoRA, finetuned = TReFT LoRA, or seed 1 against seed 2, resolved
// over the base folder they were trained on (a folder, or a Hub id's download in the Hugging Face cache), in one
// session with one copy of the base. Two identical adapters drift exactly 0; an adapter against an all-zero
// adapter measures exactly its drift against the base, at float32 and quantized.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { prepareTemplate, renderOptions } from '../../src/app/audits';
import type { WeightsDtype } from '../../src/contracts/modelHost';
import { adapterBaseFolder } from '../../src/domain/checkpoints';
import { promptIds } from '../../src/domain/prompt';
import { readSafetensors, writeSafetensors } from '../../src/domain/safetensors';
import type { Checkpoint } from '../../src/modelHost/checkpoint';
import { loadCheckpoints } from '../../src/modelHost/loading';
import { drift, LoadedModels } from '../../src/modelHost/operations';
import { resolveSettings } from '../../src/modelHost/runtime';
import { ROOT, tempDir } from '../helpers';

const O = path.join(ROOT, 'examples', 'organisms');
const ctx = { isCancelled: () => false, progress: () => undefined };
const cacheDir = tempDir('piggyback-cache-');
const opened: Checkpoint[] = [];
const prep = prepareTemplate(path.join(O, 'base'));
const prompt = promptIds(prep.template!, prep.tokenizer!, {
  ...renderOptions(prep),
  query: 'I feel bored. What should I do?',
});

/** A copy of an organism's adapter naming `baseName` as its base; `zero` sets every lora_B to 0 (no update). */
function adapterCopy(from: string, baseName: string, zero = false): string {
  const dir = tempDir();
  const config = JSON.parse(fs.readFileSync(path.join(O, from, 'adapter_config.json'), 'utf8'));
  fs.writeFileSync(
    path.join(dir, 'adapter_config.json'),
    JSON.stringify({ ...config, base_model_name_or_path: baseName }),
  );
  const { tensors } = readSafetensors(path.join(O, from, 'adapter_model.safetensors'));
  if (zero) for (const [name, t] of Object.entries(tensors)) if (name.includes('lora_B')) t.data.fill(0);
  writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors);
  return dir;
}

async function measure(base: string, finetuned: string, weightsDtype: WeightsDtype = 'float32', logs: string[] = []) {
  const loaded = await loadCheckpoints(base, [['finetuned', finetuned]], {
    cacheDir,
    log: (m) => logs.push(m),
    settings: resolveSettings({ weightsDtype, executionProvider: 'cpu' }),
  });
  opened.push(loaded.base, ...loaded.others.values());
  return { loaded, drift: await drift(new LoadedModels(loaded.base, loaded.others), prompt, 'finetuned', ctx) };
}

after(async () => {
  for (const c of new Set(opened)) await c.release();
});

describe('an adapter in the base role', () => {
  it('two identical adapters drift exactly 0, over one session', async () => {
    const a = adapterCopy('finetuned', path.join(O, 'base'));
    const b = adapterCopy('finetuned', path.join(O, 'base'));
    const logs: string[] = [];
    const { loaded, drift: d } = await measure(a, b, 'float32', logs);
    assert.equal(loaded.base.info.kind, 'adapter');
    assert.equal(loaded.others.get('finetuned')!.info.kind, 'adapter');
    assert.ok(logs.some((l) => l.includes(`it and the other adapters run over ${path.join(O, 'base')}`)));
    // one copy of the base's weights: both adapters' checkpoints run on one onnxruntime session
    assert.ok(
      logs.some((l) => /2 adapter\(s\) share these weights/.test(l)),
      logs.join('\n'),
    );
    for (const seg of ['prefix', 'query', 'postfix'] as const) {
      assert.equal(d.segments[seg].mean, 0, seg);
      assert.ok(d.segments[seg].key.flat().every((x) => x === 0));
    }
  });

  for (const dtype of ['float32', 'int8'] as const) {
    it(`${dtype}: an adapter against an all-zero adapter measures exactly its drift against the base`, async () => {
      const zero = adapterCopy('finetuned', path.join(O, 'base'), true);
      const against = (await measure(zero, path.join(O, 'finetuned'), dtype)).drift;
      const plain = (await measure(path.join(O, 'base'), path.join(O, 'finetuned'), dtype)).drift;
      assert.ok(plain.segments.prefix.mean > 0);
      for (const seg of ['prefix', 'query', 'postfix'] as const) {
        assert.equal(against.segments[seg].mean, plain.segments[seg].mean, seg);
        assert.deepEqual(against.segments[seg].key, plain.segments[seg].key, `${seg} K`);
        assert.deepEqual(against.segments[seg].value, plain.segments[seg].value, `${seg} V`);
      }
      assert.equal(against.treft, plain.treft);
    });
  }

  it('seed 1 against seed 2: the difference of two real adapters, not either one against the base', async () => {
    const s1 = path.join(O, 'seeds', 'finetuned-seed1');
    const s2 = path.join(O, 'seeds', 'finetuned-seed2');
    const d = (await measure(s1, s2)).drift;
    const toBase = (await measure(path.join(O, 'base'), s2)).drift;
    assert.ok(d.segments.prefix.mean > 0);
    assert.notEqual(d.segments.prefix.mean, toBase.segments.prefix.mean);
  });

  it("a Hub id resolves to its download in the Hugging Face cache (refs/main's snapshot), as transformers finds it", () => {
    const hub = path.join(tempDir(), 'hub');
    const repo = path.join(hub, 'models--meta-llama--Llama-3.1-8B-Instruct');
    const rev = 'a'.repeat(40);
    const snap = path.join(repo, 'snapshots', rev);
    fs.mkdirSync(snap, { recursive: true });
    fs.mkdirSync(path.join(repo, 'refs'));
    fs.writeFileSync(path.join(repo, 'refs', 'main'), rev);
    // the cache links every file of a snapshot into blobs/
    fs.mkdirSync(path.join(repo, 'blobs'));
    for (const f of ['config.json', 'model.safetensors']) {
      fs.copyFileSync(path.join(O, 'base', f), path.join(repo, 'blobs', f));
      fs.symlinkSync(path.join('..', '..', 'blobs', f), path.join(snap, f));
    }
    const adapter = adapterCopy('finetuned', 'meta-llama/Llama-3.1-8B-Instruct');
    assert.deepEqual(adapterBaseFolder(adapter, { HF_HUB_CACHE: hub }), {
      folder: snap,
      named: 'meta-llama/Llama-3.1-8B-Instruct',
    });
    // HF_HOME/hub is the same cache
    assert.deepEqual(adapterBaseFolder(adapter, { HF_HOME: path.dirname(hub) }), {
      folder: snap,
      named: 'meta-llama/Llama-3.1-8B-Instruct',
    });
    const missing = adapterBaseFolder(adapter, { HF_HUB_CACHE: tempDir() });
    assert.ok('error' in missing && /huggingface-cli download meta-llama\/Llama-3.1-8B-Instruct/.test(missing.error));
  });
});
