/**
 * Audit Workspace: every model folder and dataset, findings in the Problems view. What it found stays until the file
 * changes or the audit runs again: kept in its own diagnostic collection (closing a file does not clear it), and in
 * workspace state with each file's size and modification time, so that a window reload shows it again for files
 * that did not change. Identical findings on identical files (eleven copies of one template) are one entry, at the
 * first copy, with the others as related locations.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as vscode from 'vscode';
import { auditFolder } from '../app/audits';
import { FILE_LIMITS, readFileChecked } from '../domain/files';
import type { Finding } from '../domain/findings';
import { toDiagnostic } from './diagnostics';

const KEY = 'piggyback.workspaceAudit';

/** A finding as kept: the finding at its first file, and the identical copies it stands for. */
interface KeptFinding extends Finding {
  copies?: string[];
}

interface Kept {
  files: Record<string, { size: number; mtimeMs: number }>;
  findings: KeptFinding[];
}

export class WorkspaceAudit implements vscode.Disposable {
  readonly collection = vscode.languages.createDiagnosticCollection('piggyback-workspace');
  private kept: Kept = { files: {}, findings: [] };

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly log: vscode.LogOutputChannel,
  ) {}

  /** Shows the last audit's findings again, for the files that did not change since (called after activation). */
  restore(): void {
    const kept = this.context.workspaceState.get<Kept>(KEY);
    if (!kept) return;
    this.kept = kept;
    this.publish((file) => unchanged(file, kept.files[file]));
  }

  /** A file changed (edited, saved, rewritten on disk): its audit findings are out of date. */
  drop(uri: vscode.Uri): void {
    this.collection.delete(uri);
  }

  /** A file the live audit stopped showing (closed): the workspace audit's findings come back if it is unchanged. */
  reshow(uri: vscode.Uri): void {
    const file = uri.fsPath;
    if (!unchanged(file, this.kept.files[file])) return;
    const mine = this.kept.findings.filter((f) => f.file === file);
    if (mine.length) this.collection.set(uri, mine.map(diagnostic));
  }

  async run(): Promise<{ findings: number; entries: number }> {
    const folders = vscode.workspace.workspaceFolders ?? [];
    if (folders.length === 0) {
      void vscode.window.showInformationMessage('Piggyback Lens: open a folder to audit its models and datasets.');
      return { findings: 0, entries: 0 };
    }
    const all: Finding[] = [];
    let templates = 0;
    let datasets = 0;
    let failed = 0;
    const cancelled = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: 'Piggyback: auditing workspace', cancellable: true },
      async (progress, token) => {
        const abort = new AbortController();
        token.onCancellationRequested(() => abort.abort());
        for (const [i, folder] of folders.entries()) {
          progress.report({
            message: `${folder.name} (${i + 1} of ${folders.length})`,
            increment: 100 / folders.length,
          });
          try {
            // datasets are scanned in worker threads: a large file does not stall the extension host
            const a = await auditFolder(folder.uri.fsPath, {
              signal: abort.signal,
              workerFile: vscode.Uri.joinPath(this.context.extensionUri, 'dist', 'datasetScanWorker.js').fsPath,
            });
            templates += a.templates.length;
            datasets += a.datasets.length;
            all.push(...a.findings.filter((f) => f.file));
            this.log.info(
              `audited ${folder.uri.fsPath}: ${a.templates.length} templates, ${a.datasets.length} datasets, ${a.findings.length} findings`,
            );
          } catch (e) {
            failed++;
            this.log.error(`audit of ${folder.uri.fsPath} failed`, e);
            void vscode.window.showErrorMessage(
              `Piggyback Lens: audit of ${folder.name} failed: ${(e as Error).message}`,
            );
          }
          if (token.isCancellationRequested) return true;
        }
        return false;
      },
    );
    const grouped = groupIdentical(all);
    const files: Kept['files'] = {};
    for (const f of grouped) {
      const st = statOf(f.file!);
      if (st) files[f.file!] = st;
    }
    this.kept = { files, findings: grouped };
    await this.context.workspaceState.update(KEY, this.kept);
    this.collection.clear();
    // a file open in an editor shows the live audit of its text; the workspace audit's entry is for the others
    const open = new Set(vscode.workspace.textDocuments.map((d) => d.uri.fsPath));
    this.publish((file) => !open.has(file));
    const copies = all.length - grouped.length;
    const what = `${templates} template${templates === 1 ? '' : 's'} and ${datasets} dataset${datasets === 1 ? '' : 's'}`;
    const summary = cancelled
      ? `Piggyback Lens: audit cancelled after ${what}: ${all.length} findings so far.`
      : `Piggyback Lens: audited ${what}: ${all.length === 0 ? 'no findings' : `${all.length} finding${all.length === 1 ? '' : 's'}`}${copies > 0 ? ` (${grouped.length} entries: identical findings on identical files are shown once)` : ''}${failed ? `; ${failed} folder${failed === 1 ? '' : 's'} failed` : ''}.`;
    void vscode.window
      .showInformationMessage(summary, ...(all.length ? ['Show Problems'] : []))
      .then((a) => a && vscode.commands.executeCommand('workbench.actions.view.problems'));
    return { findings: all.length, entries: grouped.length };
  }

  private publish(show: (file: string) => boolean): void {
    const byFile = new Map<string, vscode.Diagnostic[]>();
    for (const f of this.kept.findings) {
      if (!f.file || !show(f.file)) continue;
      byFile.set(f.file, [...(byFile.get(f.file) ?? []), diagnostic(f)]);
    }
    for (const [file, list] of byFile) this.collection.set(vscode.Uri.file(file), list);
  }

  dispose(): void {
    this.collection.dispose();
  }
}

function diagnostic(f: KeptFinding): vscode.Diagnostic {
  const d = toDiagnostic(f);
  if (f.copies?.length) {
    d.message += ` (the same in ${f.copies.length} identical cop${f.copies.length === 1 ? 'y' : 'ies'} of this file)`;
    const range = d.range;
    d.relatedInformation = f.copies.map(
      (c) =>
        new vscode.DiagnosticRelatedInformation(
          new vscode.Location(vscode.Uri.file(c), range),
          'the same finding, in an identical copy',
        ),
    );
  }
  return d;
}

/**
 * Identical findings (code, place, message) on files with identical content become one, at the first file by
 * path, listing the others: a template copied into eleven checkpoints is one entry, not eleven.
 */
export function groupIdentical(findings: Finding[]): KeptFinding[] {
  const hashes = new Map<string, string>();
  const hashOf = (file: string) => {
    let h = hashes.get(file);
    if (h === undefined) {
      try {
        // templates and configs are small; a dataset is not read whole to be compared (it is its own group)
        h = createHash('sha256').update(readFileChecked(file, FILE_LIMITS.config)).digest('hex');
      } catch {
        h = `unread:${file}`;
      }
      hashes.set(file, h);
    }
    return h;
  };
  const groups = new Map<string, KeptFinding>();
  const sorted = [...findings].sort((a, b) => (a.file ?? '').localeCompare(b.file ?? '') || a.line - b.line);
  for (const f of sorted) {
    if (!f.file) continue;
    const key = [hashOf(f.file), f.code, f.line, f.column, f.severity, f.message.split(f.file).join('')].join('\u0000');
    const first = groups.get(key);
    if (first && first.file !== f.file) first.copies = [...(first.copies ?? []), f.file];
    else if (!first) groups.set(key, { ...f });
  }
  return [...groups.values()];
}

function statOf(file: string): { size: number; mtimeMs: number } | undefined {
  try {
    const st = fs.statSync(file);
    return { size: st.size, mtimeMs: st.mtimeMs };
  } catch {
    return undefined;
  }
}

function unchanged(file: string, was: { size: number; mtimeMs: number } | undefined): boolean {
  const now = statOf(file);
  return !!was && !!now && now.size === was.size && now.mtimeMs === was.mtimeMs;
}
