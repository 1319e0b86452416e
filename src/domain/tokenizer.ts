/**
 * The model's real tokenizer (tokenizer.json through @huggingface/tokenizers), with what the library lacks:
 * character offsets for every token, and the answer to "does encoding add a BOS token?".
 */
import * as fs from 'node:fs';
import { defaultCacheDir, FILE_LIMITS, readFileChecked, readTextChecked } from './files';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { nestedRepetition } from './regexSafety';
import { specialTokensOf } from './template/source';
import {
  readTokenizerCache,
  TOKENIZER_CACHE_MIN_BYTES,
  tokenizerCacheKey,
  writeTokenizerCache,
} from './tokenizerCache';

export interface Token {
  id: number;
  /** The token's surface text (decoded), e.g. " world" rather than "Ġworld". */
  text: string;
  /** Offsets in the encoded string, UTF-16 code units, [start, end). */
  start: number;
  end: number;
  /** True for a token the tokenizer inserted (BOS/EOS from the post-processor), not present in the text. */
  added?: boolean;
}

type TokenizerJson = {
  decoder?: { type?: string; decoders?: { type?: string }[] } | null;
  post_processor?: unknown;
  added_tokens?: { id: number; content: string; special?: boolean }[];
  model?: { type?: string };
};

export class LoadedTokenizer {
  private readonly tok: Tokenizer;
  private readonly byteLevel: boolean;
  private readonly added = new Map<number, string>();
  private readonly byteDecoder = bytesToUnicodeInverse();
  readonly bosToken?: string;
  readonly bosId?: number;
  readonly eosToken?: string;
  /** Whether encode(text) with special tokens prepends BOS. */
  readonly addsBos: boolean;

  constructor(
    json: TokenizerJson,
    readonly config: Record<string, unknown>,
    readonly file?: string,
    /** The library's tokenizer already built from `json` (from the parsed-tokenizer cache). */
    built?: Tokenizer,
  ) {
    refuseBacktrackingPatterns(json, file);
    this.tok = built ?? new Tokenizer(json, config);
    this.byteLevel = usesByteLevel(json.decoder);
    for (const t of json.added_tokens ?? []) this.added.set(t.id, t.content);
    const special = specialTokensOf(config);
    this.bosToken = special.bos_token;
    this.eosToken = special.eos_token;
    this.bosId = this.bosToken !== undefined ? this.tok.token_to_id(this.bosToken) : undefined;
    // transformers' Llama/Gemma fast tokenizers rebuild the post-processor from add_bos_token, so an explicit
    // flag in tokenizer_config.json wins over what tokenizer.json's post-processor says.
    const probe = this.tok.encode('a', { add_special_tokens: true }).ids;
    const postProcessorAddsBos = this.bosId !== undefined && probe[0] === this.bosId;
    const flag = config.add_bos_token;
    this.addsBos = this.bosId !== undefined && (typeof flag === 'boolean' ? flag : postProcessorAddsBos);
  }

  /**
   * Loads tokenizer.json (and tokenizer_config.json beside it, or the one given). A large BPE tokenizer is kept in
   * the parsed-tokenizer cache (tokenizerCache.ts) under `cacheDir`, keyed by both files' content; pass
   * `cacheDir: false` to build from the JSON alone.
   */
  static fromFiles(
    tokenizerJson: string,
    tokenizerConfig?: string,
    options: { cacheDir?: string | false } = {},
  ): LoadedTokenizer {
    const bytes = readFileChecked(tokenizerJson, FILE_LIMITS.tokenizer);
    const config = tokenizerConfigOf(tokenizerJson, tokenizerConfig);
    const cacheDir = options.cacheDir === false ? undefined : (options.cacheDir ?? defaultCacheDir());
    const key = cacheDir && bytes.length >= TOKENIZER_CACHE_MIN_BYTES ? tokenizerCacheKey(bytes, config) : undefined;
    if (key && cacheDir) {
      const hit = readTokenizerCache(key, config, cacheDir);
      if (hit) return new LoadedTokenizer(hit.stub as TokenizerJson, config, tokenizerJson, hit.tokenizer);
    }
    const json = JSON.parse(bytes.toString('utf8')) as TokenizerJson;
    const loaded = new LoadedTokenizer(json, config, tokenizerJson);
    if (key && cacheDir) writeTokenizerCache(key, json as Record<string, unknown>, loaded.tok, cacheDir);
    return loaded;
  }

  /** Token ids of `text` without any special tokens added. */
  ids(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  /**
   * Encodes `text` with character offsets. With addSpecialTokens, a BOS is prepended when the tokenizer adds one
   * (as a trainer calling tokenizer(text) would get), marked `added` with an empty span at 0.
   */
  encode(text: string, addSpecialTokens = false): Token[] {
    const ids = this.ids(text);
    const tokens = this.withOffsets(text, ids);
    if (addSpecialTokens && this.addsBos && this.bosId !== undefined) {
      tokens.unshift({ id: this.bosId, text: this.bosToken ?? '', start: 0, end: 0, added: true });
    }
    return tokens;
  }

  /** The text of `ids` ('' for none: a model that answers with EOS at once has an empty answer, not an error). */
  decode(ids: number[]): string {
    if (ids.length === 0) return '';
    return this.tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  tokenId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  /** The UTF-8 bytes a token stands for. */
  private tokenBytes(id: number): Uint8Array {
    const added = this.added.get(id);
    if (added !== undefined) return utf8.encode(added);
    const piece = this.tok.id_to_token(id) ?? '';
    if (this.byteLevel) {
      const out = new Uint8Array(piece.length);
      let n = 0;
      for (const ch of piece) {
        const b = this.byteDecoder.get(ch);
        if (b === undefined) return utf8.encode(piece); // not a byte-level piece after all
        out[n++] = b;
      }
      return out.subarray(0, n);
    }
    const byteFallback = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
    if (byteFallback) return Uint8Array.of(parseInt(byteFallback[1], 16));
    return utf8.encode(piece.replace(/\u2581/g, ' '));
  }

  /**
   * Aligns tokens to the text through their bytes. Normalisers may add bytes the text lacks (SentencePiece's
   * leading space), which are skipped; a token whose bytes cannot be aligned ends alignment, and the rest fall
   * back to offsets from incremental decoding.
   */
  private withOffsets(text: string, ids: number[]): Token[] {
    const textBytes = utf8.encode(text);
    // byte offset -> UTF-16 offset of the character holding it (a token's start), and of the end of the character a
    // token ending there cuts into (a token's end): a byte token holding part of a character spans that whole
    // character, never an empty range at its start (which would count the user's first byte as template text)
    const charAt = new Int32Array(textBytes.length + 1);
    const charEnd = new Int32Array(textBytes.length + 1);
    {
      let b = 0;
      let c = 0;
      for (const ch of text) {
        const n = utf8Length(ch.codePointAt(0)!);
        for (let k = 0; k < n; k++) {
          charAt[b + k] = c;
          charEnd[b + k] = k === 0 ? c : c + ch.length;
        }
        b += n;
        c += ch.length;
      }
      charAt[b] = c;
      charEnd[b] = c;
    }
    const tokens: Token[] = [];
    let cursor = 0;
    for (let i = 0; i < ids.length; i++) {
      const bytes = this.tokenBytes(ids[i]);
      let start = -1;
      let j = 0;
      let pos = cursor;
      for (; j < bytes.length; j++) {
        if (pos < textBytes.length && textBytes[pos] === bytes[j]) {
          if (start < 0) start = pos;
          pos++;
        } else if (bytes[j] === 0x20) {
        } else {
          break;
        }
      }
      if (j < bytes.length) return tokens.concat(this.decodeOffsets(text, ids, i, charAt[cursor]));
      if (start < 0) start = cursor;
      cursor = pos;
      tokens.push({
        id: ids[i],
        text: text.slice(charAt[start], charEnd[pos]),
        start: charAt[start],
        end: charEnd[pos],
      });
    }
    return tokens;
  }

  /** Fallback: offsets from decoding ids[from..i], in the decoded text, clamped to the input text. */
  private decodeOffsets(text: string, ids: number[], from: number, startChar: number): Token[] {
    const out: Token[] = [];
    let prev = startChar;
    for (let i = from; i < ids.length; i++) {
      const end = Math.min(text.length, startChar + this.decode(ids.slice(from, i + 1)).length);
      out.push({ id: ids[i], text: text.slice(prev, end), start: prev, end });
      prev = end;
    }
    return out;
  }
}

const utf8 = new TextEncoder();

function utf8Length(cp: number): number {
  return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

function usesByteLevel(decoder: TokenizerJson['decoder']): boolean {
  if (!decoder) return false;
  if (decoder.type === 'ByteLevel') return true;
  return (decoder.decoders ?? []).some((d) => d.type === 'ByteLevel');
}

/** GPT-2's byte-to-unicode table, inverted: the printable stand-in char -> the byte. */
function bytesToUnicodeInverse(): Map<string, number> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const map = new Map<string, number>();
  bs.forEach((b, i) => {
    map.set(String.fromCharCode(cs[i]), b);
  });
  return map;
}

/** The tokenizer_config.json beside a tokenizer.json (or the given one), {} when there is none. */
/**
 * A tokenizer.json's pre-tokenizer and normalizer patterns run on JavaScript's backtracking engine inside the
 * library: one that nests unbounded repetition can take exponential time on some text, so the tokenizer is refused
 * (regexSafety.ts). Walks Split / Replace patterns, in Sequences too.
 */
function refuseBacktrackingPatterns(json: TokenizerJson, file = 'tokenizer.json'): void {
  const check = (node: unknown, where: string): void => {
    if (!node || typeof node !== 'object') return;
    const n = node as { type?: unknown; pattern?: { Regex?: unknown }; pretokenizers?: unknown; normalizers?: unknown };
    const source = n.pattern?.Regex;
    if (typeof source === 'string') {
      const nested = nestedRepetition(source);
      if (nested)
        throw new Error(
          `${file}: the ${where}'s regular expression nests unbounded repetition (${JSON.stringify(nested.slice(0, 60))}), which takes exponential time on some texts; this tokenizer is not run`,
        );
    }
    for (const list of [n.pretokenizers, n.normalizers]) if (Array.isArray(list)) for (const x of list) check(x, where);
  };
  const j = json as { pre_tokenizer?: unknown; normalizer?: unknown };
  check(j.pre_tokenizer, 'pre-tokenizer');
  check(j.normalizer, 'normalizer');
}

export function tokenizerConfigOf(tokenizerJson: string, tokenizerConfig?: string): Record<string, unknown> {
  const configFile = tokenizerConfig ?? path.join(path.dirname(tokenizerJson), 'tokenizer_config.json');
  return fs.existsSync(configFile)
    ? (JSON.parse(readTextChecked(configFile, FILE_LIMITS.config)) as Record<string, unknown>)
    : {};
}

/** Finds tokenizer.json for a template: in the template's folder, or a given file or folder. */
export function findTokenizerFile(hint: string | undefined, templateFolder: string | undefined): string | undefined {
  for (const candidate of [hint, templateFolder]) {
    if (!candidate) continue;
    try {
      const stat = fs.statSync(candidate);
      if (stat.isFile()) return candidate;
      const inside = path.join(candidate, 'tokenizer.json');
      if (fs.existsSync(inside)) return inside;
    } catch {
      // not there
    }
  }
  return undefined;
}

/** Tokenizers are slow to build (a second for a 150k vocabulary): keep them by file and modification time. */
const cache = new Map<string, { mtimeMs: number; tokenizer: LoadedTokenizer }>();

export function loadTokenizerCached(tokenizerJson: string): LoadedTokenizer {
  const key = path.resolve(tokenizerJson);
  const configFile = path.join(path.dirname(key), 'tokenizer_config.json');
  const mtimeMs = fs.statSync(key).mtimeMs + (fs.existsSync(configFile) ? fs.statSync(configFile).mtimeMs : 0);
  const hit = cache.get(key);
  if (hit && hit.mtimeMs === mtimeMs) return hit.tokenizer;
  const tokenizer = LoadedTokenizer.fromFiles(key);
  cache.set(key, { mtimeMs, tokenizer });
  return tokenizer;
}
