/**
 * The dataset row at a line of an open document, for hovers, code lenses and the every-token view: a JSONL line,
 * or the example of a JSON-array file that spans that line (a pretty-printed example takes many lines). Where a
 * JSON array's examples start is computed once per document version.
 */
import * as vscode from 'vscode';
import { exampleAt, jsonArrayTextLines, type Start } from '../domain/dataset/jsonArray';
import { isJsonArrayDataset } from './diagnostics';

export interface DatasetRow {
  /** The row's JSON text. */
  text: string;
  /** 1-based: the line of a JSONL file, the example's number in a JSON array. */
  row: number;
  /** Where the row is in the document. */
  range: vscode.Range;
}

const startsCache = new WeakMap<vscode.TextDocument, { version: number; starts: Start[] }>();

/** Where every example of a JSON-array document starts (as far as it parses). */
export function exampleStarts(doc: vscode.TextDocument): Start[] {
  const seen = startsCache.get(doc);
  if (seen?.version === doc.version) return seen.starts;
  const starts: Start[] = [];
  try {
    for (const _ of jsonArrayTextLines(doc.fileName, doc.getText(), starts));
  } catch {
    // a broken file: the examples before the break are still rows (the diagnostics say where it breaks)
  }
  startsCache.set(doc, { version: doc.version, starts });
  return starts;
}

export function datasetRowAt(doc: vscode.TextDocument, line: number): DatasetRow | undefined {
  if (!isJsonArrayDataset(doc)) {
    const l = doc.lineAt(line);
    return l.isEmptyOrWhitespace ? undefined : { text: l.text, row: line + 1, range: l.range };
  }
  const text = doc.getText();
  const at = exampleAt(text, exampleStarts(doc), line + 1, (s) =>
    doc.offsetAt(new vscode.Position(s.line - 1, s.column - 1)),
  );
  if (!at) return undefined;
  const from = doc.positionAt(doc.offsetAt(new vscode.Position(at.start.line - 1, at.start.column - 1)));
  const to = doc.positionAt(doc.offsetAt(from) + at.text.length);
  return { text: at.text, row: at.row, range: new vscode.Range(from, to) };
}
