/**
 * A parsed-tokenizer cache. Building a 151k-vocabulary BPE tokenizer from its tokenizer.json takes about 1.3 s on
 * a small machine (decoding and parsing 11 MB of JSON, then two 151k-entry maps built through Object.entries and
 * JSON.stringify), and a dataset audit that scans its rows in a second thread waits for it: it was the critical
 * path of `piggyback dataset`. The maps the library builds are stored once, in V8's serialization format, keyed
 * by the SHA-256 of tokenizer.json and of tokenizer_config.json; a later load builds the library's tokenizer from
 * a stub of tokenizer.json (everything but the vocabulary and the merges) and puts the stored maps in place.
 *
 * The cache is an optimisation only: a file that is missing, unreadable, of another format or library version,
 * or whose content hash does not match is ignored (and rewritten); a tokenizer loaded from it encodes and decodes
 * as one built from tokenizer.json (test/unit/tokenizerCache.test.ts compares them on real tokenizers).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import { Tokenizer } from '@huggingface/tokenizers';
import { defaultCacheDir } from './files';

/** The library whose internals are stored; a test checks it is the installed one. */
export const CACHED_LIBRARY = '@huggingface/tokenizers@0.2.0';
const FORMAT = 1;
/** Smaller tokenizer.json files build fast enough (a few ms per 100 kB) that a cache file is not worth keeping. */
export const TOKENIZER_CACHE_MIN_BYTES = 1024 * 1024;

/** The BPE model fields the library derives from the vocabulary and merges. */
interface BpeState {
  tokens: string[];
  ids: number[];
  vocab: (string | undefined)[];
  rankKeys: string[];
  ranks: number[];
  unkTokenId: number | undefined;
}

interface Entry {
  format: number;
  library: string;
  key: string;
  stub: Record<string, unknown>;
  state: BpeState;
}

interface BpeModel {
  tokens_to_ids: Map<string, number>;
  vocab: (string | undefined)[];
  bpe_ranks: Map<string, number>;
  unk_token_id: number | undefined;
}

/** The cache key: the content of tokenizer.json and of the config the library is given. */
export function tokenizerCacheKey(tokenizerBytes: Buffer, config: Record<string, unknown>): string {
  return crypto.createHash('sha256').update(tokenizerBytes).update('\0').update(JSON.stringify(config)).digest('hex');
}

function cacheFile(key: string, cacheDir: string): string {
  return path.join(cacheDir, 'tokenizers', `${key}.v8`);
}

/** The tokenizer.json without the vocabulary and merges: what the library is built from on a cache hit. */
function stubOf(json: Record<string, unknown>): Record<string, unknown> {
  return { ...json, model: { ...(json.model as object), vocab: {}, merges: [] } };
}

function isBpe(json: Record<string, unknown>): boolean {
  return (json.model as { type?: unknown } | undefined)?.type === 'BPE';
}

/** The stored tokenizer for `key`, or undefined when there is none that can be trusted. */
export function readTokenizerCache(
  key: string,
  config: Record<string, unknown>,
  cacheDir = defaultCacheDir(),
): { stub: Record<string, unknown>; tokenizer: Tokenizer } | undefined {
  let entry: Entry;
  try {
    const bytes = fs.readFileSync(cacheFile(key, cacheDir));
    // 32 bytes of SHA-256 over the payload, then the payload: a torn or edited file is not used
    const payload = bytes.subarray(32);
    if (!crypto.createHash('sha256').update(payload).digest().equals(bytes.subarray(0, 32))) return undefined;
    entry = v8.deserialize(payload) as Entry;
  } catch {
    return undefined;
  }
  if (!validEntry(entry, key)) return undefined;
  const tokenizer = new Tokenizer(entry.stub as never, config as never);
  const model = (tokenizer as unknown as { model: BpeModel }).model;
  const { state } = entry;
  const tokensToIds = new Map<string, number>();
  for (let i = 0; i < state.tokens.length; i++) tokensToIds.set(state.tokens[i], state.ids[i]);
  const ranks = new Map<string, number>();
  for (let i = 0; i < state.rankKeys.length; i++) ranks.set(state.rankKeys[i], state.ranks[i]);
  model.tokens_to_ids = tokensToIds;
  model.vocab = state.vocab;
  model.bpe_ranks = ranks;
  model.unk_token_id = state.unkTokenId;
  return { stub: entry.stub, tokenizer };
}

function validEntry(entry: Entry, key: string): boolean {
  if (!entry || typeof entry !== 'object') return false;
  if (entry.format !== FORMAT || entry.library !== CACHED_LIBRARY || entry.key !== key) return false;
  const s = entry.state;
  return (
    !!s &&
    Array.isArray(s.tokens) &&
    Array.isArray(s.ids) &&
    s.tokens.length === s.ids.length &&
    Array.isArray(s.vocab) &&
    Array.isArray(s.rankKeys) &&
    Array.isArray(s.ranks) &&
    s.rankKeys.length === s.ranks.length &&
    !!entry.stub &&
    typeof entry.stub === 'object' &&
    isBpe(entry.stub)
  );
}

/**
 * Stores a tokenizer built from `json` for the next load. Best effort: a cache folder that cannot be written is
 * left alone (the tokenizer works the same, only the next load is slower).
 */
export function writeTokenizerCache(
  key: string,
  json: Record<string, unknown>,
  tokenizer: Tokenizer,
  cacheDir = defaultCacheDir(),
): void {
  if (!isBpe(json)) return;
  const model = (tokenizer as unknown as { model: Partial<BpeModel> }).model;
  if (!(model.tokens_to_ids instanceof Map) || !(model.bpe_ranks instanceof Map) || !Array.isArray(model.vocab)) return;
  const state: BpeState = {
    tokens: [...model.tokens_to_ids.keys()],
    ids: [...model.tokens_to_ids.values()],
    vocab: model.vocab,
    rankKeys: [...model.bpe_ranks.keys()],
    ranks: [...model.bpe_ranks.values()],
    unkTokenId: model.unk_token_id,
  };
  const entry: Entry = { format: FORMAT, library: CACHED_LIBRARY, key, stub: stubOf(json), state };
  const file = cacheFile(key, cacheDir);
  const temporary = `${file}.${process.pid}.tmp`;
  try {
    const payload = v8.serialize(entry);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(temporary, Buffer.concat([crypto.createHash('sha256').update(payload).digest(), payload]));
    fs.renameSync(temporary, file);
  } catch {
    try {
      fs.rmSync(temporary, { force: true });
    } catch {
      // the folder itself could not be made: nothing was written
    }
  }
}
