import * as fs from 'node:fs';
import * as path from 'node:path';
import { evalMarkdown, writeRunReports } from '../../app/eval/evalReport';
import { Judge, JudgeConfigError } from '../../app/eval/judge';
import { ProbeFileError } from '../../app/eval/probes';
import { type EvalPlan, EvalRequestError, parseShard, planEval } from '../../app/eval/request';
import { writeInspectLog } from '../../app/eval/inspectLog';
import { EvalSettingsError } from '../../app/eval/run';
import { LensSession } from '../../app/session';
import { hasErrors } from '../../domain/findings';
import type { Command } from '../command';
import { loadParams, loadWithProgress, modelPromptTemplate, withHost } from '../models';
import { type Args, HOST_OPTIONS, TEMPLATE_OPTIONS, UsageError } from '../options';
import { describeFindings } from '../output';

export const evalRun: Command = {
  name: 'eval',
  usage: `piggyback eval --base <dir> --finetuned <dir> --out <dir> [--probes <file.jsonl|.yaml> ...] [--dataset <train.jsonl>]
       [--other-dataset <other.jsonl>] [--extra name=<dir>] [--max-new-tokens N] [--temperature T --samples N] [--seed N]
       [--perturb-trials N] [--layer-sweep] [--resume] [--judge-endpoint <url> --judge-model <id> [--judge-timeout <s>]
       [--judge-concurrency 4]] [--sarif <out.sarif>] [--inspect-log <log.json>] [--shard i/N]`,
  about:
    'Runs probes under every condition (base, finetuned, patched, perturbed) into a run folder; re-running resumes it. With --shard i/N, only share i (counted from 0) of N: each probe belongs to the shard a hash of its id names, so shards are stable when probes are added; run the N shards anywhere (a Slurm array, a Kubernetes Indexed Job) and join them with merge.',
  options: [
    'base',
    'finetuned',
    'out',
    'probes',
    'dataset',
    'other-dataset',
    'extra',
    'max-new-tokens',
    'temperature',
    'samples',
    'seed',
    'perturb-trials',
    'layer-sweep',
    'resume',
    'judge-endpoint',
    'judge-model',
    'judge-timeout',
    'judge-concurrency',
    'sarif',
    'inspect-log',
    'shard',
    'template',
    ...TEMPLATE_OPTIONS,
    ...HOST_OPTIONS,
  ],
  async run(args, out) {
    const base = args.string('base');
    const finetuned = args.string('finetuned');
    const dir = args.string('out');
    if (!base || !finetuned || !dir) throw new UsageError('eval needs --base <dir>, --finetuned <dir> and --out <dir>');
    let plan: EvalPlan;
    try {
      plan = planEval({
        probeFiles: args.strings('probes'),
        dataset: args.string('dataset'),
        otherDatasets: args.strings('other-dataset'),
        extra: extraCheckpoints(args),
        maxNewTokens: args.number('max-new-tokens'),
        temperature: args.number('temperature'),
        samples: args.number('samples'),
        seed: args.number('seed'),
        perturbationTrials: args.number('perturb-trials'),
        layerSweep: args.flag('layer-sweep'),
        judge: judgeOf(args),
        judgeConcurrency: args.number('judge-concurrency'),
        shard: args.string('shard') === undefined ? undefined : parseShard(args.string('shard')!),
      });
    } catch (e) {
      if (e instanceof ProbeFileError) {
        process.stderr.write(`piggyback: ${e.message}\n`);
        return 1;
      }
      if (e instanceof EvalRequestError) throw new UsageError(e.message);
      throw e;
    }
    const params = loadParams(args, base, finetuned, plan.extra);
    const p = modelPromptTemplate(args, finetuned, base);
    return withHost(async (host) => {
      const loaded = await loadWithProgress(host, params);
      try {
        const run = await new LensSession(host, loaded, p).eval({
          ...plan.options,
          probes: plan.probes,
          shard: plan.shardOf,
          conditions: plan.conditions(loaded.finetuned.layers),
          out: dir,
          resume: args.flag('resume'),
          // a terminal gets one updating line; a CI log a line every 10 probes
          onProbe: (i, n) =>
            process.stderr.isTTY
              ? process.stderr.write(`\rprobe ${i + 1}/${n}`)
              : (i + 1) % 10 === 0 && process.stderr.write(`probe ${i + 1}/${n}\n`),
        });
        for (const pr of run.problems)
          process.stderr.write(`\n${path.join(dir, 'results.jsonl')}:${pr.line}: ${pr.message}`);
      } catch (e) {
        if (e instanceof EvalSettingsError) {
          process.stderr.write(`piggyback: ${e.message}\n`);
          return 2;
        }
        if (e instanceof JudgeConfigError) {
          process.stderr.write(
            `\npiggyback: ${e.message} (finished probes are kept in ${dir}; fix the judge and re-run to resume)\n`,
          );
          return 1;
        }
        throw e;
      }
      process.stderr.write('\n');
      return reportRun(dir, args, out);
    });
  },
};

/**
 * Writes a run folder's reports (summary, Markdown, HTML, SARIF, and the Inspect log when asked), prints them; exit 1
 * on an error-level finding.
 */
export function reportRun(dir: string, args: Args, out: (s: string) => void): number {
  const run = writeRunReports(dir, process.cwd());
  const { manifest, summary, findings, skipped, progress } = run;
  const sarif = args.string('sarif');
  if (sarif) fs.copyFileSync(path.join(dir, 'findings.sarif'), sarif);
  const inspect = args.string('inspect-log');
  if (inspect) writeInspectLog(dir, inspect, run);
  out(evalMarkdown(manifest, summary, skipped, progress));
  out(describeFindings(findings));
  return hasErrors(findings) ? 1 : 0;
}

/** --extra name=<dir>: the name ends at the first "=", since a folder may hold one (ckpt/lr=1e-4). */
function extraCheckpoints(args: Args): Record<string, string> {
  const extra: Record<string, string> = {};
  for (const e of args.strings('extra')) {
    const at = e.indexOf('=');
    const [name, folder] = at > 0 ? [e.slice(0, at), e.slice(at + 1)] : ['', ''];
    if (!name || !folder) throw new UsageError(`--extra wants name=<dir>, got "${e}"`);
    if (name in extra) throw new UsageError(`--extra "${name}" is given twice`);
    extra[name] = path.resolve(folder);
  }
  return extra;
}

/** A judge from --judge-endpoint and --judge-model (both or neither); its key from PIGGYBACK_JUDGE_API_KEY. */
function judgeOf(args: Args): Judge | undefined {
  const endpoint = args.string('judge-endpoint');
  const model = args.string('judge-model');
  if (!endpoint && !model) return undefined;
  if (!endpoint || !model) throw new UsageError('a judge needs both --judge-endpoint <url> and --judge-model <id>');
  const seconds = args.number('judge-timeout');
  try {
    return new Judge({
      endpoint,
      model,
      apiKey: process.env.PIGGYBACK_JUDGE_API_KEY || undefined,
      timeoutMs: seconds === undefined ? undefined : 1000 * seconds,
    });
  } catch (e) {
    throw e instanceof JudgeConfigError ? new UsageError(e.message) : e;
  }
}
