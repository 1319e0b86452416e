/**
 * Eval reports: Markdown for CI logs and pull requests, and one self-contained HTML file (no scripts, no network)
 * that opens in any browser.
 */
import type { EvalResult, Manifest, Summary } from './run';

const pct = (x: number | null) => (x === null ? 'n/a' : `${(100 * x).toFixed(0)}%`);
const num = (x: number | null, d = 3) => (x === null ? 'n/a' : x.toFixed(d));

export function evalMarkdown(m: Manifest, s: Summary): string {
  const lines = [
    '# Piggyback eval',
    '',
    `Base \`${m.checkpoints.base.folder}\` (${m.checkpoints.base.hash}), finetuned \`${m.checkpoints.finetuned.folder}\` (${m.checkpoints.finetuned.hash}); ${m.probes.count} probes (${m.probes.hash}); greedy, up to ${m.settings.maxNewTokens} new tokens. Judge-free scores.`,
    '',
  ];
  for (const [span, v] of Object.entries(s.piggybackShare)) {
    lines.push(v ? `**Piggyback share (${span} patch)**: ${pct(v.share)} of the finetuned model's shift from base on general probes is removed by patching the ${span} K/V (95% bootstrap CI ${pct(v.low)} to ${pct(v.high)}, ${v.probes} probes).` : `Piggyback share (${span}): n/a.`);
  }
  lines.push('', '| condition | probes | mean KL(base‖·) | aligned answer preferred | mean margin (nats) |', '|---|---|---|---|---|');
  for (const c of s.conditions) lines.push(`| ${c.label} | ${c.probes} | ${num(c.meanKlToBase)} | ${pct(c.alignedPreferred)} | ${num(c.meanMargin, 2)} |`);
  lines.push(
    '',
    'How to read it: KL(base‖condition) is the finetune\u2019s shift away from the base model\u2019s answer distribution on the base model\u2019s own greedy answer. The piggyback share is how much of that shift on unrelated (general) questions disappears when only the template tokens\u2019 K/V are replaced by the base model\u2019s: near 100% means the carrier is the template; near 0% means the change lives elsewhere.',
    '',
  );
  return lines.join('\n');
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

export function evalHtml(m: Manifest, s: Summary, results: EvalResult[]): string {
  const conditions = s.conditions.map((c) => c.label);
  const probes = [...new Set(results.map((r) => r.probe))];
  const cell = (probe: string, cond: string) => {
    const r = results.find((x) => x.probe === probe && x.condition === cond);
    if (!r) return '<td></td>';
    const heat = Math.min(1, r.klToBase / 1);
    return `<td style="background: rgba(220, 60, 60, ${heat.toFixed(2)})" title="${esc(r.generation)}">${r.klToBase.toFixed(3)}${r.margin !== null ? `<br><small>margin ${r.margin.toFixed(2)}</small>` : ''}</td>`;
  };
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Piggyback eval</title>
<style>body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}pre{white-space:pre-wrap}</style>
</head><body>
<h1>Piggyback eval</h1>
<pre>${esc(evalMarkdown(m, s))}</pre>
<h2>Eval matrix: KL(base&#8214;condition) per probe (hover a cell for the generation)</h2>
<table><tr><th>probe</th>${conditions.map((c) => `<th>${esc(c)}</th>`).join('')}</tr>
${probes.map((p) => `<tr><td>${esc(p)}</td>${conditions.map((c) => cell(p, c)).join('')}</tr>`).join('\n')}
</table>
</body></html>
`;
}
