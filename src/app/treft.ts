/**
 * TReFT export: what a trainer needs to add the paper's regulariser to its loss.
 *
 * For each row of a finetuning set, rendered with the real template and tokenized as a trainer does
 * (apply_chat_template(tokenize=True), i.e. no special tokens added beyond what the template writes), the token
 * positions of the prefix (before the first user text), the query, the postfix (between the user text and the
 * first assistant response) and that response. Rows that share a prefix share its reference K/V: the prefix is
 * causal and query-independent, so the base model's prefix K/V are computed once per distinct prefix.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ModelHost } from './hostClient';
import { type CheckpointInfo, ExportKV, type ExportKVResult, type Span } from '../contracts/modelHost';
import type { ChatTemplate, RenderOptions } from '../domain/template/render';
import { frame, rowTurns } from '../domain/template/segments';
import { contentText, normaliseRow } from '../domain/dataset/formats';
import { fileChunks, readLines } from '../domain/dataset/lines';
import type { LoadedTokenizer } from '../domain/tokenizer';
import { sha256OfFile } from '../domain/files';

export interface TreftRow {
  /** 1-based line in the dataset file. */
  line: number;
  /** Length of the row's token sequence. */
  tokens?: number;
  prefix?: Span;
  query?: Span;
  postfix?: Span;
  /** The first assistant response (the rest of a multi-turn row follows it). */
  response?: Span;
  /** Index into `prefixes`: which reference K/V these prefix positions take. */
  prefixGroup?: number;
  /** Why the row has no positions (malformed, no user or assistant turn, template refused it). */
  error?: string;
}

export interface TreftPrefix {
  ids: number[];
  text: string;
  rows: number;
}

export interface TreftPositions {
  rows: TreftRow[];
  /** Distinct prefixes in order of first appearance; the reference K/V file holds one tensor group per entry. */
  prefixes: TreftPrefix[];
}

/** Reference K/V groups beyond this many distinct prefixes are not exported (rows keep prefixGroup: null). */
export const MAX_PREFIX_GROUPS = 16;

export async function treftPositions(
  lines: AsyncIterable<Buffer | string> | Iterable<Buffer | string>,
  template: ChatTemplate,
  tokenizer: LoadedTokenizer,
  render: RenderOptions,
): Promise<TreftPositions> {
  const rows: TreftRow[] = [];
  const prefixes: TreftPrefix[] = [];
  const groupOf = new Map<string, number>();
  for await (const { line, text, tooLong } of readLines(lines)) {
    if (!text.trim() && !tooLong) continue;
    const fail = (error: string) => rows.push({ line, error });
    if (tooLong) {
      fail('line too long');
      continue;
    }
    let messages: ReturnType<typeof normaliseRow>['messages'];
    try {
      messages = normaliseRow(JSON.parse(text)).messages;
    } catch (e) {
      fail(`not a chat row: ${(e as Error).message}`);
      continue;
    }
    // the prefix TReFT regularises ends at the first user turn (rowTurns); its answer is the next assistant turn
    const u = rowTurns(messages).firstUser;
    const a = messages.findIndex((m, i) => i > u && m.role === 'assistant');
    if (u < 0 || a < 0) {
      fail(u < 0 ? 'no user turn' : 'no assistant turn after the first user turn');
      continue;
    }
    const system = messages.slice(0, u).find((m) => m.role === 'system');
    const str = (c: unknown) => contentText(c) ?? '';
    try {
      // the trainer's sequence: the whole row rendered, tokenized without added special tokens
      const full = template.render(messages, { ...render, addGenerationPrompt: false });
      // the prefix is what the template writes before the user's text (marker rendering, as everywhere)
      const f = frame(template, { ...render, system: system ? str(system.content) : undefined, response: '' });
      if (!full.startsWith(f.prefix))
        throw new Error(
          'the row renders a different prefix than its first turn alone (the template reads later turns)',
        );
      const P = f.prefix.length;
      const found = (text: string, from: number): [number, number] | undefined => {
        for (const t of [text, text.trim()]) {
          const at = full.indexOf(t, from);
          if (t && at >= 0) return [at, at + t.length];
        }
        return undefined;
      };
      const q = found(str(messages[u].content), P);
      if (!q || q[0] !== P) throw new Error('cannot find the user text right after the prefix in the rendered row');
      // the postfix is whatever this row renders between the user text and the first assistant text
      const answer = str(messages[a].content);
      const r =
        found(answer, q[1]) ??
        (answer.trim() ? undefined : ([q[1] + f.postfix.length, q[1] + f.postfix.length] as [number, number]));
      if (!r) throw new Error('cannot find the assistant text in the rendered row (the template rewrites it)');
      const tokens = tokenizer.encode(full, false);
      // spans by token index, in order: a token straddling a boundary goes with the user or the response text,
      // so prefix and postfix hold template tokens only
      const first = (from: number, pred: (t: { start: number; end: number }) => boolean) => {
        const i = tokens.findIndex((t, k) => k >= from && pred(t));
        return i < 0 ? tokens.length : i;
      };
      const nP = first(0, (t) => t.end > P);
      const F = first(nP, (t) => t.end > r[0]);
      const Q = Math.min(
        first(nP, (t) => t.start >= q[1]),
        F,
      );
      const R = first(F, (t) => t.start >= r[1]);
      const ids = tokens.map((t) => t.id);
      const key = ids.slice(0, nP).join(',');
      let g = groupOf.get(key);
      // an empty prefix (a template that writes nothing before the user text) has nothing to regularise
      if (g === undefined && nP > 0 && prefixes.length < MAX_PREFIX_GROUPS) {
        g = prefixes.push({ ids: ids.slice(0, nP), text: f.prefix, rows: 0 }) - 1;
        groupOf.set(key, g);
      }
      if (g !== undefined) prefixes[g].rows++;
      rows.push({
        line,
        tokens: ids.length,
        prefix: [0, nP],
        query: [nP, Q],
        postfix: [Q, F],
        response: [F, R],
        ...(g !== undefined ? { prefixGroup: g } : {}),
      });
    } catch (e) {
      fail((e as Error).message);
    }
  }
  return { rows, prefixes };
}

/** The recipe written next to the export: the loss, the file layout, and how to wire it into a PyTorch trainer. */
export function treftRecipe(info: {
  dataset: string;
  template: string;
  base: string | null;
  layers: number | null;
  kvHeads: number | null;
  headDim: number | null;
  prefixes: TreftPrefix[];
  rows: number;
  skipped: number;
}): string {
  const shape = info.kvHeads !== null ? `[${info.kvHeads}, P, ${info.headDim}]` : '[kv_heads, P, head_dim]';
  return `# TReFT regularisation data

Exported by Piggyback Lens for \`${info.dataset}\` rendered with \`${info.template}\`${info.base ? `; reference K/V from the base checkpoint \`${info.base}\`` : ''}.
${info.rows} rows with positions, ${info.skipped} skipped (see \`error\` in positions.jsonl), ${info.prefixes.length} distinct prefix${info.prefixes.length === 1 ? '' : 'es'}.

## The loss (Token-Regularized Fine-Tuning, arXiv 2606.06667)

For the prefix token positions T of a row and every layer l, with k, v the attention's keys and values of the model
being trained and k_init, v_init the base (unfinetuned) model's:

    L_K(l) = mean over t in T of ||k_t(l) - k_init_t(l)||^2 / ||k_init_t(l)||^2      (norm over all KV heads of token t)
    L_V(l) = the same for v
    L_KV   = mean over layers of (L_K(l) + L_V(l))
    L      = L_SFT + lambda * L_KV

The paper uses lambda between 1 and 30: start at 10; raise it when the eval's piggyback share stays high, lower it
when in-domain learning stalls. Regularise the prefix; for models whose carrier is the postfix (Qwen3 in the paper),
use the postfix positions too. Regularising the query or all tokens blocks in-domain learning.

## Files

- \`positions.jsonl\`: one object per dataset row: \`line\` (1-based), \`tokens\` (length of the row's token
  sequence), half-open spans \`prefix\`, \`query\`, \`postfix\`, \`response\` as [start, end) token positions, and
  \`prefixGroup\` (which reference K/V apply), or \`error\`. The sequence is what
  \`tokenizer.apply_chat_template(messages, tokenize=True)\` gives (no extra special tokens); multi-turn rows are
  regularised on the prefix before their first user message.
- \`reference_kv.safetensors\`${info.base ? '' : ' (not written: no base checkpoint given)'}: for prefix group g and layer l, tensors
  \`prefix.{g}.layers.{l}.key\` and \`prefix.{g}.layers.{l}.value\`, float32, shape ${shape} (batch dimension
  dropped; the layout of Hugging Face \`past_key_values\`; keys after rotary embedding, as the attention uses them).
  P is the group's prefix length; the metadata entry \`prefix.{g}.ids\` holds its token ids as JSON.
- \`meta.json\`: the checkpoint and template hashes this export belongs to.

## In a PyTorch / TRL trainer

\`\`\`python
from safetensors.torch import load_file
ref = load_file("reference_kv.safetensors")          # {name: tensor}

def treft_loss(past_key_values, prefix_groups, prefix_lens):
    """past_key_values: the model's K/V for the batch, one (key, value) pair per layer, each
    [batch, kv_heads, seq, head_dim]: outputs.past_key_values with use_cache=True (a DynamicCache in recent
    transformers: use its .to_legacy_cache(), or cache.layers[l].keys / .values), or captured from the attention
    modules. They carry gradients. Rows are right-padded, so prefix positions are 0..P-1; with left padding,
    shift them by each row's pad count."""
    total = 0.0
    for l, (k, v) in enumerate(past_key_values):
        for a, which in ((k, "key"), (v, "value")):
            per_row = []
            for b, (g, P) in enumerate(zip(prefix_groups, prefix_lens)):
                a0 = ref[f"prefix.{g}.layers.{l}.{which}"].to(a.device, a.dtype)      # [kv_heads, P, head_dim]
                x = a[b, :, :P]
                num = (x - a0).pow(2).sum(dim=(0, 2))
                den = a0.pow(2).sum(dim=(0, 2)).clamp(min=1e-8)
                per_row.append((num / den).mean())
            total = total + torch.stack(per_row).mean()
    return total / len(past_key_values)

loss = sft_loss + lam * treft_loss(outputs.past_key_values, batch["prefix_group"], batch["prefix_len"])
\`\`\`

Rows whose prefix differs from every exported group (more than ${MAX_PREFIX_GROUPS} distinct system prompts) have no
\`prefixGroup\`: compute their reference on the fly from a frozen copy of the base model, or with a LoRA/PEFT model
inside \`with model.disable_adapter():\`, which also serves postfix positions (they depend on the query).
Check the wiring: at step 0 (before any update) the loss must be 0 up to float error.
`;
}

export interface TreftExportOptions {
  dataset: string;
  template: ChatTemplate;
  templateFile: string;
  tokenizer: LoadedTokenizer;
  render: RenderOptions;
  out: string;
  /** With a host that has loaded the base checkpoint, the reference K/V are written too. */
  host?: ModelHost;
  base?: CheckpointInfo;
  signal?: AbortSignal;
}

export interface TreftExportResult {
  positions: TreftPositions;
  files: string[];
  skipped: number;
}

/** The files an export writes into its folder. */
export const TREFT_FILES = ['positions.jsonl', 'meta.json', 'RECIPE.md', 'reference_kv.safetensors'] as const;

export class TreftExportError extends Error {}

/** Why writing an export into `out` would overwrite one of its inputs (the dataset, the template), or undefined. */
export function treftOutputProblem(out: string, inputs: string[]): string | undefined {
  const real = (f: string) => {
    try {
      return fs.realpathSync(f);
    } catch {
      return path.resolve(f);
    }
  };
  const inputsReal = new Map(inputs.filter(Boolean).map((f) => [real(f), f]));
  for (const name of TREFT_FILES) {
    const input = inputsReal.get(real(path.join(out, name)));
    if (input) return `writing ${name} into ${out} would overwrite the input ${input}: choose another output folder`;
  }
  return undefined;
}

/** Writes positions.jsonl, meta.json, RECIPE.md and (with a base model) reference_kv.safetensors under `out`. */
export async function writeTreftExport(o: TreftExportOptions): Promise<TreftExportResult> {
  const problem = treftOutputProblem(o.out, [o.dataset, o.templateFile]);
  if (problem) throw new TreftExportError(problem);
  const positions = await treftPositions(fileChunks(o.dataset), o.template, o.tokenizer, o.render);
  fs.mkdirSync(o.out, { recursive: true });
  const files: string[] = [];
  const write = (name: string, text: string) => {
    const f = path.join(o.out, name);
    fs.writeFileSync(f, text);
    files.push(f);
  };
  write('positions.jsonl', positions.rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const skipped = positions.rows.filter((r) => r.error).length;
  let kv: ExportKVResult | undefined;
  if (o.host && o.base && positions.prefixes.length) {
    const file = path.join(o.out, 'reference_kv.safetensors');
    kv = await o.host.request(
      ExportKV.type,
      {
        prefixes: positions.prefixes.map((p) => p.ids),
        file,
        model: 'base',
        metadata: { template_sha256: sha256(o.template.text), dataset: path.basename(o.dataset) },
      },
      { signal: o.signal },
    );
    files.push(file);
  }
  const meta = {
    tool: 'piggyback-lens 0.1.0',
    dataset: { file: o.dataset, sha256: sha256OfFile(o.dataset) },
    template: { file: o.templateFile, sha256: sha256(o.template.text) },
    base: o.base
      ? {
          folder: o.base.folder,
          hash: o.base.hash,
          layers: o.base.layers,
          kvHeads: o.base.kvHeads,
          headDim: o.base.headDim,
        }
      : null,
    rows: positions.rows.length - skipped,
    skipped,
    prefixes: positions.prefixes,
  };
  write('meta.json', JSON.stringify(meta, null, 2) + '\n');
  write(
    'RECIPE.md',
    treftRecipe({
      dataset: path.basename(o.dataset),
      template: o.templateFile,
      base: o.base?.folder ?? null,
      layers: kv?.layers ?? null,
      kvHeads: kv?.kvHeads ?? null,
      headDim: kv?.headDim ?? null,
      prefixes: positions.prefixes,
      rows: meta.rows,
      skipped,
    }),
  );
  return { positions, files, skipped };
}

function sha256(x: string | Buffer): string {
  return createHash('sha256').update(x).digest('hex');
}
