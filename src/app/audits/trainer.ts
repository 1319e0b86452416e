/**
 * A trainer config against its model's tokenizer: the template the trainer renders (src/domain/trainers/config.ts)
 * beside the tokenizer's own, prefix and postfix token by token. A difference is CT011, located on the key that
 * chose the template: the finetune was trained on (and so lives in) the trainer's prefix, not the one every
 * inference stack renders from the tokenizer.
 */
import * as path from 'node:path';
import { FILE_LIMITS, insideRoot, readTextChecked } from '../../domain/files';
import { CODES, type Finding } from '../../domain/findings';
import { LineIndex } from '../../domain/json';
import { AUDIT_CLOCK, SAMPLE_QUERY } from '../../domain/template/audit';
import { ChatTemplate } from '../../domain/template/render';
import { segmentPrompt } from '../../domain/template/segments';
import { TemplateLoadError, type TemplateSource } from '../../domain/template/source';
import type { LoadedTokenizer, Token } from '../../domain/tokenizer';
import {
  FRAMEWORK_NAMES,
  readTrainerConfig,
  type TrainerConfig,
  TrainerConfigError,
} from '../../domain/trainers/config';
import { loadTemplateAndTokenizer } from './template';
import { datasetFile, localModel, trainerSource } from './trainerTemplate';

export interface FramedTemplate {
  /** In words: "the tokenizer's (models/qwen3/tokenizer_config.json)", "axolotl 0.18.0's built-in "llama3"". */
  label: string;
  source: TemplateSource;
  prefix: { text: string; tokens: Token[] };
  postfix: { text: string; tokens: Token[] };
}

export interface TrainerAudit {
  config: TrainerConfig;
  /** The model folder whose tokenizer the trainer loads (undefined: a Hub id with no local folder). */
  modelFolder?: string;
  tokenizer?: FramedTemplate;
  trainer?: FramedTemplate;
  /** Whether the trainer renders another prefix or postfix than the tokenizer's template (undefined: not compared). */
  differs?: { prefix: boolean; postfix: boolean };
  /** Why nothing was compared, in words. */
  note?: string;
  /**
   * The config's datasets that are files here, each with the template its trainer renders it with (as a loaded
   * source, its folder the model's, so its tokenizer is found): the dataset audit renders them so.
   */
  datasetTemplates: { file: string; label: string; source: TemplateSource }[];
  findings: Finding[];
}

/** Reads and audits a trainer config; undefined when the file is not one. */
export function auditTrainerConfig(
  file: string,
  /** `root`: the workspace folder; a model or template path the config names outside it is not read (WS001). */
  options: { modelFolder?: string; text?: string; root?: string } = {},
): TrainerAudit | undefined {
  const text = options.text ?? readTextChecked(file, FILE_LIMITS.config);
  const lines = new LineIndex(text);
  const at = (start: number, end: number, code: string, severity: Finding['severity'], message: string): Finding => {
    const [a, b] = [lines.position(start), lines.position(Math.max(start, end))];
    return { code, severity, message, file, line: a.line, column: a.column, endLine: b.line, endColumn: b.column };
  };
  let config: TrainerConfig | undefined;
  try {
    config = readTrainerConfig(file, text);
  } catch (e) {
    if (!(e instanceof TrainerConfigError)) throw e;
    return {
      config: {
        file,
        framework: 'axolotl',
        template: { kind: 'tokenizer' },
        datasets: [],
        templateAt: { start: 0, end: 0 },
        problems: [],
      },
      findings: [at(e.offset, e.offset, 'CT011', 'error', `${path.basename(file)}: ${e.message}`)],
      note: e.message,
      datasetTemplates: [],
    };
  }
  if (!config) return undefined;
  const framework = FRAMEWORK_NAMES[config.framework];
  const findings = config.problems.map((p) => at(p.start, p.end, 'CT011', 'warning', p.message));
  const outside = (p: string) => options.root !== undefined && !insideRoot(options.root, p);
  const refuse = (p: string, what: string) =>
    at(
      config.templateAt.start,
      config.templateAt.end,
      'WS001',
      'error',
      `${what} ${p} is outside the workspace folder ${options.root}: not read`,
    );
  let modelFolder = options.modelFolder ?? localModel(config);
  if (modelFolder && outside(modelFolder)) {
    findings.push(refuse(modelFolder, 'the model folder'));
    modelFolder = undefined;
  }
  const t = config.template;
  if ((t.kind === 'file' || t.kind === 'folder') && outside(t.path))
    return {
      config,
      findings: [...findings, refuse(t.path, 'the chat template')],
      note: 'the template is outside the workspace',
      datasetTemplates: [],
    };
  if (!modelFolder)
    return {
      config,
      findings,
      note: `the model ${config.model ?? '(none named)'} is not a folder beside the config: its tokenizer's template cannot be compared (give the model folder)`,
      datasetTemplates: [],
    };
  const loaded = loadTemplateAndTokenizer(modelFolder, {});
  if (!loaded.source)
    return {
      config,
      modelFolder,
      findings: [...findings, ...loaded.findings],
      note: 'the model folder has no chat template',
      datasetTemplates: [],
    };
  const tokenizer = framed(`the tokenizer's (${path.basename(modelFolder)})`, loaded.source, loaded.tokenizer);
  let trainer: FramedTemplate & { label: string };
  try {
    const t = trainerSource(config.template, loaded.source);
    trainer = framed(t.label, t.source, loaded.tokenizer);
  } catch (e) {
    const message = e instanceof TemplateLoadError || e instanceof Error ? e.message : String(e);
    return {
      config,
      modelFolder,
      tokenizer,
      datasetTemplates: [],
      findings: [
        ...findings,
        at(
          config.templateAt.start,
          config.templateAt.end,
          'CT011',
          'warning',
          `${framework}'s template cannot be rendered: ${message}`,
        ),
      ],
    };
  }
  const same = (a: FramedTemplate['prefix'], b: FramedTemplate['prefix']) =>
    a.text === b.text && a.tokens.map((t) => t.id).join() === b.tokens.map((t) => t.id).join();
  const differs = {
    prefix: !same(tokenizer.prefix, trainer.prefix),
    postfix: !same(tokenizer.postfix, trainer.postfix),
  };
  if (differs.prefix || differs.postfix) {
    const parts = (['prefix', 'postfix'] as const)
      .filter((k) => differs[k])
      .map((k) => `the ${k} is ${show(trainer[k])} in training, ${show(tokenizer[k])} from the tokenizer's template`);
    findings.push(
      at(
        config.templateAt.start,
        config.templateAt.end,
        'CT011',
        'warning',
        `${framework} renders ${trainer.label}, not the tokenizer's template: ${parts.join('; ')}. ${CODES.CT011.why}`,
      ),
    );
  }
  const datasetTemplates: TrainerAudit['datasetTemplates'] = [];
  for (const d of config.datasets) {
    const f = datasetFile(config, d.name);
    if (!f || outside(f)) continue;
    try {
      const s = d.template === config.template ? trainer : trainerSource(d.template, loaded.source);
      // the trainer's template, found beside the model: its tokenizer is the model's
      datasetTemplates.push({ file: f, label: s.label, source: { ...s.source, folder: modelFolder } });
    } catch {
      // a dataset's own template that does not load: its dataset is audited as if no trainer config named it
    }
  }
  return { config, modelFolder, tokenizer, trainer, differs, datasetTemplates, findings };
}

const show = (s: { text: string; tokens: Token[] }) =>
  `${JSON.stringify(s.text.length > 80 ? `${s.text.slice(0, 79)}\u2026` : s.text)} (${s.tokens.length} tokens)`;

function framed(label: string, source: TemplateSource, tokenizer?: LoadedTokenizer): FramedTemplate {
  const seg = segmentPrompt(
    new ChatTemplate(source.text),
    { query: SAMPLE_QUERY, specialTokens: source.specialTokens, addGenerationPrompt: true, now: AUDIT_CLOCK },
    tokenizer,
  );
  return {
    label,
    source,
    prefix: { text: seg.prefix.text, tokens: seg.prefix.tokens },
    postfix: { text: seg.postfix.text, tokens: seg.postfix.tokens },
  };
}

/** The comparison as Markdown (the editor's page): what the trainer renders, and each side's tokens. */
export function trainerMarkdown(a: TrainerAudit, name: string): string {
  const out = [`# ${name}: the template ${FRAMEWORK_NAMES[a.config.framework]} renders`, ''];
  out.push(
    `Model: \`${a.config.model ?? '(none named)'}\`${a.modelFolder ? ` (tokenizer from ${path.basename(a.modelFolder)})` : ''}`,
    '',
  );
  if (a.note) out.push(a.note, '');
  if (a.tokenizer && a.trainer) {
    out.push(
      `The trainer renders **${a.trainer.label}**; inference and every measurement from the tokenizer use **${a.tokenizer.label}**.`,
      '',
    );
    const cell = (t?: Token) => (t ? `\`${JSON.stringify(t.text).slice(1, -1).replace(/\|/g, '\\|')}\` #${t.id}` : '');
    for (const k of ['prefix', 'postfix'] as const) {
      out.push(`## ${k}: ${a.differs?.[k] ? 'differs' : 'the same'}`, '', '| | tokenizer | trainer |', '|---|---|---|');
      const [t, r] = [a.tokenizer[k].tokens, a.trainer[k].tokens];
      for (let i = 0; i < Math.max(t.length, r.length); i++)
        out.push(`| ${t[i]?.id === r[i]?.id ? '' : '\u2260'} | ${cell(t[i])} | ${cell(r[i])} |`);
      out.push('');
    }
  }
  if (a.findings.length)
    out.push('## Findings', '', ...a.findings.map((f) => `- **${f.code}** (${f.severity}): ${f.message}`), '');
  return out.join('\n');
}
