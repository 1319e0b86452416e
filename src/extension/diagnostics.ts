/**
 * Diagnostics on open template and dataset files, recomputed as the user types (debounced), on unsaved text.
 * A dataset audit yields to the event loop between chunks and stops when a newer edit supersedes it, so a large
 * JSONL never blocks the extension host.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { auditDataset } from '../domain/dataset/audit';
import type { Finding } from '../domain/findings';
import { auditLoss } from '../domain/dataset/training';
import { diagnosticDocsUri } from './diagnosticDocs';
import {
  auditDatasetWith,
  datasetAuditOptions,
  datasetFindings,
  prepareTemplate,
  type PreparedTemplate,
} from '../app/audits';
import { isJsonDatasetText } from '../domain/dataset/jsonArray';
import { isTemplateFileName } from '../domain/template/source';
import { looksLikeTrainerConfig } from '../domain/trainers/config';
import type { Associations } from './association';
import { TemplateAudits, type TemplateAuditView } from './templateAudits';
import { editorConfig, readSettings } from './config';

/** JSONL files, and .json files whose content is an array of chat rows (Alpaca, LLaMA-Factory, ShareGPT exports). */
export function isDataset(doc: vscode.TextDocument): boolean {
  if (/\.jsonl$/i.test(doc.fileName)) return true;
  return isJsonArrayDataset(doc);
}

const jsonDatasets = new WeakMap<vscode.TextDocument, { version: number; dataset: boolean }>();
/** A .json document that holds a dataset (looked at once per version: config files are JSON too). */
export function isJsonArrayDataset(doc: vscode.TextDocument): boolean {
  if (!/\.json$/i.test(doc.fileName) || isTemplateFileName(doc.fileName)) return false;
  const seen = jsonDatasets.get(doc);
  if (seen?.version === doc.version) return seen.dataset;
  const dataset = isJsonDatasetText(doc.fileName, doc.getText());
  jsonDatasets.set(doc, { version: doc.version, dataset });
  return dataset;
}

export function isTemplate(doc: vscode.TextDocument): boolean {
  return isTemplateFileName(doc.fileName);
}

/** A training config (axolotl, LLaMA-Factory, TRL; YAML or JSON): it names its model the way those configs do. */
export function isTrainerConfig(doc: vscode.TextDocument): boolean {
  return /\.(ya?ml|json)$/i.test(doc.fileName) && looksLikeTrainerConfig(doc.fileName, doc.getText());
}

const SEVERITY: Record<Finding['severity'], vscode.DiagnosticSeverity> = {
  error: vscode.DiagnosticSeverity.Error,
  warning: vscode.DiagnosticSeverity.Warning,
  info: vscode.DiagnosticSeverity.Information,
};

export function toDiagnostic(f: Finding): vscode.Diagnostic {
  const range = new vscode.Range(f.line - 1, f.column - 1, f.endLine - 1, Math.max(f.endColumn - 1, f.column));
  const d = new vscode.Diagnostic(range, f.message, SEVERITY[f.severity]);
  // the code's documentation, rendered in a tab (diagnosticDocs.ts), not the Markdown source as text
  d.code = { value: f.code, target: diagnosticDocsUri(f.code) };
  d.source = 'piggyback';
  return d;
}

export class DiagnosticsManager implements vscode.Disposable {
  readonly collection = vscode.languages.createDiagnosticCollection('piggyback');
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly generation = new Map<string, number>();
  /** The last audit of each open template file (the hover reads it), made in the template-audit worker. */
  readonly templateDocs = new Map<string, TemplateAuditView>();
  private readonly audits: TemplateAudits;
  /** The last trainer audit of each open training config (its code lens opens the comparison). */
  readonly trainerDocs = new Map<string, NonNullable<TemplateAuditView['trainer']>>();
  private readonly trainerAudited = new vscode.EventEmitter<void>();
  readonly onTrainerAudited = this.trainerAudited.event;
  /** Templates datasets are rendered with, by association path; cleared when a template changes. */
  private readonly forDatasets = new Map<string, PreparedTemplate>();

  constructor(
    extensionUri: vscode.Uri,
    private readonly associations: Associations,
    private readonly log: vscode.LogOutputChannel,
  ) {
    this.audits = new TemplateAudits(vscode.Uri.joinPath(extensionUri, 'dist', 'templateAuditWorker.js').fsPath);
  }

  schedule(doc: vscode.TextDocument, immediate = false): void {
    if (!isDataset(doc) && !isTemplate(doc) && !isTrainerConfig(doc)) return;
    const key = doc.uri.toString();
    clearTimeout(this.timers.get(key));
    const delay = immediate ? 0 : readSettings(doc.uri).debounceMs;
    this.timers.set(
      key,
      setTimeout(() => {
        this.timers.delete(key);
        this.refresh(doc).catch((e) => this.log.error(`diagnostics for ${doc.fileName} failed`, e));
      }, delay),
    );
  }

  /** Re-audits every open dataset (after a template or association change). */
  refreshDatasets(): void {
    for (const doc of vscode.workspace.textDocuments) if (isDataset(doc)) this.schedule(doc, true);
  }

  async refresh(doc: vscode.TextDocument): Promise<void> {
    const key = doc.uri.toString();
    const gen = (this.generation.get(key) ?? 0) + 1;
    this.generation.set(key, gen);
    const stale = () => this.generation.get(key) !== gen || doc.isClosed;
    const started = Date.now();
    let findings: Finding[];
    if (isTrainerConfig(doc)) {
      // the trainer's template and the model tokenizer's, rendered in the worker as templates are
      const root = vscode.workspace.getWorkspaceFolder(doc.uri)?.uri.fsPath;
      const view = await this.audits.audit(doc.fileName, doc.getText(), {}, { root });
      if (stale()) return;
      if (view.trainer) this.trainerDocs.set(doc.fileName, view.trainer);
      else this.trainerDocs.delete(doc.fileName);
      this.trainerAudited.fire();
      findings = view.findings.filter((f) => !f.file || path.resolve(f.file) === path.resolve(doc.fileName));
    } else if (isTemplate(doc)) {
      const s = readSettings(doc.uri);
      // rendered off the extension host's thread, with a time and memory limit: a template is workspace code
      const view = await this.audits.audit(doc.fileName, doc.getText(), {
        tokenizer: s.tokenizer,
        name: s.templateName,
        kwargs: s.templateKwargs,
        specialTokens: s.specialTokens,
      });
      if (stale()) return;
      this.templateDocs.set(doc.fileName, view);
      // the walkthrough's first step is done once a template has been audited
      void vscode.commands.executeCommand('setContext', 'piggyback.templateAudited', true);
      findings = view.findings.filter((f) => !f.file || path.resolve(f.file) === path.resolve(doc.fileName));
    } else {
      const p = this.templateFor(doc.uri);
      const text = doc.getText();
      if (isJsonArrayDataset(doc)) {
        // a JSON array: split into its examples, each located where it starts (the whole buffer is in memory)
        const loss = editorConfig(doc.uri).lossMode;
        const report = await auditDatasetWith(doc.fileName, p ?? { findings: [], kwargs: {} }, text, auditLoss(loss));
        if (stale()) return;
        this.collection.set(
          doc.uri,
          datasetFindings(report).map((f) => toDiagnostic(f)),
        );
        return;
      }
      const lines = doc.lineCount;
      const limit = readSettings(doc.uri).maxDatasetLines;
      // the same options as the CLI's audit (the context length for DS011 among them), on the unsaved text
      const report = await auditDataset(yieldingChunks(text, stale), {
        ...(p ? datasetAuditOptions(p, auditLoss(editorConfig(doc.uri).lossMode)) : {}),
        file: doc.fileName,
        onProgress: (rows) => !stale() && rows < limit,
      });
      if (stale()) return;
      findings = datasetFindings(report);
      if (lines > limit)
        this.log.info(
          `${doc.fileName}: audited the first ${limit} of ${lines} lines (piggyback.diagnostics.maxDatasetLines)`,
        );
    }
    if (stale()) return;
    this.collection.set(
      doc.uri,
      findings.map((f) => toDiagnostic(f)),
    );
    this.log.debug(`${path.basename(doc.fileName)}: ${findings.length} findings in ${Date.now() - started} ms`);
  }

  /** The prepared template a dataset is rendered with (cached by path; refreshed when its file changes). */
  templateFor(dataset: vscode.Uri): PreparedTemplate | undefined {
    const a = this.associations.resolve(dataset);
    if (!a.template) return undefined;
    let p = this.forDatasets.get(a.template);
    if (!p) {
      const s = readSettings(dataset);
      p = prepareTemplate(a.template, {
        root: vscode.workspace.getWorkspaceFolder(dataset)?.uri.fsPath,
        tokenizer: s.tokenizer,
        name: s.templateName,
        kwargs: s.templateKwargs,
        specialTokens: s.specialTokens,
      });
      this.forDatasets.set(a.template, p);
    }
    return p;
  }

  /** A template file or a setting changed: datasets are re-rendered with the new template. */
  templatesChanged(): void {
    this.forDatasets.clear();
    this.refreshDatasets();
  }

  forget(doc: vscode.TextDocument): void {
    clearTimeout(this.timers.get(doc.uri.toString()));
    this.templateDocs.delete(doc.fileName);
    this.trainerDocs.delete(doc.fileName);
    this.collection.delete(doc.uri);
  }

  dispose(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.collection.dispose();
    this.trainerAudited.dispose();
    this.audits.dispose();
  }
}

/** Feeds text in 256 KiB slices, yielding to the event loop between them, and stops once superseded. */
async function* yieldingChunks(text: string, stale: () => boolean): AsyncGenerator<string> {
  const size = 256 * 1024;
  for (let i = 0; i < text.length; i += size) {
    if (stale()) return;
    yield text.slice(i, i + size);
    await new Promise((r) => setImmediate(r));
  }
}
