/**
 * One place where the extension tells the user something failed: the message, once, in a notification and in the
 * log; a request the user cancelled is not an error. Commands go through `reported`, so that no command can fail
 * silently or with a stack trace.
 */
import * as vscode from 'vscode';
import { HostCrashedError, HostRequestError } from '../app/hostClient';

export function reportError(log: vscode.LogOutputChannel, e: unknown, context?: string): void {
  if (e instanceof HostRequestError && e.cancelled) return;
  const message = e instanceof Error ? e.message : String(e);
  log.error(context ? `${context}: ${message}` : message);
  if (!(e instanceof HostCrashedError || e instanceof HostRequestError) && e instanceof Error && e.stack)
    log.debug(e.stack);
  void vscode.window.showErrorMessage(`Piggyback Lens: ${context ? `${context}: ` : ''}${message}`);
}

/** A command that reports its failure (reportError) and then resolves to undefined instead of rejecting. */
export function reported<A extends unknown[], R>(
  log: vscode.LogOutputChannel,
  command: (...args: A) => R | Promise<R>,
): (...args: A) => Promise<R | undefined> {
  return async (...args: A) => {
    try {
      return await command(...args);
    } catch (e) {
      reportError(log, e);
      return undefined;
    }
  };
}
