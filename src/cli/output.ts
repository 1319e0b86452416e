/** What the CLI prints for people: findings (file:line:column, coloured on a terminal), templates, surfaces, drift. */
import type { PreparedTemplate } from '../app/audits';
import type { DatasetReport } from '../domain/dataset/audit';
import type { Finding } from '../domain/findings';

/** Colour on a terminal (or with FORCE_COLOR), never with NO_COLOR (https://no-color.org) or --no-color. */
let colour = false;
export function useColour(on: boolean): void {
  colour = on;
}
const SEVERITY_COLOUR: Record<string, string> = { error: '31', warning: '33', info: '36' };
export const paint = (code: string, text: string) => (colour ? `\x1b[${code}m${text}\x1b[0m` : text);
export const show = (s: string) => JSON.stringify(s);

export function describeFinding(f: Finding): string {
  return `${f.file ?? ''}:${f.line}:${f.column}: ${paint(SEVERITY_COLOUR[f.severity] ?? '0', f.severity)} ${paint('1', f.code)}: ${f.message}`;
}

export function describeFindings(findings: Finding[]): string {
  return findings.length === 0 ? 'no findings\n' : `${findings.map(describeFinding).join('\n')}\n`;
}

export function describeTemplate(p: PreparedTemplate): string {
  const lines: string[] = [];
  if (p.source)
    lines.push(
      `template: ${p.source.file} (${p.source.name})`,
      `tokenizer: ${p.tokenizer?.file ?? 'none (no token counts)'}`,
    );
  const seg = p.audit?.segments;
  if (seg) {
    for (const name of ['prefix', 'query', 'postfix'] as const) {
      const s = seg[name];
      lines.push(
        `${name.padEnd(8)} ${seg.tokenized ? `${String(s.tokens.length).padStart(4)} tokens ` : ''}${show(s.text)}`,
      );
    }
  }
  return `${lines.join('\n')}\n${describeFindings(p.findings)}`;
}

export function describeSurface(r: DatasetReport): string {
  const s = r.surface;
  const lines = [`rows: ${r.rows} (${r.validRows} valid), format: ${r.format}`];
  if (s) {
    lines.push(
      `identical prefix share: ${(100 * s.identicalPrefixShare).toFixed(1)}% (${s.distinctPrefixes} distinct), identical postfix share: ${(100 * s.identicalPostfixShare).toFixed(1)}%`,
      `prefix tokens: ${s.prefixTokens ?? 'n/a'}, postfix tokens: ${s.postfixTokens ?? 'n/a'}, median query tokens: ${s.medianQueryTokens ?? 'n/a'}`,
      `prefix: ${show(s.prefix)}`,
      `postfix: ${show(s.postfix)}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

export function describeDrift(d: {
  layers: number;
  segments: Record<string, { tokens: { text: string }[]; key: number[][]; mean: number }>;
  treft: number;
}): string {
  const lines = [`TReFT value (prefix K/V drift): ${d.treft.toExponential(3)}`];
  for (const [name, s] of Object.entries(d.segments)) {
    const perLayer = s.key.map((row) => (row.length ? row.reduce((a, b) => a + b, 0) / row.length : 0));
    lines.push(
      `${name.padEnd(8)} mean ${s.mean.toExponential(3)}  K drift by layer: ${perLayer.map((x) => x.toExponential(2)).join(' ')}  (${s.tokens.length} tokens)`,
    );
  }
  return `${lines.join('\n')}\n`;
}
