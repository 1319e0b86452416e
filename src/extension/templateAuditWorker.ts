/**
 * The template audit in a worker thread (no `vscode` here): a template is code from the workspace, and its
 * renders for diagnostics and hovers must not block or crash the extension host. The worker answers each request
 * with plain data (findings, the template's offsets in its file, the example segmentation).
 */
import { parentPort } from 'node:worker_threads';
import * as path from 'node:path';
import { auditTrainerConfig, prepareTemplate, type PrepareOptions, trainerMarkdown } from '../app/audits';
import { LineIndex } from '../domain/json';
import type { TemplateAuditRequest, TemplateAuditView } from './templateAudits';

parentPort?.on('message', (req: TemplateAuditRequest) => {
  let view: TemplateAuditView;
  try {
    if (req.trainer) {
      const a = auditTrainerConfig(req.file, { text: req.text, root: req.trainer.root });
      const name = path.basename(req.file);
      view = a
        ? {
            findings: a.findings,
            trainer: {
              line: new LineIndex(req.text).position(a.config.templateAt.start).line,
              title: `${name} template comparison`,
              markdown: trainerMarkdown(a, name),
            },
          }
        : { findings: [] };
    } else {
      const p = prepareTemplate(req.file, { ...(req.options as PrepareOptions), text: req.text });
      view = { findings: p.findings, offsets: p.source?.offsets, segments: p.audit?.segments };
    }
  } catch (e) {
    view = {
      findings: [
        {
          code: 'CT009',
          severity: 'error',
          message: `The template audit failed: ${(e as Error).message}`,
          file: req.file,
          line: 1,
          column: 1,
          endLine: 1,
          endColumn: 2,
        },
      ],
    };
  }
  parentPort!.postMessage({ id: req.id, view });
});
