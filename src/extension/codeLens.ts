/**
 * Code lenses: cheap to provide (ranges only), commands attached in resolveCodeLens.
 * On a chat template: patch prefix / patch postfix / show drift. On each dataset row: patch prefix with that row's
 * user message as the query.
 */
import * as vscode from 'vscode';
import { editorConfig } from './config';
import { normaliseRow } from '../domain/dataset/formats';
import { rowRequest } from '../domain/template/segments';
import { isDataset, isJsonArrayDataset, isTemplate } from './diagnostics';
import { datasetRowAt, exampleStarts } from './rows';
import type { ModelCommandArgs } from './modelCommands';

class PiggybackLens extends vscode.CodeLens {
  constructor(
    range: vscode.Range,
    readonly kind: 'prefix' | 'postfix' | 'drift' | 'row',
    readonly doc: vscode.TextDocument,
  ) {
    super(range);
  }
}

export class PiggybackCodeLenses implements vscode.CodeLensProvider<PiggybackLens> {
  private readonly changed = new vscode.EventEmitter<void>();
  /** Whether a checkpoint pair is chosen (kept by the extension): a lens that cannot run says what it needs. */
  pairChosen = false;
  readonly onDidChangeCodeLenses = this.changed.event;

  refresh(): void {
    this.changed.fire();
  }

  provideCodeLenses(doc: vscode.TextDocument): PiggybackLens[] {
    const config = editorConfig(doc.uri);
    if (!config.codeLens) return [];
    if (isTemplate(doc)) {
      const text = doc.getText();
      const at = doc.fileName.endsWith('.json') ? Math.max(0, text.indexOf('"chat_template"')) : 0;
      const range = doc.lineAt(doc.positionAt(at).line).range;
      return (['prefix', 'postfix', 'drift'] as const).map((k) => new PiggybackLens(range, k, doc));
    }
    if (isDataset(doc)) {
      // a lens above every row doubles the line height: by default only on the row under the cursor
      const mode = config.datasetRowLenses;
      if (mode === 'off') return [];
      if (mode === 'cursor') {
        const editor = vscode.window.activeTextEditor;
        if (editor?.document !== doc) return [];
        const row = datasetRowAt(doc, editor.selection.active.line);
        return row ? [new PiggybackLens(doc.lineAt(row.range.start.line).range, 'row', doc)] : [];
      }
      const max = 5000; // lenses past the first rows cost more than they help
      const lenses: PiggybackLens[] = [];
      if (isJsonArrayDataset(doc)) {
        for (const s of exampleStarts(doc).slice(0, max))
          lenses.push(new PiggybackLens(doc.lineAt(s.line - 1).range, 'row', doc));
        return lenses;
      }
      for (let i = 0; i < Math.min(doc.lineCount, max); i++) {
        const line = doc.lineAt(i);
        if (!line.isEmptyOrWhitespace) lenses.push(new PiggybackLens(line.range, 'row', doc));
      }
      return lenses;
    }
    return [];
  }

  resolveCodeLens(lens: PiggybackLens): PiggybackLens {
    this.resolveCommand(lens);
    // a lens that cannot run as it is says what it needs, and its click does that first
    if (lens.command?.command && !vscode.workspace.isTrusted)
      lens.command = {
        title: `${lens.command.title} (trust the workspace to run models)`,
        command: 'workbench.trust.manage',
      };
    else if (lens.command?.command && !this.pairChosen)
      lens.command = { ...lens.command, title: `${lens.command.title} (choose checkpoints first)` };
    return lens;
  }

  private resolveCommand(lens: PiggybackLens): void {
    const template = isTemplate(lens.doc) ? lens.doc.fileName : undefined;
    if (lens.kind === 'row') {
      const text = datasetRowAt(lens.doc, lens.range.start.line)?.text;
      const query = text === undefined ? undefined : rowQuery(text);
      lens.command =
        query === undefined
          ? { title: 'Piggyback: no user message in this row', command: '' }
          : {
              title: 'Patch prefix and compare',
              command: 'piggyback.patchCompare',
              arguments: [{ query, span: 'prefix' } satisfies ModelCommandArgs],
            };
    } else if (lens.kind === 'drift') {
      lens.command = {
        title: 'Show drift',
        command: 'piggyback.measureDrift',
        arguments: [{ template } satisfies ModelCommandArgs],
      };
    } else {
      lens.command = {
        title: `Patch ${lens.kind} and compare`,
        command: 'piggyback.patchCompare',
        arguments: [{ template, span: lens.kind } satisfies ModelCommandArgs],
      };
    }
  }
}

/** The last user message of a JSONL row, or undefined. */
export function rowQuery(line: string): string | undefined {
  try {
    const row = normaliseRow(JSON.parse(line));
    return rowRequest(row.messages)?.query;
  } catch {
    return undefined;
  }
}

/**
 * On a training config: a lens on the line that chooses the template, opening the comparison of the template the
 * trainer renders with the model tokenizer's (prefix and postfix, token by token). Shown once the config's
 * trainer audit has run (diagnostics.ts), so the lens never promises a comparison that cannot be made.
 */
export class TrainerConfigLenses implements vscode.CodeLensProvider {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChangeCodeLenses = this.changed.event;

  constructor(private readonly views: Map<string, { line: number; title: string; markdown: string }>) {}

  refresh(): void {
    this.changed.fire();
  }

  provideCodeLenses(doc: vscode.TextDocument): vscode.CodeLens[] {
    const view = this.views.get(doc.fileName);
    if (!view || !editorConfig(doc.uri).codeLens) return [];
    const line = Math.min(Math.max(0, view.line - 1), doc.lineCount - 1);
    return [
      new vscode.CodeLens(doc.lineAt(line).range, {
        title: "Compare with the tokenizer's template",
        command: 'piggyback.showTrainerComparison',
        arguments: [doc.uri.toString()],
      }),
    ];
  }
}
