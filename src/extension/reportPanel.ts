/**
 * An eval run's HTML report in an editor tab: a webview without scripts, holding the report as written (its own CSP
 * allows its one style element by hash and nothing else). Opening it through the OS browser froze the
 * browser-hosted workbench; a webview works the same in desktop and browser-hosted VS Code.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';

export const REPORT_VIEW_TYPE = 'piggyback.evalReport';

export function openReportPanel(folder: string): vscode.WebviewPanel {
  const file = path.join(folder, 'report.html');
  if (!fs.existsSync(file)) throw new Error(`${folder} has no report.html yet: the run writes it when it finishes`);
  const panel = vscode.window.createWebviewPanel(
    REPORT_VIEW_TYPE,
    `Eval report: ${path.basename(folder)}`,
    { viewColumn: vscode.ViewColumn.Active, preserveFocus: false },
    { enableScripts: false, localResourceRoots: [] },
  );
  panel.webview.html = fs.readFileSync(file, 'utf8');
  return panel;
}
