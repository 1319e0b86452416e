import * as fs from 'node:fs';
import * as path from 'node:path';
import { renderOptions } from '../../app/audits';
import { LensSession } from '../../app/session';
import { type TreftExportResult, treftOutputProblem, writeTreftExport } from '../../app/treft';
import type { Command } from '../command';
import { loadParams, loadWithProgress, modelPromptTemplate, withHost } from '../models';
import { HOST_OPTIONS, TEMPLATE_OPTIONS, UsageError } from '../options';

export const treftExport: Command = {
  name: 'treft-export',
  usage: 'piggyback treft-export <train.jsonl> --out <dir> [--base <dir>] [--template <source>]',
  about: "Writes the TReFT data for a finetuning set: prefix positions, the base model's prefix K/V, a recipe.",
  options: ['out', 'base', 'template', ...TEMPLATE_OPTIONS, ...HOST_OPTIONS],
  async run(args, out) {
    const [dataset] = args.positionals;
    const dir = args.string('out');
    const base = args.string('base');
    if (!dataset || !dir) throw new UsageError('treft-export needs <train.jsonl> and --out <dir>');
    if (!fs.existsSync(dataset)) throw new UsageError(`no such file: ${dataset}`);
    const source = args.string('template') ?? base;
    if (!source)
      throw new UsageError('treft-export needs --template <source> or --base <dir> (whose template the trainer uses)');
    const p = modelPromptTemplate(args, source);
    const common = {
      dataset: path.resolve(dataset),
      template: p.template,
      templateFile: p.source?.file ?? '',
      tokenizer: p.tokenizer,
      render: renderOptions(p),
      out: dir,
    };
    const overwrite = treftOutputProblem(dir, [common.dataset, common.templateFile]);
    if (overwrite) throw new UsageError(overwrite);
    const report = (r: TreftExportResult): number => {
      const groups = r.positions.prefixes
        .map((g, i) => `  prefix ${i}: ${g.ids.length} tokens, ${g.rows} rows`)
        .join('\n');
      out(
        `${r.positions.rows.length - r.skipped} rows with positions, ${r.skipped} skipped\n${groups}\nwrote ${r.files.join(', ')}\n`,
      );
      for (const row of r.positions.rows.filter((x) => x.error).slice(0, 10))
        process.stderr.write(`${dataset}:${row.line}: ${row.error}\n`);
      return r.skipped === r.positions.rows.length ? 1 : 0;
    };
    if (!base) return report(await writeTreftExport(common));
    const params = loadParams(args, base, base);
    return withHost(async (host) => {
      const loaded = await loadWithProgress(host, params);
      return report(await new LensSession(host, loaded, p).treftExport({ dataset: common.dataset, out: dir }));
    });
  },
};
