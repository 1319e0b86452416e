// Paths and files a workspace names: kept inside the workspace, and only regular files under a size cap are read
// (devices, FIFOs and symlinks to them are refused at once, never read forever or into memory).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { FileRefusedError, insideRoot, readTextChecked } from '../../src/domain/files';
import { associate, auditFolder, prepareTemplate } from '../../src/app/audits';
import { loadTokenizerCached } from '../../src/domain/tokenizer';
import { makeTree, ROOT, tempDir } from '../helpers';
import { splitOf } from '../../src/domain/dataset/columnar';
import { contextLength } from '../../src/domain/dataset/training';

const CLI = path.join(ROOT, 'dist', 'cli.js');
const TEMPLATE = path.join(ROOT, 'examples', 'organisms', 'base');

describe('paths from a workspace stay inside it (WS001)', () => {
  it('insideRoot: .., absolute paths and symlinks out are outside; symlinks within are inside', () => {
    const root = makeTree({ 'models/a/tokenizer_config.json': '{}' });
    const outside = tempDir();
    fs.symlinkSync(outside, path.join(root, 'escape'));
    fs.symlinkSync(path.join(root, 'models'), path.join(root, 'alias'));
    assert.equal(insideRoot(root, 'models/a'), true);
    assert.equal(insideRoot(root, 'alias/a'), true);
    assert.equal(insideRoot(root, '../x'), false);
    assert.equal(insideRoot(root, '/etc/passwd'), false);
    assert.equal(insideRoot(root, 'escape/anything'), false);
    assert.equal(insideRoot(root, 'models/../../x'), false);
  });

  it('.piggyback.json entries that leave the workspace are refused with a located finding; the dataset falls back to the guess', async () => {
    const outside = makeTree({
      'tokenizer_config.json': JSON.stringify({ chat_template: '{{ messages[0].content }}' }),
    });
    const root = makeTree({
      'models/m/tokenizer_config.json': JSON.stringify({
        chat_template: '{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}',
      }),
      'data/a.jsonl': '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}\n',
      'data/b.jsonl': '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}\n',
      '.piggyback.json': JSON.stringify(
        {
          datasets: {
            'data/a.jsonl': path.relative('/', outside).replace(/^/, '/'),
            'data/b.jsonl': '../../elsewhere',
          },
        },
        null,
        2,
      ),
    });
    const a = associate(path.join(root, 'data/a.jsonl'), root, [path.join(root, 'models/m')]);
    assert.equal(a.template, path.join(root, 'models/m'));
    assert.equal(a.refused?.code, 'WS001');
    assert.equal(a.refused?.file, path.join(root, '.piggyback.json'));
    assert.equal(a.refused?.line, 3);
    const audit = await auditFolder(root);
    const ws = audit.findings.filter((f) => f.code === 'WS001');
    assert.equal(ws.length, 2);
    assert.match(
      ws[1].message,
      /pairs data\/b\.jsonl with \.\.\/\.\.\/elsewhere, which is outside the workspace folder/,
    );
  });
});

describe('only regular files under a cap are read', () => {
  it('/dev/zero, a FIFO and a symlink to them are refused at once', { timeout: 20_000 }, () => {
    const dir = tempDir();
    const fifo = path.join(dir, 'chat_template.jinja');
    execFileSync('mkfifo', [fifo]);
    fs.symlinkSync('/dev/zero', path.join(dir, 'tokenizer.json'));
    assert.throws(
      () => readTextChecked('/dev/zero', 1000),
      (e: unknown) => e instanceof FileRefusedError && /a device, not a regular file/.test(e.message),
    );
    assert.throws(
      () => readTextChecked(fifo, 1000),
      (e: unknown) => e instanceof FileRefusedError && /a FIFO, not a regular file/.test(e.message),
    );
    assert.throws(() => loadTokenizerCached(path.join(dir, 'tokenizer.json')), /a device, not a regular file/);
    const p = prepareTemplate(fifo);
    assert.match(p.findings[0]?.message ?? '', /FIFO, not a regular file/);
    const big = path.join(dir, 'big.json');
    fs.writeFileSync(big, 'x'.repeat(2000));
    assert.throws(() => readTextChecked(big, 1000), /2,000 bytes is over the 1,000-byte limit/);
  });

  it('the CLI refuses a dataset that is a device or a FIFO with one line (exit 2)', { timeout: 20_000 }, () => {
    const dir = tempDir();
    fs.symlinkSync('/dev/zero', path.join(dir, 'zero.jsonl'));
    execFileSync('mkfifo', [path.join(dir, 'pipe.jsonl')]);
    for (const f of ['zero.jsonl', 'pipe.jsonl']) {
      const r = spawnSync(process.execPath, [CLI, 'dataset', path.join(dir, f), '--template', TEMPLATE], {
        encoding: 'utf8',
        timeout: 15_000,
      });
      assert.equal(r.status, 2, r.stderr);
      assert.match(
        r.stderr.split('\n')[0],
        /^piggyback dataset: .*(zero|pipe)\.jsonl: a (device|FIFO), not a regular file: refused$/,
      );
    }
  });
});

describe('files beside a dataset or a template go through the file gate', () => {
  it("a FIFO as a save_to_disk folder's state.json or a template's config.json is passed over, never read", () => {
    const dir = tempDir();
    spawnSync('mkfifo', [path.join(dir, 'state.json')]);
    spawnSync('mkfifo', [path.join(dir, 'config.json')]);
    assert.ok(fs.statSync(path.join(dir, 'state.json')).isFIFO());
    // (reading a FIFO with no writer blocks forever: these return at once)
    assert.equal(splitOf(path.join(dir, 'data-00000-of-00001.arrow')), undefined);
    assert.equal(contextLength(dir, {}), undefined);
  });
});
