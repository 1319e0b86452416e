import * as fs from 'node:fs';
import * as path from 'node:path';
import { prepareTemplate } from '../../app/audits';
import { templateJson } from '../../app/auditReport';
import { hasErrors } from '../../domain/findings';
import type { Command } from '../command';
import { TEMPLATE_OPTIONS, UsageError } from '../options';
import { describeTemplate } from '../output';

export const template: Command = {
  name: 'template',
  usage:
    'piggyback template <source> [--tokenizer <dir|tokenizer.json>] [--name <template>] [--kwargs <json>] [--json]',
  about: 'Audits a chat template: its rendered prefix and postfix with token counts, and the CT findings.',
  options: [...TEMPLATE_OPTIONS, 'json'],
  run(args, out) {
    const [target] = args.positionals;
    if (!target) throw new UsageError('template needs a <source>');
    if (!fs.existsSync(target)) throw new UsageError(`no such file or folder: ${target}`);
    const p = prepareTemplate(path.resolve(target), {
      tokenizer: args.string('tokenizer'),
      name: args.string('name'),
      kwargs: args.kwargs(),
    });
    out(args.flag('json') ? `${JSON.stringify(templateJson(p), null, 2)}\n` : describeTemplate(p));
    return hasErrors(p.findings) ? 1 : 0;
  },
};
