/**
 * The workspace scan: model folders with a chat template and datasets under a folder, and which template each
 * dataset belongs to (.piggyback.json, the nearest model folder).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FILE_LIMITS, insideRoot, readTextChecked } from '../../domain/files';
import { csvHasChatColumns, isCsv } from '../../domain/dataset/csv';
import { isJsonDataset, isJsonFile } from '../../domain/dataset/jsonArray';
import type { Finding } from '../../domain/findings';
import { isTemplateFileName } from '../../domain/template/source';
import { looksLikeTrainerConfig } from '../../domain/trainers/config';

const SKIP_DIRS = new Set([
  'node_modules',
  '.git',
  'dist',
  'out',
  '.cache',
  '.venv',
  'venv',
  '__pycache__',
  '.vscode-test',
]);

export interface WorkspaceScan {
  /** Template sources: model folders (holding a template) and standalone .jinja files. */
  templates: string[];
  datasets: string[];
  /** Training configs (axolotl, LLaMA-Factory, TRL YAML): each names the template its trainer renders. */
  trainers: string[];
  /** The walk stopped at its budget of entries: what lies past it was not looked at. */
  truncated?: { maxFiles: number };
}

/** Finds model folders (with a chat template) and JSONL datasets under a folder. */
export function scanFolder(root: string, maxFiles = 20000): WorkspaceScan {
  const templates: string[] = [];
  const datasets: string[] = [];
  const trainers: string[] = [];
  let seen = 0;
  let truncated = false;
  const walk = (dir: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    entries.sort((a, b) => a.name.localeCompare(b.name));
    let folderHasTemplate = false;
    for (const e of entries) {
      if (++seen > maxFiles) {
        truncated = true;
        return;
      }
      const full = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (!SKIP_DIRS.has(e.name) && !e.name.startsWith('.')) walk(full);
      } else if (e.isFile()) {
        if (
          /\.(jsonl|parquet|arrow)$/i.test(e.name) ||
          (isCsv(e.name) && csvHasChatColumns(full)) ||
          (isJsonFile(e.name) && !isTemplateFileName(e.name) && isJsonDataset(full))
        )
          datasets.push(full);
        else if (/\.(ya?ml|json)$/i.test(e.name) && trainerConfigFile(full)) trainers.push(full);
        else if (isTemplateFileName(e.name) && hasTemplate(full)) {
          if (/\.(jinja2?|j2)$/i.test(e.name) && e.name !== 'chat_template.jinja') templates.push(full);
          else folderHasTemplate = true;
        }
      }
    }
    if (folderHasTemplate) templates.push(dir);
  };
  walk(root);
  return {
    templates: templates.sort(),
    datasets: datasets.sort(),
    trainers: trainers.sort(),
    ...(truncated ? { truncated: { maxFiles } } : {}),
  };
}

/** A YAML or JSON file that names a model the way training configs do (read as one by the trainer audit). */
function trainerConfigFile(file: string): boolean {
  try {
    return looksLikeTrainerConfig(file, readTextChecked(file, FILE_LIMITS.config));
  } catch {
    return false;
  }
}

function hasTemplate(file: string): boolean {
  if (!file.endsWith('.json')) return true;
  try {
    const v = JSON.parse(readTextChecked(file, FILE_LIMITS.config)) as { chat_template?: unknown };
    return v.chat_template !== undefined && v.chat_template !== null;
  } catch {
    return file.endsWith('tokenizer_config.json'); // broken JSON: still report it, as CT009
  }
}

/** The workspace file that pairs datasets with templates: { "datasets": { "data/train.jsonl": "models/base" } }. */
export const ASSOCIATION_FILE = '.piggyback.json';

export type AssociationSource =
  | 'explicit'
  | 'workspace file'
  | 'trainer config'
  | 'nearest model folder'
  | 'only template'
  | 'none';

/**
 * Which template a dataset is rendered with, and why (shown to the user, who can change it). An entry of
 * .piggyback.json that leaves the workspace is not used: `refused` says so (a WS001 finding).
 */
export function associate(
  dataset: string,
  root: string,
  templates: string[],
  explicit?: string,
  /** Datasets training configs name, with the config (trainerDatasets): rendered as that trainer renders them. */
  trainers?: Map<string, string>,
): { template?: string; source: AssociationSource; refused?: Finding } {
  if (explicit) return { template: path.resolve(root, explicit), source: 'explicit' };
  const assocFile = path.join(root, ASSOCIATION_FILE);
  let refused: Finding | undefined;
  if (fs.existsSync(assocFile)) {
    try {
      const text = readTextChecked(assocFile, FILE_LIMITS.association);
      const map = (JSON.parse(text) as { datasets?: Record<string, string> }).datasets ?? {};
      const rel = path.relative(root, dataset).split(path.sep).join('/');
      const entry = map[rel];
      if (typeof entry === 'string' && entry) {
        if (insideRoot(root, entry)) return { template: path.resolve(root, entry), source: 'workspace file' };
        refused = outsideWorkspace(
          assocFile,
          text,
          entry,
          `${ASSOCIATION_FILE} pairs ${rel} with ${entry}, which is outside the workspace folder ${root}: ignored`,
        );
      }
    } catch {
      // a broken or refused association file falls through to the guess
    }
  }
  const config = trainers?.get(path.resolve(dataset));
  const guess = config ? { template: config, source: 'trainer config' as const } : nearestTemplate(dataset, templates);
  return refused ? { ...guess, refused } : guess;
}

/** A WS001 finding at the first place `value` appears (JSON-quoted) in a workspace file. */
export function outsideWorkspace(file: string, text: string, value: string, message: string): Finding {
  const at = Math.max(0, text.indexOf(JSON.stringify(value)));
  const before = text.slice(0, at).split('\n');
  const line = before.length;
  const column = before[before.length - 1].length + 1;
  return {
    code: 'WS001',
    severity: 'error',
    message,
    file,
    line,
    column,
    endLine: line,
    endColumn: column + JSON.stringify(value).length,
  };
}

function nearestTemplate(dataset: string, templates: string[]): { template?: string; source: AssociationSource } {
  // nearest: a template in the dataset's folder or an ancestor, else the closest by shared path
  let best: string | undefined;
  let bestScore = -1;
  const dsParts = path.dirname(path.resolve(dataset)).split(path.sep);
  for (const t of templates) {
    const folder = fs.existsSync(t) && fs.statSync(t).isDirectory() ? t : path.dirname(t);
    const parts = path.resolve(folder).split(path.sep);
    let shared = 0;
    while (shared < parts.length && shared < dsParts.length && parts[shared] === dsParts[shared]) shared++;
    const score = shared * 1000 - (parts.length - shared);
    if (score > bestScore) [best, bestScore] = [t, score];
  }
  if (best) return { template: best, source: templates.length === 1 ? 'only template' : 'nearest model folder' };
  return { source: 'none' };
}
