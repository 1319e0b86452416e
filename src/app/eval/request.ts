/**
 * One eval request, however it was asked for: the CLI maps its flags into it, the editor its settings and picks.
 * planEval checks it and turns it into what a run needs (the probes, the conditions, the run options), so both
 * front ends refuse the same things with the same words, and the defaults live here once (a project test checks
 * package.json's `piggyback.eval.*` defaults against EVAL_DEFAULTS).
 */
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { DEFAULT_MAX_NEW_TOKENS } from '../../contracts/modelHost';
import type { Judge } from './judge';
import { GENERAL_PROBES, heldOutProbes, loadProbeFile, otherDomainProbeSets, type Probe, probeSetHash } from './probes';
import {
  defaultConditions,
  type EvalCondition,
  type EvalOptions,
  extraNameProblem,
  layerSweepConditions,
  type ShardOf,
} from './run';

/** The defaults of every eval setting, for the CLI, the editor and package.json's settings alike. */
export const EVAL_DEFAULTS = {
  runsFolder: '.piggyback/runs',
  maxNewTokens: DEFAULT_MAX_NEW_TOKENS,
  temperature: 0,
  samples: 1,
  seed: 1,
  perturbationTrials: 10,
  layerSweep: false,
  judgeConcurrency: 4,
  judgeTimeoutSeconds: 60,
} as const;

/** This process's share of a run split over N: shard `index` (0-based) of `count`. */
export interface Shard {
  index: number;
  count: number;
}

export interface EvalRequest {
  /** Probe files (JSONL or YAML); their ids must be unique across files. */
  probeFiles?: string[];
  /** The built-in general probes; default: when no probe file is given. */
  general?: boolean;
  /** A finetuning dataset whose held-out 20% become in-domain probes. */
  dataset?: string;
  /** Datasets of other narrow domains: up to 50 of their rows each become other-domain probes. */
  otherDatasets?: string[];
  /** The probes of an existing run folder, to continue it (instead of the sources above). */
  probesOf?: Probe[];
  /** Further checkpoints evaluated as conditions of their own, by name (folders resolved by the caller). */
  extra?: Record<string, string>;
  maxNewTokens?: number;
  temperature?: number;
  samples?: number;
  seed?: number;
  /** Perturbation trials per probe (0: no perturbation control). */
  perturbationTrials?: number;
  layerSweep?: boolean;
  judge?: Judge;
  judgeConcurrency?: number;
  /** Run only this share of the probes (`piggyback eval --shard i/N`), merged later by `piggyback merge`. */
  shard?: Shard;
}

/** A request that cannot run, in words (and the file at fault, when one is). */
export class EvalRequestError extends Error {
  constructor(
    message: string,
    readonly file?: string,
  ) {
    super(message);
    this.name = 'EvalRequestError';
  }
}

/** What a run needs, ready for LensSession.eval (the conditions once the finetuned model's layers are known). */
export interface EvalPlan {
  /** The probes this process runs (the shard's share when sharded). */
  probes: Probe[];
  /** The whole set's identity and order when sharded (the merge checks shards against it). */
  shardOf?: ShardOf;
  /** In words, for progress and the dashboard: "general + in-domain from finance.jsonl". */
  description: string;
  extra: Record<string, string>;
  conditions(layers: number): EvalCondition[];
  options: Pick<
    EvalOptions,
    'maxNewTokens' | 'temperature' | 'samples' | 'seed' | 'perturb' | 'judge' | 'judgeConcurrency'
  >;
}

/** Parses "i/N": shard i of N, i counted from 0 as SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are. */
export function parseShard(text: string): Shard {
  const m = /^(\d+)\/(\d+)$/.exec(text.trim());
  if (!m) throw new EvalRequestError(`--shard wants i/N (e.g. 0/4 for the first of four shards), got "${text}"`);
  const [index, count] = [Number(m[1]), Number(m[2])];
  if (count < 1 || count > 10_000) throw new EvalRequestError(`--shard: N must be from 1 to 10000, got ${count}`);
  if (index >= count)
    throw new EvalRequestError(`--shard: i counts from 0 to N-1 (0/${count} .. ${count - 1}/${count}), got ${text}`);
  return { index, count };
}

/**
 * The shard a probe belongs to: by a hash of its id, never its position, so a probe stays in its shard when
 * probes are added or reordered and a resumed shard recomputes nothing another shard owns.
 */
export function shardOfProbe(id: string, count: number): number {
  return createHash('sha256').update(id).digest().readUInt32BE(0) % count;
}

function gatherProbes(req: EvalRequest): { probes: Probe[]; description: string } {
  if (req.probesOf) return { probes: [...req.probesOf], description: 'the probes of the run continued' };
  const files = req.probeFiles ?? [];
  const general = req.general ?? files.length === 0;
  const others = (req.otherDatasets ?? []).map((f) => path.resolve(f));
  const twice = others.find((f, i) => others.indexOf(f) !== i);
  // the same file twice would count its probes twice in every other-domain figure
  if (twice) throw new EvalRequestError(`the other-domain dataset ${twice} is given twice`, twice);
  const probes: Probe[] = general ? [...GENERAL_PROBES] : [];
  for (const f of files) probes.push(...loadProbeFile(f));
  if (req.dataset) probes.push(...heldOutProbes(req.dataset));
  probes.push(...otherDomainProbeSets(others));
  const parts = [
    general && 'general',
    ...files.map((f) => path.basename(f)),
    req.dataset && `in-domain from ${path.basename(req.dataset)}`,
    ...others.map((o) => `other-domain from ${path.basename(o)}`),
  ].filter(Boolean);
  return { probes, description: parts.join(' + ') };
}

/**
 * Checks a request and plans its run. Refuses (EvalRequestError, or ProbeFileError located in its file): a probe id
 * twice (results are keyed by it), an other-domain dataset twice, an extra checkpoint named like a condition, no
 * probes at all. Settings out of range are refused by the run itself (evalSettings), the same for every caller.
 */
export function planEval(req: EvalRequest): EvalPlan {
  const { probes: all, description } = gatherProbes(req);
  const seen = new Set<string>();
  for (const p of all) {
    if (seen.has(p.id))
      throw new EvalRequestError(
        `probe id "${p.id}" appears twice among the probes (${description}); ids must be unique, results are keyed by them`,
      );
    seen.add(p.id);
  }
  if (all.length === 0) throw new EvalRequestError(`no probes to run (${description || 'nothing chosen'})`);
  const extra = req.extra ?? {};
  const badName = extraNameProblem(Object.keys(extra));
  if (badName) throw new EvalRequestError(badName);
  const trials = req.perturbationTrials ?? EVAL_DEFAULTS.perturbationTrials;
  const layerSweep = req.layerSweep ?? EVAL_DEFAULTS.layerSweep;
  const shard = req.shard;
  const probes = shard ? all.filter((p) => shardOfProbe(p.id, shard.count) === shard.index) : all;
  return {
    probes,
    shardOf: shard && {
      ...shard,
      probes: { count: all.length, hash: probeSetHash(all), ids: all.map((p) => p.id) },
    },
    description: shard ? `${description}, shard ${shard.index}/${shard.count}` : description,
    extra,
    conditions: (layers) => [
      ...defaultConditions(Object.keys(extra), trials !== 0),
      ...(layerSweep ? layerSweepConditions(layers) : []),
    ],
    options: {
      maxNewTokens: req.maxNewTokens ?? EVAL_DEFAULTS.maxNewTokens,
      temperature: req.temperature ?? EVAL_DEFAULTS.temperature,
      samples: req.samples ?? EVAL_DEFAULTS.samples,
      seed: req.seed ?? EVAL_DEFAULTS.seed,
      perturb: { trials },
      judge: req.judge,
      judgeConcurrency: req.judgeConcurrency ?? EVAL_DEFAULTS.judgeConcurrency,
    },
  };
}
