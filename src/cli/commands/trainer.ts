import * as fs from 'node:fs';
import * as path from 'node:path';
import { auditTrainerConfig, type FramedTemplate, type TrainerAudit } from '../../app/audits';
import { hasErrors } from '../../domain/findings';
import { FRAMEWORK_NAMES } from '../../domain/trainers/config';
import type { Command } from '../command';
import { UsageError } from '../options';
import { describeFindings } from '../output';

export const trainer: Command = {
  name: 'trainer',
  usage: 'piggyback trainer <axolotl.yaml|llamafactory.yaml|trl.yaml> [--model <folder>] [--json]',
  about:
    "Reads a training config (axolotl, LLaMA-Factory, TRL) and compares the template that trainer renders with the model tokenizer's own: prefix and postfix token by token, CT011 when they differ. The model is the config's base_model / model_name_or_path when that is a local folder, else --model.",
  options: ['model', 'json'],
  run(args, out) {
    const [file] = args.positionals;
    if (!file) throw new UsageError('trainer needs a training config file');
    if (!fs.existsSync(file) || !fs.statSync(file).isFile()) throw new UsageError(`no such file: ${file}`);
    const model = args.string('model');
    const a = auditTrainerConfig(path.resolve(file), { modelFolder: model && path.resolve(model) });
    if (!a) {
      process.stderr.write(
        `piggyback trainer: ${file} is not an axolotl, LLaMA-Factory or TRL training config (no base_model with datasets or chat_template, no model_name_or_path with template, dataset_name or chat_template_path)\n`,
      );
      return 1;
    }
    out(args.flag('json') ? `${JSON.stringify(trainerJson(a), null, 2)}\n` : describeTrainer(a));
    return hasErrors(a.findings) ? 1 : 0;
  },
};

function trainerJson(a: TrainerAudit) {
  const side = (f?: FramedTemplate) =>
    f && {
      label: f.label,
      prefix: { text: f.prefix.text, tokens: f.prefix.tokens.map((t) => ({ id: t.id, text: t.text })) },
      postfix: { text: f.postfix.text, tokens: f.postfix.tokens.map((t) => ({ id: t.id, text: t.text })) },
    };
  const { template, ...rest } = a.config;
  const kind =
    template.kind === 'builtin' ? { kind: 'builtin', name: template.name, version: template.version } : template;
  return {
    framework: a.config.framework,
    model: rest.model,
    template: kind,
    datasets: rest.datasets.map((d) => d.name),
    assistantOnlyLoss: rest.assistantOnlyLoss,
    tokenizer: side(a.tokenizer),
    trainer: side(a.trainer),
    differs: a.differs,
    note: a.note,
    findings: a.findings,
  };
}

function describeTrainer(a: TrainerAudit): string {
  const lines = [`${FRAMEWORK_NAMES[a.config.framework]} config, model ${a.config.model ?? '(none)'}`];
  if (a.note) lines.push(a.note);
  if (a.tokenizer && a.trainer) {
    lines.push(`trainer renders: ${a.trainer.label}`, `compared with:   ${a.tokenizer.label}`);
    for (const k of ['prefix', 'postfix'] as const) {
      lines.push('', `${k}: ${a.differs?.[k] ? 'DIFFERS' : 'same'}`);
      const [t, r] = [a.tokenizer[k].tokens, a.trainer[k].tokens];
      lines.push(`  ${'tokenizer'.padEnd(36)} trainer`);
      for (let i = 0; i < Math.max(t.length, r.length); i++) {
        const cell = (x?: { id: number; text: string }) => (x ? `${x.id} ${JSON.stringify(x.text)}` : '');
        const mark = t[i]?.id === r[i]?.id ? ' ' : '*';
        lines.push(`${mark} ${cell(t[i]).padEnd(36)} ${cell(r[i])}`);
      }
    }
  }
  lines.push('', describeFindings(a.findings));
  return `${lines.join('\n')}\n`;
}
