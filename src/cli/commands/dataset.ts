import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  auditDatasetFile,
  auditFolder,
  datasetFindings,
  datasetRows,
  type PreparedTemplate,
  type PrepareOptions,
  prepareTemplate,
  renderOptions,
  rowLocation,
} from '../../app/audits';
import { datasetJson, templateJson } from '../../app/auditReport';
import { normaliseRow } from '../../domain/dataset/formats';
import { readLines } from '../../domain/dataset/lines';
import {
  auditLoss,
  contextLength,
  LOSS_MODES,
  type LossMode,
  resolveLoss,
  trainingView,
} from '../../domain/dataset/training';
import { assertRegularFile } from '../../domain/files';
import { hasErrors } from '../../domain/findings';
import { type Command, SCAN_WORKER } from '../command';
import { type Args, TEMPLATE_OPTIONS, UsageError } from '../options';
import { describeFindings, describeSurface, paint } from '../output';

export const dataset: Command = {
  name: 'dataset',
  usage:
    'piggyback dataset <file.jsonl|.parquet|.arrow|.csv|folder> --template <source> [--tokenizer ...] [--kwargs <json>] [--loss auto|assistant-only|completion-only|completion|all] [--row N] [--json]',
  about:
    "Audits a finetuning set against a template: the piggyback surface and the DS findings, located by row. A folder (datasets.save_to_disk, a Hub download) is audited file by file, each with its split. --loss says how you train (DS012 is a warning under completion-only). With --row N, the training view of row N: every token with its segment and whether it carries loss under the trainer's masking (default auto: TRL SFTTrainer's, the completion for prompt/completion rows and every token otherwise), and the length check against the model's context.",
  options: ['template', ...TEMPLATE_OPTIONS, 'json', 'row', 'loss'],
  async run(args, out) {
    const [target] = args.positionals;
    const templateSource = args.path('template');
    if (!target) throw new UsageError('dataset needs a <file.jsonl>');
    if (!templateSource) throw new UsageError('dataset needs --template <source>');
    if (!fs.existsSync(target)) throw new UsageError(`no such file: ${target}`);
    const common = { tokenizer: args.string('tokenizer'), name: args.string('name'), kwargs: args.kwargs() };
    const lossMode = auditLoss(args.choice('loss') ?? 'auto');
    const row = args.number('row');
    // a dataset folder (datasets.save_to_disk, a Hub download): every dataset file in it, each with its split
    if (fs.statSync(target).isDirectory() && row === undefined)
      return datasetFolder(path.resolve(target), templateSource, { ...common, lossMode }, args, out);
    try {
      assertRegularFile(target);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (row !== undefined) return trainingViewOf(target, row, prepareTemplate(templateSource, common), args, out);
    const { prepared: p, report } = await auditDatasetFile(path.resolve(target), templateSource, {
      ...common,
      workerFile: SCAN_WORKER,
      lossMode,
    });
    const findings = [...p.findings.filter((f) => f.severity === 'error'), ...datasetFindings(report)];
    if (args.flag('json')) out(`${JSON.stringify({ ...datasetJson(report), template: templateJson(p) }, null, 2)}\n`);
    else out(describeFindings(findings) + describeSurface(report));
    return hasErrors(findings) ? 1 : 0;
  },
};

/** `dataset <folder>`: the dataset files under a folder audited with one template, each with its split. */
async function datasetFolder(
  root: string,
  template: string,
  common: PrepareOptions & { lossMode?: LossMode },
  args: Args,
  out: (s: string) => void,
): Promise<number> {
  const a = await auditFolder(root, { ...common, template, workerFile: SCAN_WORKER });
  if (a.datasets.length === 0)
    throw new UsageError(`${root} holds no dataset files (.jsonl, .parquet, .arrow, or .csv with chat columns)`);
  const templateErrors = a.templates.flatMap((t) => t.prepared.findings.filter((f) => f.severity === 'error'));
  const findings = [...templateErrors, ...a.datasets.flatMap((d) => datasetFindings(d.report))];
  if (args.flag('json'))
    out(
      `${JSON.stringify(
        {
          root,
          datasets: a.datasets.map((d) => ({ split: d.split ?? null, ...datasetJson(d.report) })),
          template: templateJson(a.templates[0].prepared),
        },
        null,
        2,
      )}\n`,
    );
  else {
    const parts = a.datasets.map(
      (d) => `${path.relative(root, d.file)}${d.split ? ` (split ${d.split})` : ''}\n${describeSurface(d.report)}`,
    );
    out(describeFindings(findings) + parts.join('\n'));
  }
  return hasErrors(findings) ? 1 : 0;
}

/** dataset --row N: the training view of one row (its tokens, segments and loss mask) and the length check. */
async function trainingViewOf(
  file: string,
  n: number,
  p: PreparedTemplate,
  args: Args,
  out: (s: string) => void,
): Promise<number> {
  const setting = args.choice('loss') ?? 'auto';
  if (!p.template || !p.tokenizer || !p.source) {
    process.stderr.write(describeFindings(p.findings));
    throw new UsageError('the training view needs a template that renders and its tokenizer.json (see above)');
  }
  let line: string | undefined;
  let i = 0;
  // row N: the Nth JSONL line, Parquet or Arrow row, CSV record or JSON-array example (located where it starts)
  const starts: Parameters<typeof rowLocation>[0] = [];
  for await (const l of readLines(datasetRows(file, starts))) {
    if (++i === n) {
      line = l.text;
      break;
    }
  }
  if (line === undefined) throw new UsageError(`${file} has ${i} rows, no row ${n}`);
  const at = rowLocation(starts, n);
  const where = `${file}:${at.line}:${at.column}`;
  let view: ReturnType<typeof trainingView>;
  let loss: ReturnType<typeof resolveLoss>;
  try {
    const row = normaliseRow(JSON.parse(line));
    loss = resolveLoss(setting, row.format);
    view = trainingView(
      p.template,
      p.tokenizer,
      row.messages,
      renderOptions(p),
      loss.mode,
      contextLength(p.source.folder, p.source.config),
    );
  } catch (e) {
    process.stderr.write(`${where}: ${(e as Error).message}\n`);
    return 1;
  }
  if (args.flag('json')) {
    out(`${JSON.stringify({ file, row: n, ...view }, null, 2)}\n`);
    return view.problems.length ? 1 : 0;
  }
  const lines = [
    `row ${n} of ${file}, rendered with ${p.source.file}; loss: ${view.mode} (${loss.why}; --loss ${LOSS_MODES.join('|')} to change), ${view.lossTokens} of ${view.tokens.length} tokens${view.maxLength ? ` (context ${view.maxLength})` : ''}`,
    `${'#'.padStart(5)}  ${'id'.padEnd(8)}${'segment'.padEnd(10)}loss  token`,
    ...view.tokens.map(
      (t, k) =>
        `${String(k).padStart(5)}  ${String(t.id).padEnd(8)}${t.segment.padEnd(10)}${t.loss ? paint('32', 'yes ') : '    '}  ${JSON.stringify(t.text)}`,
    ),
    ...view.problems.map((m) => `${where}: ${paint('33', 'warning')} training view: ${m}`),
  ];
  out(`${lines.join('\n')}\n`);
  return view.problems.length ? 1 : 0;
}
