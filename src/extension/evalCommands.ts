/**
 * Eval runs and the TReFT export from the editor: the same core as `piggyback eval` / `piggyback treft-export`,
 * with progress and cancel, results in the dashboard's eval matrix and PB002/PB003 as diagnostics on the template.
 * The judge's API key lives in SecretStorage; no request leaves the machine unless an endpoint is configured.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { EvalCompareView, EvalMatrixView } from '../contracts/dashboard';
import { Judge, JudgeConfigError } from '../app/eval/judge';
import { GENERAL_PROBES } from '../app/eval/probes';
import { type EvalPlan, type EvalRequest, planEval } from '../app/eval/request';
import {
  compareRuns,
  loadRun,
  loadRunPair,
  matrixView,
  runName,
  runProbes,
  writeRunReports,
} from '../app/eval/evalReport';
import { runCompleteness, EvalSettingsError, type Manifest, MANIFEST, readResults, readSkipped } from '../app/eval/run';
import type { LoadResult } from '../contracts/modelHost';
import { pairTemplateSource, type PromptTemplate } from '../app/audits';
import { LensSession } from '../app/session';
import type { Associations } from './association';
import { evalConfig, promptTemplateFromSettings, runsFolder } from './config';
import { reportError } from './errors';
import { FILE_LIMITS, insideRoot, readTextChecked } from '../domain/files';
import type { Dashboard } from './dashboard';
import { toDiagnostic } from './diagnostics';
import type { CheckpointPair } from './checkpointPair';
import { pairRef, type ResultStore, samePair, staleAgainst } from './results';

const SECRET_KEY = 'piggyback.judge.apiKey';

export interface RunEvalArgs {
  /** Probe files (JSONL or YAML); default: ask (the built-in general set when not asked). */
  probeFiles?: string[];
  /** A finetuning dataset: its held-out 20% become in-domain probes. */
  dataset?: string;
  /** Datasets of other narrow domains: up to 50 of their rows become other-domain probes. */
  otherDatasets?: string[];
  /** Use the built-in general probes (default true when no probe file is given). */
  general?: boolean;
  /** Output folder; default: a new timestamped folder under piggyback.eval.runsFolder. */
  out?: string;
  /** Continue this run folder with its own probes (what finished stays; the rest is computed). */
  resume?: string;
  /** Don't ask anything (tests, automation). */
  noPrompt?: boolean;
}

export class EvalCommands implements vscode.Disposable {
  readonly diagnostics = vscode.languages.createDiagnosticCollection('piggyback-eval');

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly models: CheckpointPair,
    private readonly dashboard: Dashboard,
    private readonly associations: Associations,
    private readonly log: vscode.LogOutputChannel,
    private readonly results: ResultStore,
  ) {}

  async setJudgeKey(): Promise<void> {
    const key = await vscode.window.showInputBox({
      title: 'Piggyback: judge API key',
      prompt: 'Kept in VS Code\u2019s secret storage; sent only to piggyback.judge.endpoint. Leave empty to remove it.',
      password: true,
      ignoreFocusOut: true,
    });
    if (key === undefined) return;
    if (key) await this.context.secrets.store(SECRET_KEY, key);
    else await this.context.secrets.delete(SECRET_KEY);
    void vscode.window.showInformationMessage(`Piggyback Lens: judge API key ${key ? 'saved' : 'removed'}.`);
  }

  private activeDataset(): string | undefined {
    const doc = vscode.window.activeTextEditor?.document;
    return doc && /\.jsonl$/i.test(doc.fileName) && doc.uri.scheme === 'file' ? doc.fileName : undefined;
  }

  /** Which probes: the built-in general set, held-out rows of the active dataset, probe files (asked, or from args). */
  private async chooseProbes(
    args: RunEvalArgs,
  ): Promise<Pick<EvalRequest, 'probeFiles' | 'general' | 'dataset' | 'otherDatasets'> | undefined> {
    let files = args.probeFiles ?? [];
    let dataset = args.dataset;
    let others = args.otherDatasets ?? [];
    let general = args.general ?? files.length === 0;
    if (!args.noPrompt && !args.probeFiles) {
      const active = this.activeDataset();
      type Item = vscode.QuickPickItem & { id: 'general' | 'dataset' | 'other' | 'file' };
      const items: Item[] = [
        {
          id: 'general',
          label: 'Built-in general probes',
          description: `${GENERAL_PROBES.length} questions unrelated to any finetuning domain`,
          picked: true,
        },
      ];
      if (active)
        items.push({
          id: 'dataset',
          label: `In-domain: held-out 20% of ${path.basename(active)}`,
          description: 'seeded split of the active dataset',
          picked: true,
        });
      items.push({
        id: 'other',
        label: 'Other-domain dataset...',
        description: 'up to 50 rows of another narrow domain (e.g. health advice)',
      });
      items.push({
        id: 'file',
        label: 'Probe file (JSONL or YAML)...',
        description: 'id, question, optional system, aligned/misaligned',
      });
      const picked = await vscode.window.showQuickPick(items, {
        title: 'Piggyback: probes for the eval run',
        canPickMany: true,
      });
      if (!picked || picked.length === 0) return undefined;
      general = picked.some((p) => p.id === 'general');
      if (picked.some((p) => p.id === 'dataset')) dataset = active;
      if (picked.some((p) => p.id === 'other')) {
        const uris = await vscode.window.showOpenDialog({
          canSelectMany: true,
          filters: { 'Chat datasets': ['jsonl'] },
          title: 'Datasets of other domains',
        });
        if (!uris) return undefined;
        others = uris.map((u) => u.fsPath);
      }
      if (picked.some((p) => p.id === 'file')) {
        const uris = await vscode.window.showOpenDialog({
          canSelectMany: true,
          filters: { Probes: ['jsonl', 'yaml', 'yml'] },
          title: 'Probe files',
        });
        if (!uris) return undefined;
        files = uris.map((u) => u.fsPath);
      }
    }
    return { probeFiles: files, general, dataset, otherDatasets: others };
  }

  async runEval(
    args: RunEvalArgs = {},
  ): Promise<{ folder: string; probes: number; results: number; view: EvalMatrixView } | undefined> {
    const s = evalConfig();
    const host = await this.models.ready(s.extra);
    if (!host) return undefined;
    let judge: Judge | undefined;
    if (s.judge) {
      try {
        judge = new Judge({ ...s.judge, apiKey: (await this.context.secrets.get(SECRET_KEY)) || undefined });
      } catch (e) {
        void vscode.window.showErrorMessage(
          `Piggyback Lens: ${(e as Error).message}. Fix piggyback.judge.endpoint, or clear it to run without a judge.`,
        );
        return undefined;
      }
    }
    const runs = runsFolder();
    let resume = args.resume;
    if (!resume && !args.out && !args.noPrompt && runs) {
      // re-running the command continues an interrupted run of the same checkpoints
      const open = unfinishedRun(runs, this.models.loadResult!);
      if (open) {
        const answer = await vscode.window.showInformationMessage(
          `Piggyback Lens: the eval run ${path.basename(open.folder)} stopped after ${open.done} of ${open.total} probes. Continue it?`,
          'Continue Run',
          'New Run',
        );
        if (answer === undefined) return undefined;
        if (answer === 'Continue Run') resume = open.folder;
      }
    }
    let plan: EvalPlan;
    try {
      const probes = resume ? { probesOf: runProbes(resume, []) } : await this.chooseProbes(args);
      if (!probes) return undefined;
      plan = planEval({
        ...probes,
        extra: s.extra,
        maxNewTokens: s.maxNewTokens,
        temperature: s.temperature,
        samples: s.samples,
        seed: s.seed,
        perturbationTrials: s.perturbationTrials,
        layerSweep: s.layerSweep,
        judge,
        judgeConcurrency: s.judgeConcurrency,
      });
    } catch (e) {
      this.reportProbeError(e);
      return undefined;
    }
    if (!args.out && !resume && !runs) {
      void vscode.window.showInformationMessage(
        'Piggyback Lens: open a folder to keep eval runs in (piggyback.eval.runsFolder).',
      );
      return undefined;
    }
    const out = resume ?? args.out ?? path.join(runs!, new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19));
    const finetuned = this.models.finetuned!;
    let p: PromptTemplate;
    try {
      const source = pairTemplateSource(finetuned, this.models.base);
      p = promptTemplateFromSettings(source, source);
    } catch (e) {
      reportError(this.log, e);
      return undefined;
    }
    this.dashboard.update({
      busy: `eval run: ${plan.probes.length} probes (${resume ? `continuing ${path.basename(resume)}` : plan.description})`,
      error: undefined,
    });
    this.dashboard.show();
    const loaded = this.models.loadResult!;
    try {
      await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: 'Piggyback: eval run', cancellable: true },
        async (progress, token) => {
          const abort = new AbortController();
          token.onCancellationRequested(() => abort.abort(new Error('cancelled')));
          let last = 0;
          await new LensSession(host, loaded, p).eval({
            ...plan.options,
            probes: plan.probes,
            conditions: plan.conditions(loaded.finetuned.layers),
            out,
            signal: abort.signal,
            onProbe: (i, n) => {
              // the same count the matrix shows (probes finished), and the probe being worked on
              progress.report({
                message: `${i} of ${n} probes finished, working on probe ${i + 1} of ${n}`,
                increment: (100 * (i - last)) / n,
              });
              last = i;
              // the matrix fills in as probes finish
              if (i > 0 && i % 5 === 0) this.show(out, false);
            },
          });
        },
      );
    } catch (e) {
      const cancelled = (e as Error).message === 'cancelled' || (e as { cancelled?: boolean }).cancelled;
      if (!cancelled) {
        const hint =
          e instanceof JudgeConfigError
            ? ' Finished probes are kept: fix the judge settings and run again with the same folder to resume.'
            : '';
        this.log.error(`eval run in ${out} failed: ${(e as Error).message}`);
        void vscode.window.showErrorMessage(
          `Piggyback Lens: eval run stopped: ${(e as Error).message}.${e instanceof EvalSettingsError ? ' Check the piggyback.eval settings.' : hint}`,
        );
      }
    } finally {
      this.dashboard.update({ busy: undefined });
    }
    if (!fs.existsSync(path.join(out, 'manifest.json'))) return undefined;
    const view = this.show(out, true);
    this.log.info(`eval run written to ${out}: ${view.done} of ${view.total} probes`);
    return { folder: out, probes: plan.probes.length, results: loadRun(out).results.length, view };
  }

  private reportProbeError(e: unknown): void {
    const err = e as Error & { file?: string; line?: number; column?: number };
    void vscode.window
      .showErrorMessage(`Piggyback Lens: ${err.message}`, ...(err.file ? ['Open File'] : []))
      .then((a) => {
        if (a && err.file)
          void vscode.window.showTextDocument(vscode.Uri.file(err.file), {
            selection: new vscode.Range(
              (err.line ?? 1) - 1,
              (err.column ?? 1) - 1,
              (err.line ?? 1) - 1,
              (err.column ?? 1) - 1,
            ),
          });
      });
  }

  /** Writes the run's reports and shows its matrix; PB002/PB003 go on the template as diagnostics. */
  show(folder: string, final: boolean): EvalMatrixView {
    const root = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath ?? folder;
    const run = final ? writeRunReports(folder, root) : loadRun(folder);
    const view = matrixView(folder, run, runProbes(folder, run.results));
    // a run (new, or opened) is kept as the latest of the pair it measured, unless it measured other files of
    // those folders than the ones kept (an old run opened again must not push out newer results); it is shown
    // as the current pair's only when it is
    const notices = this.notices(view);
    const stored = view.pair && this.results.get(view.pair.base, view.pair.finetuned);
    if (view.pair && (final || !stored || !staleAgainst(stored.pair, view.pair)))
      void this.results.put(view.pair, { eval: { folder, verdict: view.verdict } });
    this.dashboard.update({ eval: view, notices });
    if (final) {
      const byFile = new Map<string, vscode.Diagnostic[]>();
      // findings about the built-in organisms stay in the dashboard and the report: their files are the
      // extension's own, which the user cannot edit
      const own = (file: string) => insideRoot(this.context.extensionUri.fsPath, file);
      for (const f of run.findings)
        if (f.file && !own(f.file)) byFile.set(f.file, [...(byFile.get(f.file) ?? []), toDiagnostic(f)]);
      this.diagnostics.clear();
      for (const [file, list] of byFile) this.diagnostics.set(vscode.Uri.file(file), list);
    }
    return view;
  }

  /** The matrix of a run folder (no reports written), or undefined when the folder is gone or unreadable. */
  view(folder: string): EvalMatrixView | undefined {
    try {
      const run = loadRun(folder);
      return matrixView(folder, run, runProbes(folder, run.results));
    } catch {
      return undefined;
    }
  }

  /** What the dashboard must say about a run that is not of the current pair, or of earlier files of it. */
  notices(view: EvalMatrixView): string[] {
    const base = this.models.base;
    const finetuned = this.models.finetuned;
    const current = base && finetuned ? pairRef(base, finetuned, this.models.loadResult) : undefined;
    if (!view.pair) return [];
    if (!samePair(view.pair, current))
      return [
        `The eval run shown (${path.basename(view.folder)}) is of ${view.pair.label}, not of the current pair${current ? ` (${current.label})` : ''}. Its answers are not the current pair's, and the status bar does not show them.`,
      ];
    if (staleAgainst(view.pair, current))
      return [
        `The eval run shown (${path.basename(view.folder)}) measured earlier files of ${view.pair.label}: the checkpoints changed since. Run the eval again.`,
      ];
    return [];
  }

  async openRun(folder?: string): Promise<EvalMatrixView | undefined> {
    const dir = folder ?? (await pickRunFolder('Open eval run'));
    if (!dir) return undefined;
    try {
      const view = this.show(dir, false);
      this.dashboard.show();
      return view;
    } catch (e) {
      reportError(this.log, e);
      return undefined;
    }
  }

  async compareRuns(a?: string, b?: string): Promise<EvalCompareView | undefined> {
    const first = a ?? (await pickRun('First eval run (e.g. the SFT checkpoint)'));
    const second = first && (b ?? (await pickRun('Second eval run (e.g. the TReFT checkpoint)', first)));
    if (!first || !second) return undefined;
    try {
      const [x, y] = loadRunPair(first, second);
      const { notes, differences, rows } = compareRuns(x, y);
      const compare: EvalCompareView = { names: [x.name, y.name], notes, differences, rows };
      this.dashboard.update({ compare });
      this.dashboard.show();
      return compare;
    } catch (e) {
      reportError(this.log, e);
      return undefined;
    }
  }

  /** TReFT export for a dataset: positions and recipe always; the base model's prefix K/V when a base is chosen. */
  async exportTreft(uri?: vscode.Uri, outFolder?: string): Promise<string[] | undefined> {
    const dataset =
      uri?.fsPath ??
      this.activeDataset() ??
      (
        await vscode.window.showOpenDialog({
          filters: { 'Finetuning data': ['jsonl'] },
          title: 'Dataset to export TReFT data for',
        })
      )?.[0]?.fsPath;
    if (!dataset) return undefined;
    const template = this.associations.resolve(vscode.Uri.file(dataset)).template ?? this.models.base;
    if (!template) {
      void vscode.window.showErrorMessage(
        'Piggyback Lens: choose a template for this dataset first (Piggyback: Choose Chat Template for Dataset).',
      );
      return undefined;
    }
    // the export reads the base model's K/V only: a chosen base is enough
    const host = await this.models.ready(undefined, true);
    if (!host) return undefined;
    const out =
      outFolder ??
      (
        await vscode.window.showOpenDialog({
          canSelectFolders: true,
          canSelectFiles: false,
          defaultUri: vscode.Uri.file(path.dirname(dataset)),
          openLabel: 'Export here',
          title: 'Folder for the TReFT export',
        })
      )?.[0]?.fsPath;
    if (!out) return undefined;
    let p: PromptTemplate;
    try {
      p = promptTemplateFromSettings(template, undefined, vscode.Uri.file(dataset));
    } catch (e) {
      reportError(this.log, e);
      return undefined;
    }
    try {
      const r = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: 'Piggyback: exporting TReFT data', cancellable: true },
        (_progress, token) => {
          const abort = new AbortController();
          token.onCancellationRequested(() => abort.abort());
          return new LensSession(host, this.models.loadResult!, p).treftExport({ dataset, out, signal: abort.signal });
        },
      );
      const recipe = r.files.find((f) => f.endsWith('RECIPE.md'))!;
      const note = r.skipped ? ` ${r.skipped} rows skipped (see positions.jsonl).` : '';
      void vscode.window
        .showInformationMessage(
          `Piggyback Lens: TReFT data for ${r.positions.rows.length - r.skipped} rows written to ${out}.${note}`,
          'Open Recipe',
        )
        .then((a) => a && vscode.window.showTextDocument(vscode.Uri.file(recipe)));
      return r.files;
    } catch (e) {
      this.models.report(e);
      return undefined;
    }
  }

  dispose(): void {
    this.diagnostics.dispose();
  }
}

/** The run folders (those holding a manifest) directly under `runs`. */
function runFolders(runs: string): string[] {
  if (!fs.existsSync(runs)) return [];
  return fs
    .readdirSync(runs, { withFileTypes: true })
    .filter((d) => d.isDirectory() && fs.existsSync(path.join(runs, d.name, MANIFEST)))
    .map((d) => path.join(runs, d.name));
}

function readManifest(folder: string): Manifest {
  return JSON.parse(readTextChecked(path.join(folder, MANIFEST), FILE_LIMITS.config)) as Manifest;
}

/** The newest run folder under `runs` of the loaded checkpoints with probes left to do. */
function unfinishedRun(runs: string, loaded: LoadResult): { folder: string; done: number; total: number } | undefined {
  const folders = runFolders(runs).sort().reverse();
  for (const folder of folders.slice(0, 20)) {
    try {
      const m = readManifest(folder);
      if (m.checkpoints.base.hash !== loaded.base.hash || m.checkpoints.finetuned.hash !== loaded.finetuned.hash)
        continue;
      const results = readResults(folder);
      const done = new Set(results.map((r) => r.probe)).size;
      const skipped = readSkipped(folder);
      const c = runCompleteness(m, results, skipped);
      if (c.done < c.expected) return { folder, done, total: m.probes.count };
    } catch {
      // not a readable run: ignore it
    }
  }
  return undefined;
}

/**
 * Picks a run from the runs folder by what it measured: its checkpoint pair, when it started, how many probes and
 * whether it finished (newest first), or Browse... for a run elsewhere.
 */
async function pickRun(title: string, exclude?: string): Promise<string | undefined> {
  const runs = runsFolder();
  type Item = vscode.QuickPickItem & { folder?: string; at?: number };
  const items: Item[] = [];
  for (const folder of runs ? runFolders(runs) : []) {
    if (folder === exclude) continue;
    try {
      const m = readManifest(folder);
      const done = new Set(readResults(folder, [], m.runId).map((r) => r.probe)).size;
      items.push({
        label: runName(folder, m),
        description: `${m.probes.count} probes${done < m.probes.count ? `, ${done} finished` : ''}`,
        detail: vscode.workspace.asRelativePath(folder),
        folder,
        at: fs.statSync(path.join(folder, MANIFEST)).mtimeMs,
      });
    } catch {
      // not a readable run: not offered
    }
  }
  items.sort((x, y) => (y.at ?? 0) - (x.at ?? 0));
  items.push({ label: '$(folder-opened) Browse...' });
  const pick = await vscode.window.showQuickPick(items, { title, matchOnDetail: true });
  if (!pick) return undefined;
  return pick.folder ?? pickRunFolder(title);
}

async function pickRunFolder(title: string): Promise<string | undefined> {
  const folder = runsFolder();
  const runs = folder ? vscode.Uri.file(folder) : undefined;
  const uri = await vscode.window.showOpenDialog({
    canSelectFolders: true,
    canSelectFiles: false,
    defaultUri: runs && fs.existsSync(runs.fsPath) ? runs : vscode.workspace.workspaceFolders?.[0]?.uri,
    openLabel: 'Open run',
    title,
  });
  return uri?.[0]?.fsPath;
}
