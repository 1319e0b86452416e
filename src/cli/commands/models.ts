import { DEFAULT_QUERY, LensSession } from '../../app/session';
import type { Command } from '../command';
import { loadParams, loadWithProgress, modelPromptTemplate, withHost } from '../models';
import { type Args, HOST_OPTIONS, TEMPLATE_OPTIONS, UsageError } from '../options';
import { describeDrift, show } from '../output';

/** The pair every model command needs. */
function pair(args: Args, command: string): { base: string; finetuned: string } {
  const base = args.string('base');
  const finetuned = args.string('finetuned');
  if (!base || !finetuned) throw new UsageError(`${command} needs --base <dir> and --finetuned <dir>`);
  return { base, finetuned };
}

export const drift: Command = {
  name: 'drift',
  usage: 'piggyback drift --base <dir> --finetuned <dir> [--template <source>] [--prompt <text>] [--json]',
  about: 'Measures the K/V drift between base and finetuned per layer and segment, with the TReFT value.',
  options: ['base', 'finetuned', 'template', ...TEMPLATE_OPTIONS, 'prompt', 'json', ...HOST_OPTIONS],
  run(args, out) {
    const { base, finetuned } = pair(args, 'drift');
    const params = loadParams(args, base, finetuned);
    const p = modelPromptTemplate(args, finetuned, base);
    return withHost(async (host) => {
      const session = new LensSession(host, await loadWithProgress(host, params), p);
      const { query: _, ...result } = await session.drift(args.string('prompt') ?? DEFAULT_QUERY);
      out(args.flag('json') ? `${JSON.stringify(result, null, 2)}\n` : describeDrift(result));
      return 0;
    });
  },
};

export const patch: Command = {
  name: 'patch',
  usage:
    'piggyback patch --base <dir> --finetuned <dir> --prompt <text> [--span prefix|postfix|both|query] [--max-new-tokens N] [--template <source>] [--json]',
  about: "Patches the finetuned model's K/V with the base model's on a span and compares the three answers.",
  options: [
    'base',
    'finetuned',
    'template',
    ...TEMPLATE_OPTIONS,
    'prompt',
    'span',
    'max-new-tokens',
    'json',
    ...HOST_OPTIONS,
  ],
  run(args, out) {
    const { base, finetuned } = pair(args, 'patch');
    const query = args.string('prompt');
    if (!query) throw new UsageError('patch needs --prompt <text>');
    const span = args.choice('span') ?? 'prefix';
    const maxNewTokens = args.number('max-new-tokens');
    const params = loadParams(args, base, finetuned);
    const p = modelPromptTemplate(args, finetuned, base);
    return withHost(async (host) => {
      const session = new LensSession(host, await loadWithProgress(host, params), p);
      const { query: _, ...r } = await session.patch(query, span, maxNewTokens);
      out(
        args.flag('json')
          ? `${JSON.stringify(r, null, 2)}\n`
          : `span: ${span} (${r.patchedPositions.length} positions)\nKL(base||finetuned) ${r.kl.finetuned.toFixed(4)}  KL(base||patched) ${r.kl.patched.toFixed(4)}\nbase:      ${show(r.generations.base)}\nfinetuned: ${show(r.generations.finetuned)}\npatched:   ${show(r.generations.patched)}\n`,
      );
      return 0;
    });
  },
};
