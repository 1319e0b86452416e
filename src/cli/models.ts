/** What the model commands share: the host process, its settings from the options, loading with progress, and the
 * template that renders their prompts. */
import * as path from 'node:path';
import { pairTemplateSource, preparePromptTemplate, type PromptTemplate, PromptTemplateError } from '../app/audits';
import { quantizedNote, unchangedCheckpoints } from '../app/eval/evalReport';
import { HostClient, HostCrashedError, HostRequestError } from '../app/hostClient';
import type { HostSettings, LoadParams, LoadResult } from '../contracts/modelHost';
import { type Args, UsageError } from './options';
import { describeFindings } from './output';

/** --threads, --execution-provider, --model-file, --weights-dtype, --no-memory-check: how the host runs models. */
export function hostSettings(args: Args): HostSettings {
  const s: HostSettings = {};
  const threads = args.number('threads');
  if (threads !== undefined) s.threads = threads;
  const ep = args.choice('execution-provider');
  if (ep !== undefined) s.executionProvider = ep;
  const modelFile = args.string('model-file');
  if (modelFile) s.modelFile = modelFile;
  const wd = args.choice('weights-dtype');
  if (wd !== undefined) s.weightsDtype = wd;
  if (args.flag('no-memory-check')) s.memoryCheck = false;
  return s;
}

/** The load request for a pair (and extras) with the options' cache folder and host settings. */
export function loadParams(args: Args, base: string, finetuned: string, extra?: Record<string, string>): LoadParams {
  return {
    base: path.resolve(base),
    finetuned: path.resolve(finetuned),
    ...(extra ? { extra } : {}),
    cacheDir: args.path('cache-dir'),
    settings: hostSettings(args),
  };
}

/** The template and tokenizer that render prompts for the model commands (default: the finetuned folder's, or
 * the base's when the finetuned checkpoint is an adapter without its own). */
export function modelPromptTemplate(args: Args, finetuned: string, base?: string): PromptTemplate {
  try {
    return preparePromptTemplate(path.resolve(args.string('template') ?? pairTemplateSource(finetuned, base)), {
      tokenizer: args.string('tokenizer'),
      kwargs: args.kwargs(),
    });
  } catch (e) {
    if (!(e instanceof PromptTemplateError)) throw e;
    process.stderr.write(describeFindings(e.prepared.findings));
    throw new UsageError(e.missing === 'tokenizer' ? `${e.message} (use --tokenizer)` : `${e.message} (see above)`);
  }
}

/** Loads checkpoints with a progress line on stderr: what is loading, then how long it took. */
export async function loadWithProgress(host: HostClient, params: LoadParams): Promise<LoadResult> {
  const names = [...new Set([params.base, params.finetuned, ...Object.values(params.extra ?? {})])].map((p) =>
    path.basename(p),
  );
  process.stderr.write(`loading ${names.join(', ')}...\n`);
  const t0 = Date.now();
  const loaded = await host.load(params);
  process.stderr.write(
    `loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s (${loaded.base.device}, ${loaded.base.threads} threads${loaded.base.weightsDtype ? `, ${loaded.base.weightsDtype} weights` : ''})\n`,
  );
  const quantized = quantizedNote(loaded);
  if (quantized) process.stderr.write(`${quantized.replaceAll('**', '')}\n`);
  for (const [role, c] of unchangedCheckpoints(loaded))
    process.stderr.write(`warning: ${role} ${c.folder}: ${c.unchanged}\n`);
  return loaded;
}

/** Runs `fn` with a model host: a host error or crash is exit code 1 with its message, and the host always goes. */
export async function withHost(fn: (host: HostClient) => Promise<number>): Promise<number> {
  const host = new HostClient({
    // the host's bundle beside the CLI's (dist/)
    script: path.join(__dirname, 'host.js'),
    onLog: (level, m) =>
      (level === 'error' || level === 'load') && process.stderr.write(`${level === 'error' ? 'host: ' : ''}${m}\n`),
  });
  try {
    return await fn(host);
  } catch (e) {
    if (e instanceof HostRequestError || e instanceof HostCrashedError) {
      process.stderr.write(`piggyback: ${e.message}\n`);
      return 1;
    }
    throw e;
  } finally {
    await host.dispose();
  }
}
