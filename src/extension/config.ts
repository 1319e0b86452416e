/**
 * The extension's settings, typed: the only place that calls getConfiguration (a project test checks it), as
 * rust-analyzer's config.ts is. Read fresh each time: settings can change while the extension runs. Defaults of
 * eval settings come from the app's EVAL_DEFAULTS, which package.json's are checked against.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { insideRoot } from '../domain/files';
import { preparePromptTemplate, type PromptTemplate, PromptTemplateError } from '../app/audits';
import { EVAL_DEFAULTS } from '../app/eval/request';
import type { LossSetting } from '../domain/dataset/training';
import type { HostSettings, WeightsDtypeSetting } from '../contracts/modelHost';

/** Template and diagnostics settings, per resource (a workspace folder can set its own). */
export interface Settings {
  /** Template source for datasets: a model folder, tokenizer_config.json or .jinja (workspace-relative). */
  template?: string;
  tokenizer?: string;
  templateName?: string;
  templateKwargs: Record<string, unknown>;
  specialTokens: Record<string, string>;
  debounceMs: number;
  maxDatasetLines: number;
}

const warned = new Set<string>();

/**
 * A path setting, unless a workspace set it to a place outside the workspace folder (.., absolute, a symlink out):
 * a workspace is not trusted to make the product read files elsewhere (WS001). The user's own settings are.
 */
function containedPath(c: vscode.WorkspaceConfiguration, key: string, scope?: vscode.Uri): string | undefined {
  const v = c.get<string>(key)?.trim();
  if (!v) return undefined;
  const i = c.inspect<string>(key);
  const fromWorkspace = (i?.workspaceFolderValue ?? i?.workspaceValue)?.trim() === v;
  const folder = scope ? vscode.workspace.getWorkspaceFolder(scope) : vscode.workspace.workspaceFolders?.[0];
  if (!fromWorkspace || !folder || insideRoot(folder.uri.fsPath, v)) return v;
  const message = `Piggyback Lens: WS001 the workspace setting piggyback.${key} (${v}) points outside the workspace folder; it is ignored. Set it in your user settings to use a path elsewhere.`;
  if (!warned.has(message)) {
    warned.add(message);
    void vscode.window.showWarningMessage(message);
  }
  return undefined;
}

/** Eval settings (piggyback.eval.*, piggyback.judge.*): what planEval takes from the editor. */
export interface EvalConfig {
  maxNewTokens: number;
  temperature: number;
  samples: number;
  seed: number;
  perturbationTrials: number;
  layerSweep: boolean;
  /** Extra checkpoints by name, resolved against the workspace folder. */
  extra: Record<string, string>;
  judge: { endpoint: string; model: string; timeoutMs: number } | undefined;
  judgeConcurrency: number;
}

/** Editor behaviour for a resource: code lenses and the trainer's loss masking. */
export interface EditorConfig {
  codeLens: boolean;
  datasetRowLenses: 'cursor' | 'all' | 'off';
  lossMode: LossSetting;
}

const section = (scope?: vscode.Uri) => vscode.workspace.getConfiguration('piggyback', scope);

export function editorConfig(scope?: vscode.Uri): EditorConfig {
  const c = section(scope);
  return {
    codeLens: c.get<boolean>('codeLens.enabled', true),
    datasetRowLenses: c.get<'cursor' | 'all' | 'off'>('codeLens.datasetRows', 'cursor'),
    lossMode: c.get<LossSetting>('training.lossMode', 'auto'),
  };
}

/** How the model host runs models (piggyback.host.*), and where it caches converted weights. */
export function hostConfig(): { settings: HostSettings; cacheDir: string | undefined } {
  const c = section();
  return {
    settings: {
      threads: c.get<number>('host.threads') || undefined,
      executionProvider: c.get<'auto' | 'cpu' | 'cuda'>('host.executionProvider'),
      weightsDtype: c.get<WeightsDtypeSetting>('host.weightsDtype'),
      modelFile: c.get<string>('host.onnxVariant') || undefined,
      memoryCheck: c.get<boolean>('host.memoryCheck'),
    },
    cacheDir: c.get<string>('host.cacheDir') || undefined,
  };
}

/** The folder eval runs go to, in the first workspace folder (undefined without one). */
export function runsFolder(): string | undefined {
  const root = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  return root ? path.resolve(root, section().get<string>('eval.runsFolder') || EVAL_DEFAULTS.runsFolder) : undefined;
}

export function evalConfig(): EvalConfig {
  const c = section();
  const d = EVAL_DEFAULTS;
  const endpoint = (c.get<string>('judge.endpoint') ?? '').trim();
  const model = (c.get<string>('judge.model') ?? '').trim();
  const root = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath ?? '';
  const extra = Object.fromEntries(
    Object.entries(c.get<Record<string, string>>('eval.extraCheckpoints') ?? {}).map(([k, v]) => [
      k,
      path.resolve(root, v),
    ]),
  );
  return {
    maxNewTokens: c.get<number>('eval.maxNewTokens') ?? d.maxNewTokens,
    temperature: c.get<number>('eval.temperature') ?? d.temperature,
    samples: c.get<number>('eval.samplesPerProbe') ?? d.samples,
    seed: c.get<number>('eval.seed') ?? d.seed,
    perturbationTrials: c.get<number>('eval.perturbationTrials') ?? d.perturbationTrials,
    layerSweep: c.get<boolean>('eval.layerSweep') ?? d.layerSweep,
    extra,
    judge: endpoint
      ? { endpoint, model, timeoutMs: 1000 * (c.get<number>('judge.timeoutSeconds') ?? d.judgeTimeoutSeconds) }
      : undefined,
    judgeConcurrency: c.get<number>('judge.concurrency') ?? d.judgeConcurrency,
  };
}

export function readSettings(scope?: vscode.Uri): Settings {
  const c = section(scope);
  const str = (k: string) => {
    const v = c.get<string>(k);
    return v?.trim() ? v.trim() : undefined;
  };
  return {
    template: containedPath(c, 'template', scope),
    tokenizer: containedPath(c, 'tokenizer', scope),
    templateName: str('templateName'),
    templateKwargs: c.get<Record<string, unknown>>('templateKwargs') ?? {},
    specialTokens: c.get<Record<string, string>>('specialTokens') ?? {},
    debounceMs: c.get<number>('diagnostics.debounceMs') ?? 400,
    maxDatasetLines: c.get<number>('diagnostics.maxDatasetLines') ?? 200000,
  };
}

/**
 * The template and tokenizer that render model prompts for `source`, with the template settings applied;
 * `tokenizerFallback` is where to look for tokenizer.json when piggyback.tokenizer is unset. Throws an Error whose
 * message says what is missing and which setting fixes it.
 */
export function promptTemplateFromSettings(
  source: string,
  tokenizerFallback?: string,
  scope?: vscode.Uri,
): PromptTemplate {
  const s = readSettings(scope);
  try {
    return preparePromptTemplate(source, {
      tokenizer: s.tokenizer ?? tokenizerFallback,
      kwargs: s.templateKwargs,
      name: s.templateName,
    });
  } catch (e) {
    if (e instanceof PromptTemplateError && e.missing === 'tokenizer')
      throw new Error(`${e.message} (set piggyback.tokenizer)`);
    throw e;
  }
}
