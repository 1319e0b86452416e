import * as fs from 'node:fs';
import * as path from 'node:path';
import { compareMarkdown, loadRunPair } from '../../app/eval/evalReport';
import { MergeError, type MergeResult, mergeRuns } from '../../app/eval/merge';
import type { Command } from '../command';
import { UsageError } from '../options';
import { reportRun } from './eval';

export const merge: Command = {
  name: 'merge',
  usage: 'piggyback merge <shard-run-dir>... --out <dir> [--sarif <out.sarif>] [--inspect-log <log.json>]',
  about:
    "Joins the run folders of an eval's shards (piggyback eval --shard i/N) into one run folder: the run, summary, reports and SARIF one unsharded run would have written. Refuses shards of different checkpoints, template, conditions, settings or probe set, naming the difference; keeps a row given twice once; names the probes no shard finished (exit 1; re-run eval without --shard on the merged folder to finish them).",
  options: ['out', 'sarif', 'inspect-log'],
  run(args, out) {
    const dirs = args.positionals;
    const dir = args.string('out');
    if (dirs.length === 0 || !dir) throw new UsageError('merge needs shard run folders and --out <dir>');
    let merged: MergeResult;
    try {
      merged = mergeRuns(dirs, dir);
    } catch (e) {
      if (e instanceof MergeError) {
        process.stderr.write(`piggyback merge: ${e.message}\n`);
        return 1;
      }
      throw e;
    }
    for (const { dir: d, problem } of merged.problems)
      process.stderr.write(`${path.join(d, 'results.jsonl')}:${problem.line}: ${problem.message}\n`);
    const count = merged.manifest.probes.count;
    const { shards, absentShards: absent, missing } = merged;
    process.stderr.write(
      `merged shards ${shards.join(', ')} of ${shards.length + absent.length} into ${dir}: ${merged.rows} rows for ${count} probes${merged.duplicates ? ` (${merged.duplicates} rows given twice, kept once)` : ''}\n`,
    );
    if (absent.length)
      process.stderr.write(`no folder holds shard${absent.length > 1 ? 's' : ''} ${absent.join(', ')}\n`);
    if (missing.length)
      process.stderr.write(
        `${missing.length} of ${count} probes are not finished: ${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ', ...' : ''}; run the same eval without --shard with --out ${dir} to finish them\n`,
      );
    return reportRun(dir, args, out) || (missing.length ? 1 : 0);
  },
};

export const compare: Command = {
  name: 'compare',
  usage: 'piggyback compare <run-dir> <run-dir> [--md <out.md>]',
  about: 'Compares two eval runs side by side.',
  options: ['md'],
  run(args, out) {
    const dirs = args.positionals;
    if (dirs.length !== 2) throw new UsageError('compare needs two run folders');
    let runs: ReturnType<typeof loadRunPair>;
    try {
      runs = loadRunPair(dirs[0], dirs[1]);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const md = compareMarkdown(...runs);
    const file = args.string('md');
    if (file) fs.writeFileSync(file, md);
    out(md);
    return 0;
  },
};
