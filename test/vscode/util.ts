// Helpers shared by the in-editor suites.
import * as vscode from 'vscode';

/** The test workspace folder (a copy of examples/). */
export const ws = (): string => vscode.workspace.workspaceFolders![0].uri.fsPath;

/** Polls `probe` until it returns something truthy. */
export async function until<T>(
  what: string,
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  ms = 30_000,
): Promise<T> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await probe();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}
