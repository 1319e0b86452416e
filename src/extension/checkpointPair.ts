/**
 * Checkpoints and the model host, from the editor's side. Nothing here runs at activation: the host process (and
 * with it onnxruntime) starts on the first command that needs a model. In an untrusted workspace no model is
 * loaded and the user is told why; a host that dies is reported, and can be restarted.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { hostConfig } from './config';
import { unchangedCheckpoints } from '../app/eval/evalReport';
import { reportError } from './errors';
import { HostClient, HostRequestError } from '../app/hostClient';
import {
  adapterBaseFolder,
  checkpointKind,
  type CheckpointKind,
  checkpointProblem,
  ONNX_MODEL_FILES,
} from '../domain/checkpoints';
import type { LoadResult } from '../contracts/modelHost';

const BASE_KEY = 'piggyback.checkpoint.base';
const FINETUNED_KEY = 'piggyback.checkpoint.finetuned';
const KIND_LABEL: Record<CheckpointKind, string> = {
  hf: 'Hugging Face model',
  adapter: 'LoRA adapter',
  onnx: 'ONNX export',
};

export class CheckpointPair implements vscode.Disposable {
  private host: HostClient | undefined;
  private loaded: { base: string; finetuned: string; extra: string; result: LoadResult } | undefined;
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChange = this.changed.event;

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly log: vscode.LogOutputChannel,
  ) {}

  get base(): string | undefined {
    return this.context.workspaceState.get<string>(BASE_KEY);
  }
  get finetuned(): string | undefined {
    return this.context.workspaceState.get<string>(FINETUNED_KEY);
  }
  get hostRunning(): boolean {
    return !!this.host?.running;
  }

  /** The example organisms shipped with the extension, offered when the workspace has no checkpoint. */
  builtIn(): { base: string; finetuned: string; treft: string } {
    const dir = this.context.asAbsolutePath(path.join('examples', 'organisms'));
    return { base: path.join(dir, 'base'), finetuned: path.join(dir, 'finetuned'), treft: path.join(dir, 'treft') };
  }

  /**
   * Chooses a checkpoint after the checks a load makes before reading weights (checkpointProblem): a folder that
   * cannot load is refused now, saying why, not at first use. An adapter can be the base (two adapters over one
   * base model) when the model it was trained over is here.
   */
  async setCheckpoint(which: 'base' | 'finetuned', folder: string): Promise<void> {
    const problem = checkpointProblem(folder, which);
    if (problem) throw new CheckpointRefusal(problem.message, problem.file);
    await this.context.workspaceState.update(which === 'base' ? BASE_KEY : FINETUNED_KEY, folder);
    this.changed.fire();
  }

  /**
   * A refusal with the buttons that fix it: pick another checkpoint, open the file at fault, read how to open an
   * unsupported model (an ONNX export), or choose the weights' dtype when memory was short.
   */
  async explainRefusal(e: unknown, which?: 'base' | 'finetuned'): Promise<void> {
    const message = e instanceof Error ? e.message : String(e);
    this.log.error(message);
    const file = e instanceof CheckpointRefusal ? e.file : undefined;
    const actions: string[] = [];
    if (which) actions.push('Pick Another');
    if (file) actions.push('Open File');
    if (/--weights-dtype|weights dtype|int8|int4/.test(message)) actions.push('Choose Weights Dtype');
    if (/is not supported|ONNX/.test(message)) actions.push('How to Open Other Models');
    const a = await vscode.window.showErrorMessage(`Piggyback Lens: ${message}`, ...actions);
    if (a === 'Pick Another' && which) await this.choose(which);
    else if (a === 'Open File' && file) await vscode.window.showTextDocument(vscode.Uri.file(file));
    else if (a === 'Choose Weights Dtype')
      await vscode.commands.executeCommand('workbench.action.openSettings', 'piggyback.host.weightsDtype');
    else if (a === 'How to Open Other Models')
      await vscode.commands.executeCommand(
        'markdown.showPreview',
        vscode.Uri.joinPath(this.context.extensionUri, 'README.md'),
      );
  }

  /** Quick pick of workspace checkpoints (Hugging Face folders, adapters, ONNX exports), the organisms, Browse... */
  async choose(which: 'base' | 'finetuned'): Promise<void> {
    const found = new Map<string, CheckpointKind>();
    const markers = ['config.json', 'adapter_config.json', ...ONNX_MODEL_FILES];
    for (const f of markers) {
      for (const uri of await vscode.workspace.findFiles(`**/${f}`, '**/node_modules/**', 200)) {
        // the folder a marker names: onnx/model.onnx belongs to the folder above onnx/
        const folder = f.includes('/') ? path.dirname(path.dirname(uri.fsPath)) : path.dirname(uri.fsPath);
        const k = checkpointKind(folder);
        if ('kind' in k && !(which === 'base' && k.kind === 'adapter' && 'error' in adapterBaseFolder(folder)))
          found.set(folder, k.kind);
      }
    }
    // one entry per checkpoint: an onnx/ folder whose parent is listed is the same checkpoint (model.onnx inside)
    for (const folder of [...found.keys()])
      if (path.basename(folder) === 'onnx' && found.has(path.dirname(folder))) found.delete(folder);
    const builtIn = this.builtIn();
    const items: (vscode.QuickPickItem & { folder?: string })[] = [...found.keys()].sort().map((folder) => ({
      label: path.basename(folder),
      description: `${KIND_LABEL[found.get(folder)!]} · ${vscode.workspace.asRelativePath(folder)}`,
      folder,
    }));
    items.push({
      label: `$(beaker) built-in organism: ${which}`,
      description: 'examples/organisms',
      folder: builtIn[which],
    });
    items.push({ label: '$(folder-opened) Browse...' });
    const pick = await vscode.window.showQuickPick(items, {
      title: `Piggyback: ${which} checkpoint`,
      placeHolder: 'A Hugging Face model folder, a LoRA adapter (finetuned), or an ONNX decoder export',
    });
    if (!pick) return;
    let folder = pick.folder;
    if (!folder) {
      const picked = await vscode.window.showOpenDialog({
        canSelectFolders: true,
        canSelectFiles: false,
        title: `${which} checkpoint folder`,
      });
      folder = picked?.[0]?.fsPath;
    }
    if (!folder) return;
    try {
      await this.setCheckpoint(which, folder);
    } catch (e) {
      await this.explainRefusal(e, which);
    }
  }

  /** What the host has loaded now (checkpoint infos with content hashes), if anything. */
  get loadResult(): LoadResult | undefined {
    return this.loaded?.result;
  }

  /**
   * The host with the chosen pair (and any `extra` checkpoints, by name) loaded, or undefined after telling the
   * user what is missing. Without `extra`, whatever extra checkpoints are loaded stay.
   */
  /**
   * The model host with the chosen pair loaded (asks for what is missing). With baseOnly (the TReFT export, which
   * reads the base model's K/V alone) a base is enough: it is loaded under both names, once.
   */
  async ready(extra?: Record<string, string>, baseOnly = false): Promise<HostClient | undefined> {
    if (!vscode.workspace.isTrusted) {
      void vscode.window
        .showWarningMessage(
          'Piggyback Lens does not load or run models in an untrusted workspace. The static template and dataset audit still works. Trust the workspace to measure drift or patch.',
          'Manage Workspace Trust',
        )
        .then((a) => a && vscode.commands.executeCommand('workbench.trust.manage'));
      return undefined;
    }
    const base = this.base;
    const finetuned = this.finetuned;
    if (!base || (!finetuned && !baseOnly)) {
      const pick = await vscode.window.showInformationMessage(
        `Piggyback Lens needs a ${!base ? 'base' : 'finetuned'} checkpoint (a Hugging Face model folder, a LoRA adapter over the base, or an ONNX decoder export).`,
        'Select Checkpoints',
        'Use Built-in Organisms',
      );
      if (pick === 'Use Built-in Organisms') {
        const b = this.builtIn();
        await this.setCheckpoint('base', b.base);
        await this.setCheckpoint('finetuned', b.finetuned);
      } else if (pick === 'Select Checkpoints') {
        if (!base) await this.choose('base');
        if (!this.finetuned) await this.choose('finetuned');
      }
      if (!this.base || (!this.finetuned && !baseOnly)) return undefined;
    }
    const pairFinetuned = baseOnly ? this.base! : this.finetuned!;
    if (!this.host?.running) {
      this.host = new HostClient({
        script: this.context.asAbsolutePath(path.join('dist', 'host.js')),
        onLog: (level, message) =>
          level === 'error' ? this.log.error(`[host] ${message}`) : this.log.info(`[host] ${message}`),
        onExit: (exit) => {
          this.loaded = undefined;
          this.changed.fire();
          if (exit.signal !== 'SIGTERM') {
            const how = exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;
            this.log.error(`model host stopped (${how})`);
            void vscode.window
              .showErrorMessage(
                `Piggyback Lens: the model host stopped (${how}). Earlier results are kept.`,
                'Restart Model Host',
              )
              .then((a) => {
                if (a) void vscode.commands.executeCommand('piggyback.restartHost');
              });
          }
        },
      });
      this.loaded = undefined;
    }
    const extraKey = JSON.stringify(extra ?? {});
    if (
      !this.loaded ||
      this.loaded.base !== this.base ||
      (this.loaded.finetuned !== this.finetuned && this.loaded.finetuned !== pairFinetuned) ||
      (extra && this.loaded.extra !== extraKey)
    ) {
      try {
        const { settings, cacheDir } = hostConfig();
        const result = await this.host.load({
          base: this.base!,
          finetuned: pairFinetuned,
          extra: extra ?? {},
          cacheDir,
          settings,
        });
        this.loaded = { base: this.base!, finetuned: pairFinetuned, extra: extraKey, result };
        this.log.info(
          `loaded ${this.base} and ${pairFinetuned} (${result.base.layers} layers, ${result.base.kvHeads} KV heads, on ${result.base.device} with ${result.base.threads} threads; ${[result.base, result.finetuned].map((c) => c.description ?? c.kind).join(' / ')})`,
        );
        for (const [role, c] of unchangedCheckpoints(result))
          void vscode.window.showWarningMessage(
            `Piggyback Lens: the ${role} checkpoint ${path.basename(c.folder)}: ${c.unchanged}.`,
          );
        this.changed.fire();
      } catch (e) {
        // a refusal the user can act on (another checkpoint, a smaller dtype) comes with those buttons
        if (e instanceof HostRequestError && !e.cancelled) void this.explainRefusal(e);
        else this.report(e);
        return undefined;
      }
    }
    return this.host;
  }

  report(e: unknown): void {
    reportError(this.log, e);
  }

  async restart(): Promise<void> {
    await this.host?.dispose();
    this.host = undefined;
    this.loaded = undefined;
    const host = await this.ready();
    if (host) void vscode.window.showInformationMessage('Piggyback Lens: model host restarted.');
  }

  dispose(): void {
    void this.host?.dispose();
    this.changed.dispose();
  }
}

/** A checkpoint the pickers refused: the message, and the file at fault when there is one. */
export class CheckpointRefusal extends Error {
  constructor(
    message: string,
    readonly file?: string,
  ) {
    super(message);
    this.name = 'CheckpointRefusal';
  }
}
