import * as fs from 'node:fs';
import * as path from 'node:path';
import { type PreparedTemplate, prepareTemplate } from '../../app/audits';
import { generationMarkerFix, generationProofMarkdown } from '../../app/generationMarkers';
import { templateJson } from '../../app/auditReport';
import { hasErrors } from '../../domain/findings';
import type { Command } from '../command';
import { TEMPLATE_OPTIONS, UsageError } from '../options';
import { describeFindings, describeTemplate } from '../output';

export const template: Command = {
  name: 'template',
  usage:
    'piggyback template <source> [--tokenizer <dir|tokenizer.json>] [--name <template>] [--kwargs <json>] [--json]\n       piggyback template <source> --add-generation-markers [--out <training.jinja>] [--json]',
  about:
    "Audits a chat template: its rendered prefix and postfix with token counts, and the CT findings. With --add-generation-markers, writes a training variant with {% generation %} markers (for assistant-only loss) to --out, only when its proof holds: the same text as the original on every proof conversation, and spans holding each assistant turn's content and end of turn, and no prompt; the proof is printed (exit 1 when refused).",
  options: [...TEMPLATE_OPTIONS, 'json', 'add-generation-markers', 'out'],
  run(args, out) {
    const [target] = args.positionals;
    if (!target) throw new UsageError('template needs a <source>');
    if (!fs.existsSync(target)) throw new UsageError(`no such file or folder: ${target}`);
    const p = prepareTemplate(path.resolve(target), {
      tokenizer: args.string('tokenizer'),
      name: args.string('name'),
      kwargs: args.kwargs(),
    });
    if (args.flag('add-generation-markers')) return markGeneration(p, args.string('out'), args.flag('json'), out);
    out(args.flag('json') ? `${JSON.stringify(templateJson(p), null, 2)}\n` : describeTemplate(p));
    return hasErrors(p.findings) ? 1 : 0;
  },
};

/** `template --add-generation-markers`: the proof, and the training variant written to `out` when it holds. */
function markGeneration(
  p: PreparedTemplate,
  file: string | undefined,
  json: boolean,
  out: (s: string) => void,
): number {
  if (!p.source) {
    out(describeFindings(p.findings));
    return 1;
  }
  const fix = generationMarkerFix(p.source, p.kwargs);
  if (fix.marked && file) fs.writeFileSync(file, fix.marked);
  out(json ? `${JSON.stringify(fix, null, 2)}\n` : generationProofMarkdown(p.source.name, fix));
  if (fix.marked && file && !json) out(`\nwrote ${file}\n`);
  return fix.marked ? 0 : 1;
}
