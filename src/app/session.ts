/**
 * The application layer: the measurements a user asks for (drift, patch and compare), implemented once over a
 * model-host interface, with the defaults in one place. The CLI and the editor are adapters around it: they parse
 * their input, call a LensSession, and show what it returns (a terminal table or JSON; the dashboard). Eval runs
 * (eval/run.ts) and the TReFT export (treft.ts) are the other two flows, each implemented once as well.
 */
import type { ModelHost, RequestOptions } from './hostClient';
import { renderOptions, type PromptTemplate } from './audits';
import { answerText, promptIds } from '../domain/prompt';
import { type EvalOptions, runEval } from './eval/run';
import { type TreftExportOptions, type TreftExportResult, writeTreftExport } from './treft';
import {
  DEFAULT_MAX_NEW_TOKENS,
  Drift,
  type DriftResult,
  type LoadResult,
  Patch,
  type PatchSpan,
  type PromptIds,
  type PromptSegment,
  type SegmentDrift,
} from '../contracts/modelHost';

/** The one default query of drift and patch, in the CLI and the editor alike. */
export const DEFAULT_QUERY = 'I feel bored. What should I do?';

export { DEFAULT_MAX_NEW_TOKENS };

export interface TokenLabel {
  id: number;
  text: string;
}

/** Drift of one prompt: the host's figures per segment with the segment's tokens, decoded one by one. */
export interface DriftReport {
  query: string;
  layers: number;
  segments: Record<PromptSegment, SegmentDrift & { tokens: TokenLabel[] }>;
  position0: DriftResult['position0'];
  treft: number;
}

/**
 * A patch comparison. Answers are decoded without the end-of-turn tokens that stopped generation (as a reader or a
 * judge sees them; eval runs do the same), in the CLI's JSON and in the editor.
 */
export interface PatchReport {
  query: string;
  span: PatchSpan;
  patchedPositions: number[];
  kl: { finetuned: number; patched: number };
  generations: { base: string; finetuned: string; patched: string };
  /** The teacher-forced response the KL values are measured on (the base model's greedy answer). */
  response: string;
}

/** What an eval run takes beyond the session's host, checkpoints, template and tokenizer. */
export type SessionEvalOptions = Omit<
  EvalOptions,
  'host' | 'loaded' | 'template' | 'templateFile' | 'tokenizer' | 'render'
>;

/** What the TReFT export takes beyond the session's host, base, template and tokenizer. */
export type SessionTreftOptions = Omit<
  TreftExportOptions,
  'host' | 'base' | 'template' | 'templateFile' | 'tokenizer' | 'render'
>;

/**
 * The application's four flows over one loaded pair and one prompt template: drift, patch and compare, eval runs,
 * and the TReFT export. The CLI and the editor construct one and call it; neither implements a flow itself.
 */
export class LensSession {
  constructor(
    private readonly host: ModelHost,
    readonly loaded: LoadResult,
    readonly prompt: PromptTemplate,
  ) {}

  /** The prompt ids and segment spans of a query under the session's template and tokenizer. */
  promptIds(query: string): PromptIds {
    return promptIds(this.prompt.template, this.prompt.tokenizer, { ...renderOptions(this.prompt), query });
  }

  private tokens(ids: PromptIds, span: [number, number]): TokenLabel[] {
    return ids.ids.slice(span[0], span[1]).map((id) => ({ id, text: this.prompt.tokenizer.decode([id]) }));
  }

  private answer(ids: number[]): string {
    return answerText(this.prompt.tokenizer, ids, [
      ...this.loaded.base.eosTokenIds,
      ...this.loaded.finetuned.eosTokenIds,
    ]);
  }

  async drift(query: string = DEFAULT_QUERY, options?: RequestOptions): Promise<DriftReport> {
    const ids = this.promptIds(query);
    const d = await this.host.request(Drift.type, { prompt: ids }, options);
    const seg = (name: PromptSegment) => ({ tokens: this.tokens(ids, ids[name]), ...d.segments[name] });
    return {
      query,
      layers: d.layers,
      segments: { prefix: seg('prefix'), query: seg('query'), postfix: seg('postfix') },
      position0: d.position0,
      treft: d.treft,
    };
  }

  /** An eval run into `options.out` (resumable): see eval/run.ts. */
  eval(options: SessionEvalOptions): ReturnType<typeof runEval> {
    return runEval({
      ...options,
      host: this.host,
      loaded: this.loaded,
      template: this.prompt.template,
      templateFile: this.prompt.source?.file,
      tokenizer: this.prompt.tokenizer,
      render: renderOptions(this.prompt),
    });
  }

  /** The TReFT export of a finetuning set with the base model's prefix K/V: see treft.ts. */
  treftExport(options: SessionTreftOptions): Promise<TreftExportResult> {
    return writeTreftExport({
      ...options,
      host: this.host,
      base: this.loaded.base,
      template: this.prompt.template,
      templateFile: this.prompt.source?.file ?? '',
      tokenizer: this.prompt.tokenizer,
      render: renderOptions(this.prompt),
    });
  }

  async patch(
    query: string = DEFAULT_QUERY,
    span: PatchSpan = 'prefix',
    maxNewTokens = DEFAULT_MAX_NEW_TOKENS,
    options?: RequestOptions,
  ): Promise<PatchReport> {
    const r = await this.host.request(Patch.type, { prompt: this.promptIds(query), span, maxNewTokens }, options);
    return {
      query,
      span: r.span,
      patchedPositions: r.patchedPositions,
      kl: r.kl,
      generations: {
        base: this.answer(r.generations.base),
        finetuned: this.answer(r.generations.finetuned),
        patched: this.answer(r.generations.patched),
      },
      response: this.answer(r.responseIds),
    };
  }
}
