/**
 * Prompt templates: a template with its tokenizer and audit, for the audit and for model prompts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkpointFolder } from '../../domain/checkpoints';
import type { Finding } from '../../domain/findings';
import {
  AUDIT_CLOCK,
  auditTemplate,
  loadErrorFinding,
  SAMPLE_QUERY,
  type TemplateAudit,
} from '../../domain/template/audit';
import { ChatTemplate, type RenderOptions } from '../../domain/template/render';
import { segmentPrompt } from '../../domain/template/segments';
import { loadTemplate, specialTokensOf, TemplateLoadError, type TemplateSource } from '../../domain/template/source';
import { isTrainerConfigPath, trainerTemplateSource } from './trainerTemplate';
import {
  findTokenizerFile,
  type LoadedTokenizer,
  loadTokenizerCached,
  tokenizerConfigOf,
} from '../../domain/tokenizer';

export interface PrepareOptions {
  /** tokenizer.json or a folder holding it; default: beside the template. */
  tokenizer?: string;
  /** Named template in a list-valued chat_template. */
  name?: string;
  /** Template kwargs the trainer uses (enable_thinking, date_string, ...). */
  kwargs?: Record<string, unknown>;
  /** Special tokens for a bare .jinja with no tokenizer_config beside it. */
  specialTokens?: Record<string, string>;
  /** Unsaved text of the template file (editor buffers). */
  text?: string;
  /** A template already loaded (a trainer's built-in template): used as it is, its tokenizer found in its folder. */
  source?: TemplateSource;
  /** The workspace folder: a training config's model or template outside it is not read (the editor sets it). */
  root?: string;
}

export interface PreparedTemplate {
  source?: TemplateSource;
  template?: ChatTemplate;
  tokenizer?: LoadedTokenizer;
  audit?: TemplateAudit;
  /** Findings when loading failed (the audit's findings otherwise). */
  findings: Finding[];
  kwargs: Record<string, unknown>;
}

/** A template and its tokenizer, audited (the ten CT checks): what the editor's diagnostics and `template` show. */
export function prepareTemplate(templatePath: string, options: PrepareOptions = {}): PreparedTemplate {
  const loaded = loadTemplateAndTokenizer(templatePath, options);
  if (!loaded.source) return loaded;
  const { source, tokenizer, kwargs, findings } = loaded;
  const audit = auditTemplate(source, { tokenizer, kwargs });
  return { source, template: audit.template, tokenizer, audit, findings: [...findings, ...audit.findings], kwargs };
}

/**
 * Loads a template source and finds its tokenizer; no audit (findings: load and tokenizer problems only). With
 * `tokenizer: false` the tokenizer is not built (a second for a 150k vocabulary): only its tokenizer_config.json is
 * read, for the special tokens a bare .jinja takes from it, as a loaded tokenizer would give them.
 */
export function loadTemplateAndTokenizer(
  templatePath: string,
  options: PrepareOptions,
  load: { tokenizer: boolean } = { tokenizer: true },
): PreparedTemplate {
  const kwargs = options.kwargs ?? {};
  let source: TemplateSource;
  try {
    source =
      options.source ??
      // a training config (axolotl, LLaMA-Factory, TRL) is the template its trainer renders, with the model's tokenizer
      (isTrainerConfigPath(templatePath, options.text)
        ? trainerTemplateSource(templatePath, options.text, options.root)
        : loadTemplate(templatePath, { name: options.name, specialTokens: options.specialTokens }, options.text));
  } catch (e) {
    if (e instanceof TemplateLoadError) return { findings: [loadErrorFinding(e)], kwargs };
    throw e;
  }
  let tokenizer: LoadedTokenizer | undefined;
  const findings: Finding[] = [];
  const tokenizerFile = findTokenizerFile(options.tokenizer, source.folder);
  if (tokenizerFile && !load.tokenizer) {
    const special = specialTokensOf(tokenizerConfigOf(tokenizerFile));
    for (const [k, v] of Object.entries({ bos_token: special.bos_token, eos_token: special.eos_token })) {
      if (v !== undefined && source.specialTokens[k] === undefined) source.specialTokens[k] = v;
    }
  } else if (tokenizerFile) {
    try {
      tokenizer = loadTokenizerCached(tokenizerFile);
      // a bare .jinja takes its special tokens from the chosen tokenizer's config when nothing else gave them
      for (const [k, v] of Object.entries({ bos_token: tokenizer.bosToken, eos_token: tokenizer.eosToken })) {
        if (v !== undefined && source.specialTokens[k] === undefined) source.specialTokens[k] = v;
      }
    } catch (e) {
      findings.push({
        code: 'CT009',
        severity: 'warning',
        message: `cannot load the tokenizer ${tokenizerFile}: ${(e as Error).message}; token counts are unavailable`,
        file: tokenizerFile,
        line: 1,
        column: 1,
        endLine: 1,
        endColumn: 2,
      });
    }
  } else if (options.tokenizer) {
    findings.push({
      code: 'CT009',
      severity: 'warning',
      message: `no tokenizer.json at ${options.tokenizer}; token counts are unavailable`,
      file: source.file,
      line: 1,
      column: 1,
      endLine: 1,
      endColumn: 2,
    });
  }
  return { source, tokenizer, findings, kwargs };
}

/** A prepared template that can render and tokenize prompts (what the model commands, evals and exports need). */
export type PromptTemplate = PreparedTemplate & { template: ChatTemplate; tokenizer: LoadedTokenizer };

/** Why a template cannot serve model prompts: it did not load, or no tokenizer.json was found for it. */
export class PromptTemplateError extends Error {
  constructor(
    readonly source: string,
    readonly missing: 'template' | 'tokenizer',
    readonly prepared: PreparedTemplate,
  ) {
    super(
      `cannot render prompts with ${source}: ${missing === 'tokenizer' ? 'no tokenizer.json found' : (prepared.findings[0]?.message ?? 'the template did not load')}`,
    );
    this.name = 'PromptTemplateError';
  }
}

/**
 * Where a checkpoint pair's chat template and tokenizer come from: the finetuned checkpoint when it has its own
 * (a tokenizer re-saved with the finetune), else the base (a PEFT adapter folder usually has neither).
 */
export function pairTemplateSource(finetuned: string, base: string | undefined): string {
  const hasTemplate = (dir: string) =>
    ['tokenizer_config.json', 'chat_template.jinja', 'chat_template.json', 'tokenizer.json'].some((f) =>
      fs.existsSync(path.join(dir, f)),
    );
  // a checkpoint given as an .onnx file or an onnx/ folder keeps its tokenizer files with its config.json
  const ft = checkpointFolder(finetuned);
  const b = base === undefined ? undefined : checkpointFolder(base);
  return b && !hasTemplate(ft) && hasTemplate(b) ? b : ft;
}

/** prepareTemplate for model prompts: throws PromptTemplateError unless both the template and a tokenizer load. */
/**
 * A template ready to render model prompts (drift, patch, evals, the TReFT export): loaded, parsed and checked with
 * one segmented render, without the audit's ten checks (the editor and `template` run those).
 */
export function preparePromptTemplate(source: string, options: PrepareOptions = {}): PromptTemplate {
  const p = loadTemplateAndTokenizer(source, options);
  if (p.source) {
    const failure = (message: string): Finding => ({
      code: 'CT009',
      severity: 'error',
      message,
      file: p.source!.file,
      line: 1,
      column: 1,
      endLine: 1,
      endColumn: 2,
    });
    try {
      const template = new ChatTemplate(p.source.text);
      segmentPrompt(template, { ...renderOptions(p), query: SAMPLE_QUERY });
      p.template = template;
    } catch (e) {
      p.findings.push(failure(`The template cannot render a one-turn prompt: ${(e as Error).message}`));
    }
  }
  if (!p.template) throw new PromptTemplateError(source, 'template', p);
  if (!p.tokenizer) throw new PromptTemplateError(source, 'tokenizer', p);
  return p as PromptTemplate;
}

/**
 * How a prepared template renders everywhere (audits, model prompts, exports): its special tokens as template
 * variables (bos_token, ...), the trainer's kwargs, and the fixed audit clock for strftime_now.
 */
export function renderOptions(prepared: PreparedTemplate): RenderOptions {
  return { specialTokens: prepared.source?.specialTokens, kwargs: prepared.kwargs, now: AUDIT_CLOCK };
}
