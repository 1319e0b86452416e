/**
 * The commands that need the model host: measure drift, patch and compare. They exist from activation and explain
 * what is missing (no checkpoint, untrusted workspace, incompatible pair) instead of failing silently.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { DriftView, PatchView } from '../contracts/dashboard';
import { insideRoot } from '../domain/files';
import { DRIFT_THRESHOLDS } from '../domain/findings';
import { pairTemplateSource } from '../app/audits';
import type { PatchSpan, PromptSegment } from '../contracts/modelHost';
import type { ModelHost } from '../app/hostClient';
import { DEFAULT_QUERY, LensSession } from '../app/session';
import { promptTemplateFromSettings } from './config';
import type { Dashboard } from './dashboard';
import { toDiagnostic } from './diagnostics';
import type { CheckpointPair } from './checkpointPair';
import { pairRef, type ResultStore } from './results';

export interface ModelCommandArgs {
  /** Template source to render with; default: the finetuned checkpoint's folder. */
  template?: string;
  query?: string;
  span?: PatchSpan;
  /** Don't ask for a query; use the default. */
  noPrompt?: boolean;
}

export class ModelCommands {
  readonly driftDiagnostics = vscode.languages.createDiagnosticCollection('piggyback-drift');

  constructor(
    private readonly models: CheckpointPair,
    private readonly dashboard: Dashboard,
    private readonly extensionUri: vscode.Uri,
    private readonly results: ResultStore,
  ) {}

  /** The pair the loaded host measures (folders and content hashes): what every result is kept under. */
  private pair() {
    return pairRef(this.models.base!, this.models.finetuned!, this.models.loadResult);
  }

  private async query(args: ModelCommandArgs): Promise<string | undefined> {
    if (args.query !== undefined) return args.query;
    if (args.noPrompt) return DEFAULT_QUERY;
    return vscode.window.showInputBox({
      title: 'Piggyback: query to measure',
      value: DEFAULT_QUERY,
      prompt: 'A user message; the template adds the prefix and postfix.',
    });
  }

  /** The session over the loaded pair, with the template chosen for this command (default: the pair's). */
  private session(host: ModelHost, args: ModelCommandArgs): LensSession {
    const source = pairTemplateSource(this.models.finetuned!, this.models.base);
    return new LensSession(host, this.models.loadResult!, promptTemplateFromSettings(args.template ?? source, source));
  }

  private async run<T>(
    title: string,
    work: (signal: AbortSignal, progress: (m: string) => void) => Promise<T>,
  ): Promise<T | undefined> {
    this.dashboard.update({ busy: title, error: undefined });
    try {
      return await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: `Piggyback: ${title}`, cancellable: true },
        async (progress, token) => {
          const abort = new AbortController();
          token.onCancellationRequested(() => abort.abort());
          return work(abort.signal, (message) => progress.report({ message }));
        },
      );
    } catch (e) {
      this.models.report(e);
      this.dashboard.update({ error: (e as Error).message });
      return undefined;
    } finally {
      this.dashboard.update({ busy: undefined });
    }
  }

  async measureDrift(args: ModelCommandArgs = {}): Promise<DriftView | undefined> {
    const host = await this.models.ready();
    if (!host) return undefined;
    const query = await this.query(args);
    if (query === undefined) return undefined;
    return this.run('measuring K/V drift', async (signal, progress) => {
      const session = this.session(host, args);
      const d = await session.drift(query, {
        signal,
        onProgress: (p) => progress(p.message ?? `${p.done}/${p.total}`),
      });
      const seg = (name: PromptSegment) => ({
        name,
        tokens: d.segments[name].tokens,
        key: d.segments[name].key,
        value: d.segments[name].value,
        mean: d.segments[name].mean,
      });
      const view: DriftView = {
        pair: this.pair(),
        query,
        layers: d.layers,
        segments: [seg('prefix'), seg('query'), seg('postfix')],
        treft: d.treft,
      };
      await this.results.put(view.pair!, { drift: view });
      this.dashboard.update({ drift: view, checkpoints: this.checkpoints() });
      this.dashboard.show();
      this.driftDiagnostic(session.prompt.source?.file, d.segments.prefix.key, d.segments.prefix.value, d.treft);
      return view;
    });
  }

  async patchCompare(args: ModelCommandArgs = {}): Promise<PatchView | undefined> {
    const host = await this.models.ready();
    if (!host) return undefined;
    const query = await this.query(args);
    if (query === undefined) return undefined;
    const span = args.span ?? 'prefix';
    return this.run(`patching the ${span} and comparing`, async (signal, progress) => {
      const r = await this.session(host, args).patch(query, span, undefined, {
        signal,
        onProgress: (p) => progress(p.message ?? `${p.done}/${p.total}`),
      });
      const view: PatchView = {
        pair: this.pair(),
        query,
        span,
        patchedPositions: r.patchedPositions.length,
        kl: r.kl,
        generations: r.generations,
      };
      await this.results.put(view.pair!, { patch: view });
      this.dashboard.update({ patch: view, checkpoints: this.checkpoints() });
      this.dashboard.show();
      return view;
    });
  }

  checkpoints(): { base?: string; finetuned?: string } {
    const short = (p?: string) => (p ? path.basename(p) : undefined);
    return { base: short(this.models.base), finetuned: short(this.models.finetuned) };
  }

  /**
   * PB001 on the template: the measured prefix drift, described, not graded (info level, shown from the
   * DRIFT_THRESHOLDS info level on). Drift does not predict the piggyback share (a LoRA with drift 0.41 measured a
   * share of 13%, a full finetune with 0.10 one of 80%): the grade comes from patching (PB002).
   */
  private driftDiagnostic(file: string | undefined, key: number[][], value: number[][], treft: number): void {
    // the built-in organisms' templates are the extension's own files: the dashboard shows their drift instead
    if (!file || insideRoot(this.extensionUri.fsPath, file)) return;
    const perLayer = key.map((row, l) => mean(row) + mean(value[l]));
    const top = perLayer.indexOf(Math.max(...perLayer));
    const severity = treft >= DRIFT_THRESHOLDS.info ? 'info' : undefined;
    const uri = vscode.Uri.file(file);
    if (!severity) {
      this.driftDiagnostics.delete(uri);
      return;
    }
    this.driftDiagnostics.set(uri, [
      toDiagnostic({
        code: 'PB001',
        severity,
        message: `prefix drift between base and finetuned: mean ${treft.toPrecision(3)} (TReFT value), top layer ${top}. The finetune changed the K/V of tokens every query shares; that is what TReFT penalises, not a verdict. Whether the template carries the finetune onto other questions is measured by Patch Prefix and Compare and Run Eval (PB002).`,
        file,
        line: 1,
        column: 1,
        endLine: 1,
        endColumn: 2,
      }),
    ]);
  }

  dispose(): void {
    this.driftDiagnostics.dispose();
  }
}

function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}
