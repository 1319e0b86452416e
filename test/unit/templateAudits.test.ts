// The editor's template audits run in a worker thread with a time limit (src/extension/templateAudits.ts): the
// extension host never renders workspace templates itself, and a worker past its limit is stopped and replaced.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { TemplateAudits } from '../../src/extension/templateAudits';
import { makeTree, ROOT, tempDir } from '../helpers';

const WORKER = path.join(ROOT, 'dist', 'templateAuditWorker.js');
const CHATML =
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

describe('template audits in a worker thread', () => {
  const audits = new TemplateAudits(WORKER);
  after(() => audits.dispose());

  it('the real worker returns findings and the example segmentation as plain data', async () => {
    const dir = makeTree({ 'chat_template.jinja': CHATML });
    // settings arrive as read-only proxies in VS Code, which a worker message cannot clone as they are
    const view = await audits.audit(path.join(dir, 'chat_template.jinja'), CHATML, {
      kwargs: new Proxy({ enable_thinking: false }, {}),
    });
    assert.ok(view.segments, JSON.stringify(view.findings));
    assert.match(view.segments.prefix.text, /<\|im_start\|>user\n$/);
    // a template over its render budget comes back as a finding from the worker
    const loop = '{% for m in messages %}{{ m.content }}{% endfor %}{% for i in range(100000000) %}x{% endfor %}';
    const bad = await audits.audit(path.join(dir, 'chat_template.jinja'), loop, {});
    assert.ok(bad.findings.some((f) => f.code === 'CT009' && /template budget/.test(f.message)));
  });

  it('a worker that does not answer within the limit is stopped (CT009), and the next audit gets a fresh one', async () => {
    // a stand-in worker that never answers texts containing HANG (a template the budget would not catch)
    const script = path.join(tempDir(), 'hang.js');
    fs.writeFileSync(
      script,
      "const { parentPort } = require('node:worker_threads'); parentPort.on('message', (r) => { if (r.text.includes('HANG')) for (;;); parentPort.postMessage({ id: r.id, view: { findings: [] } }); });",
    );
    const stubborn = new TemplateAudits(script, 300);
    try {
      const slow = await stubborn.audit('/ws/chat_template.jinja', 'HANG', {});
      assert.deepEqual(
        slow.findings.map((f) => [f.code, f.file, f.line]),
        [['CT009', '/ws/chat_template.jinja', 1]],
      );
      assert.match(slow.findings[0].message, /did not finish within 0\.3 s and was stopped/);
      assert.deepEqual(await stubborn.audit('/ws/chat_template.jinja', 'fine', {}), { findings: [] });
    } finally {
      stubborn.dispose();
    }
  });
});
