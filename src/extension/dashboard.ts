/**
 * The dashboard panel: one instance, created or revealed on demand, restored after a reload by its serializer.
 * Resources only from dist/ and media/; the HTML comes from dashboardHtml.ts (strict CSP, nonces).
 */
import * as fs from 'node:fs';
import * as vscode from 'vscode';
import type { DashboardSnapshot, FromWebview, ToWebview } from '../contracts/dashboard';
import { dashboardHtml, makeNonce } from './dashboardHtml';

export const DASHBOARD_VIEW_TYPE = 'piggyback.dashboard';

export class Dashboard implements vscode.Disposable {
  private panel: vscode.WebviewPanel | undefined;
  private snapshot: DashboardSnapshot = { checkpoints: {} };
  private readonly actions = new vscode.EventEmitter<FromWebview>();
  readonly onAction = this.actions.event;
  private readonly changed = new vscode.EventEmitter<DashboardSnapshot>();
  /** Fires on every snapshot change, from any entry point (the status bar follows it). */
  readonly onDidChange = this.changed.event;

  constructor(private readonly extensionUri: vscode.Uri) {}

  get current(): DashboardSnapshot {
    return this.snapshot;
  }
  get visible(): boolean {
    return !!this.panel;
  }

  show(): void {
    if (this.panel) {
      this.panel.reveal(undefined, true);
      return;
    }
    const panel = vscode.window.createWebviewPanel(
      DASHBOARD_VIEW_TYPE,
      'Piggyback Lens',
      { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true },
      this.options(),
    );
    this.attach(panel);
  }

  /**
   * Called by the serializer after a reload. The results shown are the extension's (the current pair's, from
   * workspace state), never the ones the webview saved: those may be of the pair chosen before.
   */
  revive(panel: vscode.WebviewPanel): void {
    this.snapshot = { ...this.snapshot, busy: undefined };
    panel.webview.options = this.options();
    this.attach(panel);
  }

  update(change: Partial<DashboardSnapshot>): void {
    this.snapshot = { ...this.snapshot, ...change };
    this.post();
    this.changed.fire(this.snapshot);
  }

  private options(): vscode.WebviewOptions & vscode.WebviewPanelOptions {
    return {
      enableScripts: true,
      retainContextWhenHidden: false,
      // everything is inlined under the nonce: the webview needs no local resources at all
      localResourceRoots: [],
    };
  }

  private attach(panel: vscode.WebviewPanel): void {
    this.panel = panel;
    const w = panel.webview;
    const read = (...p: string[]) => fs.readFileSync(vscode.Uri.joinPath(this.extensionUri, ...p).fsPath, 'utf8');
    w.html = dashboardHtml({
      nonce: makeNonce(),
      elementsScript: read('dist', 'vscode-elements.js'),
      dashboardScript: read('dist', 'webview.js'),
      style: read('media', 'dashboard.css'),
      initialState: this.snapshot,
    });
    w.onDidReceiveMessage((m: FromWebview) => {
      if (m.type === 'ready') this.post();
      else this.actions.fire(m);
    });
    panel.onDidDispose(() => (this.panel = undefined));
    // a hidden webview gets the full snapshot again when it becomes visible
    panel.onDidChangeViewState((e) => e.webviewPanel.visible && this.post());
  }

  private post(): void {
    const message: ToWebview = { type: 'snapshot', snapshot: this.snapshot };
    void this.panel?.webview.postMessage(message);
  }

  dispose(): void {
    this.panel?.dispose();
    this.actions.dispose();
  }
}
