/**
 * The extension host's side of the template-audit worker: one worker thread, one request at a time, each with a
 * time limit. A worker that runs past it (or runs out of its memory limit, or crashes) is terminated and the
 * template gets a CT009 finding saying so; the next request starts a fresh worker. The extension host itself
 * never renders a template for diagnostics or hovers.
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Finding } from '../domain/findings';
import type { PrepareOptions } from '../app/audits';
import type { Segmentation } from '../domain/template/segments';

export interface TemplateAuditRequest {
  id: number;
  file: string;
  text: string;
  options: Omit<PrepareOptions, 'text'>;
  /** A training config (axolotl, LLaMA-Factory, TRL) instead of a template: its trainer audit, inside `root`. */
  trainer?: { root?: string };
}

/** What diagnostics and hovers need of a template audit: plain data, copied across the thread boundary. */
export interface TemplateAuditView {
  findings: Finding[];
  offsets?: number[];
  segments?: Segmentation;
  /** A trainer config's comparison: the line its template is chosen on, and the comparison page. */
  trainer?: { line: number; title: string; markdown: string };
}

export const AUDIT_TIME_LIMIT_MS = 10_000;
const WORKER_MEMORY_MB = 1024;

export class TemplateAudits {
  private worker?: Worker;
  private next = 1;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly script: string,
    private readonly timeLimitMs = AUDIT_TIME_LIMIT_MS,
  ) {}

  /** Audits one template text; requests run one after another. */
  audit(
    file: string,
    text: string,
    options: Omit<PrepareOptions, 'text'>,
    trainer?: TemplateAuditRequest['trainer'],
  ): Promise<TemplateAuditView> {
    const run = this.queue.then(() => this.run(file, text, options, trainer));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private run(
    file: string,
    text: string,
    options: Omit<PrepareOptions, 'text'>,
    trainer?: TemplateAuditRequest['trainer'],
  ): Promise<TemplateAuditView> {
    this.worker ??= new Worker(this.script, { resourceLimits: { maxOldGenerationSizeMb: WORKER_MEMORY_MB } });
    const worker = this.worker;
    const id = this.next++;
    const failed = (message: string): TemplateAuditView => ({
      findings: [{ code: 'CT009', severity: 'error', message, file, line: 1, column: 1, endLine: 1, endColumn: 2 }],
    });
    return new Promise<TemplateAuditView>((resolve) => {
      const done = (view: TemplateAuditView, stop: boolean) => {
        clearTimeout(timer);
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
        if (stop) {
          if (this.worker === worker) this.worker = undefined;
          void worker.terminate();
        }
        resolve(view);
      };
      const onMessage = (m: { id: number; view: TemplateAuditView }) => m.id === id && done(m.view, false);
      const onError = (e: Error) =>
        done(
          failed(
            `The template audit stopped: ${e.message}. ${path.basename(file)} may loop or build huge strings; the audit of this text was abandoned.`,
          ),
          true,
        );
      const onExit = () =>
        done(failed('The template audit stopped unexpectedly; the audit of this text was abandoned.'), true);
      const timer = setTimeout(
        () =>
          done(
            failed(
              `The template audit did not finish within ${this.timeLimitMs / 1000} s and was stopped (a template that loops for ever, or renders far too much).`,
            ),
            true,
          ),
        this.timeLimitMs,
      );
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
      // settings objects from VS Code are read-only proxies that structured clone refuses: send plain JSON
      const plain = JSON.parse(JSON.stringify(options)) as TemplateAuditRequest['options'];
      try {
        worker.postMessage({ id, file, text, options: plain, trainer } satisfies TemplateAuditRequest);
      } catch (e) {
        done(failed(`The template audit could not start: ${(e as Error).message}`), true);
      }
    });
  }

  dispose(): void {
    void this.worker?.terminate();
    this.worker = undefined;
  }
}
