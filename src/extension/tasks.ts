/**
 * Tasks: `piggyback` tasks run the bundled CLI (audit, template, dataset) with VS Code's own Node, and the
 * `$piggyback` problem matcher reads its `file:line:col: severity CODE: message` lines into the Problems view.
 * The provider offers "audit" for every workspace folder; tasks.json can name any of the three commands.
 */
import * as vscode from 'vscode';

export const TASK_TYPE = 'piggyback';

interface PiggybackTaskDefinition extends vscode.TaskDefinition {
  command: 'audit' | 'template' | 'dataset';
  args?: string[];
}

export class PiggybackTasks implements vscode.TaskProvider {
  constructor(private readonly cli: string) {}

  provideTasks(): vscode.Task[] {
    return (vscode.workspace.workspaceFolders ?? []).map((folder) =>
      this.task({ type: TASK_TYPE, command: 'audit', args: [folder.uri.fsPath] }, folder, `audit ${folder.name}`),
    );
  }

  resolveTask(task: vscode.Task): vscode.Task | undefined {
    const d = task.definition as PiggybackTaskDefinition;
    if (!['audit', 'template', 'dataset'].includes(d.command)) return undefined;
    const scope = typeof task.scope === 'object' ? task.scope : vscode.TaskScope.Workspace;
    return this.task(d, scope, task.name);
  }

  private task(
    d: PiggybackTaskDefinition,
    scope: vscode.WorkspaceFolder | vscode.TaskScope,
    name: string,
  ): vscode.Task {
    // VS Code's executable runs the CLI as plain Node; no colour, so that the problem matcher reads every line
    const execution = new vscode.ProcessExecution(process.execPath, [this.cli, d.command, ...(d.args ?? [])], {
      env: { ELECTRON_RUN_AS_NODE: '1', NO_COLOR: '1' },
    });
    const task = new vscode.Task(d, scope, name, 'piggyback', execution, '$piggyback');
    task.group = vscode.TaskGroup.Test;
    return task;
  }
}
