/**
 * VS Code glue only: wires the core audit, the model host client and the dashboard to diagnostics, hovers, code
 * lenses, the status bar and commands. Activation is cheap: nothing is rendered or tokenized until a template or
 * dataset is opened, and the model host starts on the first command that needs a model.
 */
import * as vscode from 'vscode';
import type { DashboardSnapshot } from '../contracts/dashboard';
import { CODES } from '../domain/findings';
import * as path from 'node:path';
import { diagnosticDocsUri, registerDiagnosticDocs, showPage } from './diagnosticDocs';
import { Associations } from './association';
import { PiggybackCodeLenses, TrainerConfigLenses } from './codeLens';
import { Dashboard, DASHBOARD_VIEW_TYPE } from './dashboard';
import { EvalCommands, type RunEvalArgs } from './evalCommands';
import { type ModelCommandArgs, ModelCommands } from './modelCommands';
import { CheckpointPair } from './checkpointPair';
import { DiagnosticsManager, isDataset, isTemplate } from './diagnostics';
import { reported } from './errors';
import { rowTokensMarkdown, SegmentHover } from './hover';
import { GenerationMarkerFixes, PiggybackQuickFixes } from './quickFixes';
import { openReportPanel } from './reportPanel';
import { pairRef, ResultStore, samePair, staleAgainst } from './results';
import { PiggybackTasks, TASK_TYPE } from './tasks';
import { WorkspaceAudit } from './workspaceAudit';
import { datasetRowAt } from './rows';

/**
 * What the extension exports (vscode.extensions.getExtension(...).exports): read-only views of what the user sees,
 * for other extensions and for the tests that check the dashboard and the status bar say the same thing.
 */
export interface PiggybackApi {
  dashboardSnapshot(): DashboardSnapshot;
  statusBar(): { text: string; tooltip: string };
}

export function activate(context: vscode.ExtensionContext): PiggybackApi {
  const log = vscode.window.createOutputChannel('Piggyback Lens', { log: true });
  const associations = new Associations();
  const diagnostics = new DiagnosticsManager(context.extensionUri, associations, log);
  const models = new CheckpointPair(context, log);
  const dashboard = new Dashboard(context.extensionUri);
  const results = new ResultStore(context.workspaceState);
  const modelCommands = new ModelCommands(models, dashboard, context.extensionUri, results);
  const evals = new EvalCommands(context, models, dashboard, associations, log, results);
  const lenses = new PiggybackCodeLenses();
  const trainerLenses = new TrainerConfigLenses(diagnostics.trainerDocs);
  const workspaceAudit = new WorkspaceAudit(context, log);
  const pairItem = vscode.window.createStatusBarItem('piggyback.pair', vscode.StatusBarAlignment.Left, 49);
  pairItem.name = 'Piggyback checkpoints';
  pairItem.command = 'piggyback.openDashboard';
  // the status item only where it means something: a checkpoint is chosen, or the workspace holds a model folder
  let hasModels = false;
  const current = () =>
    models.base && models.finetuned ? pairRef(models.base, models.finetuned, models.loadResult) : undefined;
  /**
   * The dashboard shows the current pair's own results (from the store), or none: switching pairs never relabels
   * a result. `withEval` reads the latest eval run's matrix from its folder (not at activation: the status bar
   * needs only its answers, which the store keeps).
   */
  const showCurrentPair = (withEval: boolean) => {
    const cur = current();
    const stored = results.get(models.base, models.finetuned);
    const notices: string[] = [];
    if (stored && staleAgainst(stored.pair, cur))
      notices.push(
        `The results below were measured on earlier files of ${cur!.label}: the checkpoints changed since. Measure again.`,
      );
    const evalView = withEval && stored?.eval ? evals.view(stored.eval.folder) : undefined;
    dashboard.update({
      checkpoints: modelCommands.checkpoints(),
      drift: stored?.drift,
      patch: stored?.patch,
      eval: evalView,
      notices: [...notices, ...(evalView ? evals.notices(evalView) : [])],
    });
  };
  showCurrentPair(false);
  const updatePair = () => {
    const c = modelCommands.checkpoints();
    // the verdict is the eval's two answers (PB002), the current pair's only; drift is a measurement, shown as a
    // number, never as a verdict
    const cur = current();
    const stored = results.get(models.base, models.finetuned);
    const shownEval = dashboard.current.eval;
    const verdict =
      shownEval?.pair && samePair(shownEval.pair, cur)
        ? staleAgainst(shownEval.pair, cur)
          ? undefined
          : shownEval.verdict
        : stored?.eval && !staleAgainst(stored.pair, cur)
          ? stored.eval.verdict
          : undefined;
    const drift = samePair(dashboard.current.drift?.pair, cur) ? dashboard.current.drift?.treft : undefined;
    const carrier =
      verdict?.carrier.level === 'not graded yet' ? 'template share not graded yet' : verdict?.carrier.level;
    const shown = verdict ? ` · shift ${verdict.shift.level} · ${carrier}` : '';
    pairItem.text =
      c.base || c.finetuned ? `$(beaker) ${c.base ?? '?'} → ${c.finetuned ?? '?'}${shown}` : '$(beaker) Piggyback';
    pairItem.tooltip = `Base: ${models.base ?? 'not chosen'}\nFinetuned: ${models.finetuned ?? 'not chosen'}\nBehaviour shift on general questions (latest eval of this pair): ${verdict?.shift.short ?? 'no eval run yet'}\nWhere it lives (template share, PB002): ${verdict?.carrier.short ?? 'no eval run yet'}\nPrefix drift (TReFT value, a measurement, not a verdict): ${drift === undefined ? 'not measured' : drift.toPrecision(3)}\nModel host: ${models.hostRunning ? 'running' : 'not running'}\nClick to open the dashboard.`;
    void vscode.commands.executeCommand('setContext', 'piggyback.pairChosen', !!(models.base && models.finetuned));
    if (lenses.pairChosen !== !!(models.base && models.finetuned)) {
      lenses.pairChosen = !!(models.base && models.finetuned);
      lenses.refresh();
    }
    if (hasModels || models.base || models.finetuned) pairItem.show();
    else pairItem.hide();
  };
  updatePair();
  void vscode.workspace
    .findFiles(
      '**/{tokenizer_config.json,chat_template.jinja,chat_template.json,adapter_config.json}',
      '**/node_modules/**',
      1,
    )
    .then((found) => {
      hasModels = found.length > 0;
      updatePair();
    });
  context.subscriptions.push(
    log,
    associations,
    diagnostics,
    models,
    dashboard,
    modelCommands,
    evals,
    pairItem,
    workspaceAudit,
  );

  const hover = new SegmentHover(diagnostics);
  const commands = createCommands({
    context,
    log,
    associations,
    diagnostics,
    models,
    dashboard,
    modelCommands,
    evals,
    hover,
    updatePair,
    showCurrentPair,
    workspaceAudit,
  });
  for (const [id, run] of Object.entries(commands))
    context.subscriptions.push(vscode.commands.registerCommand(id, run));
  // a diagnostic's code link (piggyback-docs:/CT001.md) opens its documentation, rendered
  context.subscriptions.push(registerDiagnosticDocs(context.extensionUri));

  const selector: vscode.DocumentSelector = [
    { pattern: '**/*.jsonl' },
    // JSON-array datasets (Alpaca, LLaMA-Factory, ShareGPT exports); other .json files get nothing (isDataset)
    { pattern: '**/*.json' },
    { pattern: '**/tokenizer_config.json' },
    { pattern: '**/chat_template.json' },
    { pattern: '**/*.{jinja,jinja2,j2}' },
  ];
  context.subscriptions.push(
    vscode.languages.registerHoverProvider(selector, hover),
    vscode.workspace.onDidOpenTextDocument((doc) => {
      // an open file shows the live audit of its text; the workspace audit's entry comes back when it closes
      if (isDataset(doc) || isTemplate(doc)) workspaceAudit.drop(doc.uri);
      diagnostics.schedule(doc, true);
    }),
    vscode.workspace.onDidChangeTextDocument((e) => {
      if (e.contentChanges.length) diagnostics.schedule(e.document);
    }),
    vscode.workspace.onDidSaveTextDocument((doc) => {
      if (isTemplate(doc)) diagnostics.templatesChanged();
    }),
    vscode.workspace.onDidCloseTextDocument((doc) => {
      diagnostics.forget(doc);
      workspaceAudit.reshow(doc.uri);
    }),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('piggyback')) {
        diagnostics.templatesChanged();
        for (const doc of vscode.workspace.textDocuments) if (isTemplate(doc)) diagnostics.schedule(doc, true);
        associations.update(vscode.window.activeTextEditor);
      }
    }),
    vscode.window.onDidChangeActiveTextEditor((editor) => associations.update(editor)),
    associations.onDidChange(() => diagnostics.templatesChanged()),
    // templates, tokenizers and .piggyback.json edited outside the editor (a checkout, a training script)
    watch(
      '**/{tokenizer_config.json,tokenizer.json,chat_template.json,chat_template.jinja,*.jinja,.piggyback.json}',
      () => {
        diagnostics.templatesChanged();
        associations.update(vscode.window.activeTextEditor);
      },
    ),
    // training configs and LLaMA-Factory's dataset_info.json decide which datasets render with a trainer's template
    watch('**/{*.yml,*.yaml,dataset_info.json}', () => {
      associations.forget();
      diagnostics.templatesChanged();
      associations.update(vscode.window.activeTextEditor);
    }),
    vscode.languages.registerCodeLensProvider(selector, lenses),
    vscode.languages.registerCodeLensProvider([{ pattern: '**/*.{yml,yaml,json}' }], trainerLenses),
    diagnostics.onTrainerAudited(() => trainerLenses.refresh()),
    vscode.languages.registerCodeActionsProvider({ pattern: '**/*.jsonl' }, new PiggybackQuickFixes(), {
      providedCodeActionKinds: PiggybackQuickFixes.kinds,
    }),
    vscode.languages.registerCodeActionsProvider(
      [
        { pattern: '**/tokenizer_config.json' },
        { pattern: '**/chat_template.json' },
        { pattern: '**/*.{jinja,jinja2,j2}' },
      ],
      new GenerationMarkerFixes(),
      { providedCodeActionKinds: GenerationMarkerFixes.kinds },
    ),
    vscode.tasks.registerTaskProvider(TASK_TYPE, new PiggybackTasks(context.asAbsolutePath('dist/cli.js'))),
    vscode.window.registerWebviewPanelSerializer(DASHBOARD_VIEW_TYPE, {
      deserializeWebviewPanel: async (panel) => {
        showCurrentPair(true);
        dashboard.revive(panel);
      },
    }),
    // the dashboard's buttons run the same commands as the palette (so the status bar follows them too)
    dashboard.onAction((a) => {
      if (a.type === 'runDrift')
        void commands['piggyback.measureDrift']({
          noPrompt: !!dashboard.current.drift,
          query: dashboard.current.drift?.query,
        });
      else if (a.type === 'runPatch')
        void commands['piggyback.patchCompare']({
          span: a.span,
          query: dashboard.current.patch?.query ?? dashboard.current.drift?.query,
        });
      else if (a.type === 'runEval') void commands['piggyback.runEval']();
      else if (a.type === 'openReport' && dashboard.current.eval?.folder === a.folder)
        void commands['piggyback.openEvalReport'](a.folder);
    }),
    models.onDidChange(() => {
      // a pick (from the palette, the pickers or a command) or a load: the dashboard shows that pair's results
      showCurrentPair(dashboard.visible);
      updatePair();
    }),
    dashboard.onDidChange(updatePair),
    vscode.workspace.onDidChangeConfiguration((e) => e.affectsConfiguration('piggyback.codeLens') && lenses.refresh()),
    // the dataset-row lens follows the cursor (piggyback.codeLens.datasetRows: cursor)
    vscode.window.onDidChangeTextEditorSelection((e) => {
      if (isDataset(e.textEditor.document)) lenses.refresh();
    }),
  );

  for (const doc of vscode.workspace.textDocuments) diagnostics.schedule(doc, true);
  associations.update(vscode.window.activeTextEditor);
  // the last Audit Workspace's findings for files unchanged since (after activation: it stats those files)
  setImmediate(() => workspaceAudit.restore());
  return {
    dashboardSnapshot: () => structuredClone(dashboard.current),
    statusBar: () => ({ text: pairItem.text, tooltip: String(pairItem.tooltip ?? '') }),
  };
}

interface Parts {
  context: vscode.ExtensionContext;
  log: vscode.LogOutputChannel;
  associations: Associations;
  diagnostics: DiagnosticsManager;
  models: CheckpointPair;
  dashboard: Dashboard;
  modelCommands: ModelCommands;
  evals: EvalCommands;
  hover: SegmentHover;
  updatePair: () => void;
  showCurrentPair: (withEval: boolean) => void;
  workspaceAudit: WorkspaceAudit;
}

/**
 * Every command of package.json's contributes.commands, in one table (as rust-analyzer's createCommands): each
 * reports its own failure through reportError and resolves to its result (tests call them and read it).
 */
/** A walkthrough step's completion event: a context key set when the step's work really succeeded. */
function done(key: string): void {
  void vscode.commands.executeCommand('setContext', key, true);
}

function createCommands(p: Parts) {
  const { log, associations, models, dashboard, modelCommands, evals, hover, updatePair } = p;
  const { showCurrentPair, workspaceAudit, diagnostics } = p;
  const table = {
    'piggyback.chooseTemplate': (uri?: vscode.Uri) => associations.choose(uri),
    'piggyback.auditWorkspace': () => workspaceAudit.run(),
    'piggyback.selectBase': (folder?: string) =>
      folder ? models.setCheckpoint('base', folder) : models.choose('base'),
    'piggyback.selectFinetuned': (folder?: string) =>
      folder ? models.setCheckpoint('finetuned', folder) : models.choose('finetuned'),
    'piggyback.measureDrift': async (args?: ModelCommandArgs) => {
      const view = await modelCommands.measureDrift(args);
      updatePair();
      if (view) done('piggyback.driftMeasured');
      return view;
    },
    'piggyback.patchCompare': async (args?: ModelCommandArgs) => {
      const view = await modelCommands.patchCompare(args);
      if (view) done('piggyback.patchCompared');
      return view;
    },
    'piggyback.openDashboard': () => {
      if (!dashboard.visible) showCurrentPair(true);
      dashboard.show();
    },
    'piggyback.restartHost': () => models.restart(),
    'piggyback.runEval': async (args?: RunEvalArgs) => {
      const r = await evals.runEval(args);
      if (r) done('piggyback.evalRun');
      return r;
    },
    'piggyback.openEvalRun': (folder?: string) => evals.openRun(folder),
    'piggyback.compareEvalRuns': (a?: string, b?: string) => evals.compareRuns(a, b),
    'piggyback.openEvalReport': async (folder?: string) => {
      const dir = folder ?? dashboard.current.eval?.folder;
      if (!dir) throw new Error('no eval run is open: run one, or open a run folder first');
      return openReportPanel(dir).title;
    },
    'piggyback.exportTreft': (uri?: vscode.Uri, out?: string) => evals.exportTreft(uri, out),
    'piggyback.setJudgeApiKey': () => evals.setJudgeKey(),
    // what the Problems view's code links open (through the URI handler); from the palette, pick a code
    'piggyback.explainDiagnostic': async (code?: string) => {
      const chosen =
        code ??
        (
          await vscode.window.showQuickPick(
            Object.entries(CODES).map(([c, d]) => ({ label: c, description: d.title })),
            { title: 'Piggyback: explain a diagnostic code', matchOnDescription: true },
          )
        )?.label;
      if (!chosen) return undefined;
      if (!CODES[chosen]) throw new Error(`no diagnostic code ${JSON.stringify(chosen)}`);
      await vscode.commands.executeCommand('vscode.open', diagnosticDocsUri(chosen));
      return diagnosticDocsUri(chosen).toString();
    },
    // a training config's lens: the template its trainer renders beside the tokenizer's, token by token
    'piggyback.showTrainerComparison': async (uri?: string) => {
      const file = uri ? vscode.Uri.parse(uri).fsPath : vscode.window.activeTextEditor?.document.fileName;
      const view = file ? diagnostics.trainerDocs.get(file) : undefined;
      if (!view) throw new Error('open a training config (axolotl, LLaMA-Factory or TRL YAML) to compare its template');
      await showPage(view.title, view.markdown);
      return view.markdown;
    },
    // the generation-marker quick fix's proof (or why there is no fix), as a read-only rendered page
    'piggyback.showGenerationProof': async (title?: string, markdown?: string) => {
      if (!title || !markdown) throw new Error('use the {% generation %} quick fix on a chat template (CT005)');
      await showPage(title, markdown);
      return markdown;
    },
    // the row hover's "show every token": the whole segmentation of that row, in a Markdown document beside
    'piggyback.showRowTokens': async (uri?: string, line?: number) => {
      if (!uri || line === undefined) throw new Error('hover a dataset row and use its "show every token" link');
      const doc = await vscode.workspace.openTextDocument(vscode.Uri.parse(uri));
      const r = hover.rowSegments(doc, line);
      if (!r) throw new Error(`line ${line + 1} of ${vscode.workspace.asRelativePath(doc.uri)} is not a chat row`);
      if ('error' in r) throw new Error(r.error);
      const row = datasetRowAt(doc, line)?.row ?? line + 1;
      const title = `${vscode.workspace.asRelativePath(doc.uri)}, row ${row}, rendered with ${r.template}`;
      const markdown = rowTokensMarkdown(r.seg, title, r.training);
      // a read-only page, rendered: not an untitled buffer (raw Markdown, "Save changes?" on close)
      await showPage(`${path.basename(doc.uri.fsPath)} row ${row} tokens`, markdown);
      return markdown;
    },
  };
  return Object.fromEntries(
    Object.entries(table).map(([id, run]) => [id, reported(log, run as (...a: unknown[]) => unknown)]),
  ) as {
    [K in keyof typeof table]: (
      ...args: Parameters<(typeof table)[K]>
    ) => Promise<Awaited<ReturnType<(typeof table)[K]>> | undefined>;
  };
}

function watch(glob: string, onChange: () => void): vscode.Disposable {
  const watcher = vscode.workspace.createFileSystemWatcher(glob);
  let timer: NodeJS.Timeout | undefined;
  const fire = () => {
    clearTimeout(timer);
    timer = setTimeout(onChange, 200);
  };
  watcher.onDidChange(fire);
  watcher.onDidCreate(fire);
  watcher.onDidDelete(fire);
  return vscode.Disposable.from(watcher, { dispose: () => clearTimeout(timer) });
}

export function deactivate(): void {}
