/**
 * The folder audit: every template and dataset under a folder, each dataset rendered with its template.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { inParallel } from '../parallel';
import type { DatasetReport } from '../../domain/dataset/audit';
import type { LossMode } from '../../domain/dataset/training';
import { splitOf } from '../../domain/dataset/columnar';
import { CODES, type Finding, sortFindings } from '../../domain/findings';
import type { TemplateSource } from '../../domain/template/source';
import { type PrepareOptions, type PreparedTemplate, prepareTemplate } from './template';
import { datasetFindings, reportFrom, type ScanReply, scanDatasetInWorker } from './dataset';
import { auditTrainerConfig, type TrainerAudit } from './trainer';
import { scanFolder, type AssociationSource, associate } from './workspace';

export interface FolderAudit {
  root: string;
  templates: { path: string; prepared: PreparedTemplate }[];
  datasets: {
    file: string;
    template?: string;
    association: AssociationSource;
    report: DatasetReport;
    /** The split its Hub-style name says it holds (train-00000-of-00002.parquet: train). */
    split?: string;
  }[];
  /** Training configs found, each compared with its model tokenizer's template (CT011). */
  trainers: TrainerAudit[];
  findings: Finding[];
}

export async function auditFolder(
  root: string,
  options: PrepareOptions & {
    template?: string;
    signal?: AbortSignal;
    workerFile?: string;
    lossMode?: LossMode;
    /** The folder walk's budget of entries (default 20,000); past it, WS002. */
    maxFiles?: number;
  } = {},
): Promise<FolderAudit> {
  const { workerFile, signal, template, lossMode, maxFiles, ...prepareOptions } = options;
  const scan = scanFolder(root, maxFiles);
  const templatePaths = template ? [path.resolve(root, template)] : scan.templates;
  const result: FolderAudit = { root, templates: [], datasets: [], trainers: [], findings: [] };
  // training configs first: a dataset one of them names is rendered with the template its trainer renders
  const byTrainer = new Map<string, { config: string; source: TemplateSource }>();
  for (const file of scan.trainers) {
    const t = auditTrainerConfig(file, { root });
    if (!t) continue;
    result.trainers.push(t);
    result.findings.push(...t.findings);
    for (const d of t.datasetTemplates)
      if (!byTrainer.has(path.resolve(d.file))) byTrainer.set(path.resolve(d.file), { config: file, source: d.source });
  }
  const jobs = scan.datasets.map((file) => {
    const trained = template ? undefined : byTrainer.get(path.resolve(file));
    return {
      file,
      association: trained
        ? { template: trained.config, source: 'trainer config' as const }
        : associate(file, root, templatePaths, template),
      source: trained?.source,
    };
  });
  // datasets are scanned in worker threads (a few at a time) while the templates and their tokenizers load here;
  // each job's scan is a promise the loop below takes in order (scanDatasetInWorker never rejects)
  const answered: ((reply: ScanReply | undefined) => void)[] = [];
  const scans = workerFile
    ? jobs.map(() => new Promise<ScanReply | undefined>((resolve) => answered.push(resolve)))
    : [];
  if (workerFile)
    void inParallel([...jobs.keys()], Math.max(1, Math.min(4, os.availableParallelism() - 1)), async (i) =>
      answered[i](
        await scanDatasetInWorker(
          workerFile,
          {
            file: jobs[i].file,
            template: jobs[i].association.template,
            options: { ...prepareOptions, source: jobs[i].source },
          },
          signal,
        ),
      ),
    );
  const prepared = new Map<string, PreparedTemplate>();
  const prepare = (t: string) => {
    let p = prepared.get(t);
    if (!p) {
      p = prepareTemplate(t, prepareOptions);
      prepared.set(t, p);
    }
    return p;
  };
  for (const t of templatePaths) {
    const p = prepare(t);
    result.templates.push({ path: t, prepared: p });
    result.findings.push(...p.findings);
  }
  for (const [i, { file, association: a, source }] of jobs.entries()) {
    if (signal?.aborted) break;
    const p = source
      ? prepareTemplate(a.template!, { ...prepareOptions, source })
      : a.template
        ? prepare(a.template)
        : { findings: [], kwargs: {} };
    const scanned = await scans[i];
    // cancelled while the worker scanned (it was stopped): no scan in this thread either
    if (signal?.aborted) break;
    const report = await reportFrom(scanned, file, p, lossMode);
    result.datasets.push({ file, template: a.template, association: a.source, report, split: splitOf(file) });
    result.findings.push(...datasetFindings(report));
    if (a.refused && !result.findings.some((f) => f.code === 'WS001' && f.message === a.refused!.message))
      result.findings.push(a.refused);
  }
  // a walk that stopped at its budget says so: what it did not look at is not "none found"
  if (scan.truncated)
    result.findings.push({
      code: 'WS002',
      severity: 'warning',
      message: `the folder has more than ${scan.truncated.maxFiles.toLocaleString('en')} files and folders; the audit looked at the first ${scan.truncated.maxFiles.toLocaleString('en')} (in name order) and none past them. Audit the model and data folders themselves (piggyback audit <folder>). ${CODES.WS002.why}`,
      file: root,
      line: 1,
      column: 1,
      endLine: 1,
      endColumn: 2,
    });
  sortFindings(result.findings);
  return result;
}
