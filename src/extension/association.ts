/**
 * Which template a dataset is rendered with. Always visible (status bar) and changeable (quick pick); the choice
 * is written to the workspace's .piggyback.json so that the CLI makes the same choice in CI.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { associate, ASSOCIATION_FILE, type AssociationSource, scanFolder, trainerDatasets } from '../app/audits';
import { insideRoot } from '../domain/files';
import { readSettings } from './config';
import { FILE_LIMITS, readTextChecked } from '../domain/files';

export interface Association {
  template?: string;
  source: AssociationSource | 'setting';
}

export class Associations implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem('piggyback.template', vscode.StatusBarAlignment.Left, 50);
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChange = this.changed.event;
  private scanCache = new Map<string, { at: number; templates: string[]; configs: string[] }>();

  constructor() {
    this.item.name = 'Piggyback template';
    this.item.command = 'piggyback.chooseTemplate';
  }

  /** Scans are looked at again (a training config or dataset_info.json changed). */
  forget(): void {
    this.scanCache.clear();
  }

  /** Model folders and .jinja files in the workspace folder (cached for a few seconds: scans walk the tree). */
  templatesIn(root: string): string[] {
    return this.scanned(root).templates;
  }

  /** The workspace folder's model folders, .jinja files and training configs (a walk, cached for a few seconds). */
  private scanned(root: string) {
    const hit = this.scanCache.get(root);
    if (hit && Date.now() - hit.at < 5000) return hit;
    const scan = scanFolder(root);
    const entry = { at: Date.now(), templates: scan.templates, configs: scan.trainers };
    this.scanCache.set(root, entry);
    return entry;
  }

  /**
   * The datasets the training configs name, each with its config (the first naming it). Read at each use, not
   * cached with the walk: a dataset written after its config or dataset_info.json is paired once it exists.
   */
  private trainersIn(root: string, configs: string[]): Map<string, string> {
    const trainers = new Map<string, string>();
    for (const config of configs)
      for (const d of trainerDatasets(config))
        if (insideRoot(root, d) && !trainers.has(path.resolve(d))) trainers.set(path.resolve(d), config);
    return trainers;
  }

  resolve(dataset: vscode.Uri): Association {
    const folder = vscode.workspace.getWorkspaceFolder(dataset);
    const root = folder?.uri.fsPath ?? path.dirname(dataset.fsPath);
    // a per-dataset choice in .piggyback.json wins over the workspace-wide setting, which wins over the guess
    const { templates, configs } = this.scanned(root);
    const guess = associate(dataset.fsPath, root, templates, undefined, this.trainersIn(root, configs));
    if (guess.refused) this.warnOnce(guess.refused.message);
    if (guess.source === 'workspace file') return guess;
    const setting = readSettings(dataset).template;
    if (setting) return { template: path.resolve(root, setting), source: 'setting' };
    return guess;
  }

  private readonly warned = new Set<string>();
  private warnOnce(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    void vscode.window.showWarningMessage(`Piggyback Lens: WS001 ${message}`);
  }

  update(editor: vscode.TextEditor | undefined): void {
    if (!editor || !/\.jsonl$/i.test(editor.document.fileName)) {
      this.item.hide();
      return;
    }
    const a = this.resolve(editor.document.uri);
    const root = vscode.workspace.getWorkspaceFolder(editor.document.uri)?.uri.fsPath ?? '';
    this.item.text = `$(symbol-namespace) ${a.template ? path.relative(root, a.template) || path.basename(a.template) : 'no template'}`;
    this.item.tooltip = a.template
      ? `Piggyback Lens renders this dataset with ${a.template} (${a.source}). Click to change.`
      : 'Piggyback Lens found no chat template for this dataset. Click to choose one.';
    this.item.show();
  }

  async choose(dataset?: vscode.Uri): Promise<void> {
    const uri = dataset ?? vscode.window.activeTextEditor?.document.uri;
    if (!uri || !/\.jsonl$/i.test(uri.fsPath)) {
      void vscode.window.showInformationMessage(
        'Open a JSONL dataset to choose the chat template it is rendered with.',
      );
      return;
    }
    const folder = vscode.workspace.getWorkspaceFolder(uri);
    const root = folder?.uri.fsPath ?? path.dirname(uri.fsPath);
    this.scanCache.delete(root);
    const current = this.resolve(uri);
    // model folders and .jinja files, then training configs (the template their trainer renders)
    const scan = this.scanned(root);
    const configs = scan.configs;
    const items: (vscode.QuickPickItem & { value?: string })[] = [...scan.templates, ...configs].map((t) => ({
      label: path.relative(root, t) || path.basename(t),
      description:
        t === current.template
          ? `current (${current.source})`
          : configs.includes(t)
            ? 'training config: the template its trainer renders'
            : undefined,
      value: t,
    }));
    items.push({ label: '$(folder-opened) Browse...', value: undefined });
    const pick = await vscode.window.showQuickPick(items, { title: `Chat template for ${path.basename(uri.fsPath)}` });
    if (!pick) return;
    let chosen = pick.value;
    if (!chosen) {
      const picked = await vscode.window.showOpenDialog({
        canSelectFiles: true,
        canSelectFolders: true,
        title: 'Model folder, tokenizer_config.json or .jinja',
      });
      if (!picked?.[0]) return;
      chosen = picked[0].fsPath;
    }
    if (!folder) {
      void vscode.window.showWarningMessage(
        'Open a workspace folder to remember the choice; set piggyback.template instead.',
      );
      return;
    }
    writeAssociation(root, uri.fsPath, chosen);
    this.changed.fire();
    this.update(vscode.window.activeTextEditor);
  }

  dispose(): void {
    this.item.dispose();
    this.changed.dispose();
  }
}

/** Adds or replaces one dataset's entry in .piggyback.json, keeping everything else in the file. */
export function writeAssociation(root: string, dataset: string, template: string): void {
  const file = path.join(root, ASSOCIATION_FILE);
  let data: { datasets?: Record<string, string>; [k: string]: unknown } = {};
  if (fs.existsSync(file)) {
    try {
      data = JSON.parse(readTextChecked(file, FILE_LIMITS.association));
    } catch {
      throw new Error(`${file} is not valid JSON; fix or delete it to save the template choice`);
    }
  }
  const rel = (p: string) => path.relative(root, p).split(path.sep).join('/') || '.';
  data.datasets = { ...data.datasets, [rel(dataset)]: rel(template) };
  fs.writeFileSync(file, JSON.stringify(data, null, 2) + '\n');
}
