/**
 * Output formats of the audit: the public JSON (a stable interface for CI), SARIF 2.1.0, and Markdown.
 */
import * as path from 'node:path';
import type { DatasetReport } from '../domain/dataset/audit';
import { CODES, docsPath, type Finding, type Severity } from '../domain/findings';
import type { FolderAudit, PreparedTemplate, TrainerAudit } from './audits';
import { FRAMEWORK_NAMES } from '../domain/trainers/config';
import type { Segment } from '../domain/template/segments';

export const TOOL_NAME = 'Piggyback Lens';
export const TOOL_VERSION = '0.1.0';

const segmentJson = (s: Segment | undefined) =>
  s ? { text: s.text, tokens: s.tokens.map((t) => ({ id: t.id, text: t.text })) } : { text: '', tokens: [] };

const findingJson = (f: Finding) => ({
  code: f.code,
  severity: f.severity,
  message: f.message,
  file: f.file,
  line: f.line,
  column: f.column,
  endLine: f.endLine,
  endColumn: f.endColumn,
});

export function templateJson(p: PreparedTemplate) {
  const seg = p.audit?.segments;
  return {
    template: p.source?.file ?? null,
    name: p.source?.name ?? null,
    names: p.source?.names ?? [],
    tokenizer: p.tokenizer?.file ?? null,
    tokenizerAddsBos: p.tokenizer?.addsBos ?? null,
    kwargs: p.kwargs,
    defaultSystemPrompt: p.audit?.defaultSystemPrompt ?? null,
    segments: {
      prefix: segmentJson(seg?.prefix),
      query: segmentJson(seg?.query),
      postfix: segmentJson(seg?.postfix),
    },
    findings: p.findings.map(findingJson),
  };
}

export function datasetJson(r: DatasetReport) {
  return {
    file: r.file ?? null,
    rows: r.rows,
    validRows: r.validRows,
    format: r.format,
    formats: r.formats,
    errors: r.errors.map((e) => ({
      line: e.line,
      column: e.column,
      code: e.code,
      severity: e.severity,
      message: e.message,
    })),
    errorsOmitted: r.errorsOmitted,
    surface: r.surface,
    findings: r.findings.map(findingJson),
  };
}

export function folderJson(a: FolderAudit) {
  return {
    root: a.root,
    templates: a.templates.map((t) => ({ path: t.path, ...templateJson(t.prepared) })),
    datasets: a.datasets.map((d) => ({
      template: d.template ?? null,
      association: d.association,
      split: d.split ?? null,
      ...datasetJson(d.report),
    })),
    trainers: a.trainers.map(trainerJson),
    findings: a.findings.map(findingJson),
  };
}

/** A trainer config in the folder audit: its framework, the template it renders, and whether it differs. */
function trainerJson(t: TrainerAudit) {
  const tpl = t.config.template;
  return {
    file: t.config.file,
    framework: t.config.framework,
    model: t.config.model ?? null,
    template: tpl.kind === 'builtin' ? { kind: tpl.kind, name: tpl.name, version: tpl.version } : { kind: tpl.kind },
    renders: t.trainer?.label ?? null,
    differs: t.differs ?? null,
    note: t.note ?? null,
  };
}

/** A trainer config's row: what it renders and against the tokenizer's template, or why not compared. */
function trainerLine(t: TrainerAudit): string {
  const d = t.differs;
  const verdict = !d
    ? `not compared: ${t.note ?? 'no template'}`
    : d.prefix || d.postfix
      ? `differs from the tokenizer's (${[d.prefix && 'prefix', d.postfix && 'postfix'].filter(Boolean).join(', ')})`
      : "the same prefix and postfix as the tokenizer's";
  return `${FRAMEWORK_NAMES[t.config.framework]}: ${t.trainer?.label ?? 'its template'}; ${verdict}`;
}

const SARIF_LEVEL: Record<Severity, 'error' | 'warning' | 'note'> = {
  error: 'error',
  warning: 'warning',
  info: 'note',
};

/** SARIF 2.1.0: one run, rule ids = codes, physical locations relative to `root` (%SRCROOT%). */
export function toSarif(findings: readonly Finding[], root: string) {
  const used = [...new Set(findings.map((f) => f.code))].sort();
  const ruleIndex = new Map(used.map((c, i) => [c, i]));
  const uriOf = (file: string) => {
    const rel = path.relative(root, file);
    const inside = rel && !rel.startsWith('..') && !path.isAbsolute(rel);
    return inside
      ? { uri: rel.split(path.sep).map(encodeURIComponent).join('/'), uriBaseId: '%SRCROOT%' }
      : { uri: fileUri(file) };
  };
  return {
    $schema: 'https://json.schemastore.org/sarif-2.1.0.json',
    version: '2.1.0',
    runs: [
      {
        tool: {
          driver: {
            name: TOOL_NAME,
            version: TOOL_VERSION,
            rules: used.map((code) => ({
              id: code,
              name: (CODES[code]?.title ?? code).replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) =>
                c ? c.toUpperCase() : '',
              ),
              shortDescription: { text: CODES[code]?.title ?? code },
              fullDescription: { text: CODES[code]?.why ?? code },
              help: { text: `${CODES[code]?.why ?? ''} See ${docsPath(code)}.` },
            })),
          },
        },
        originalUriBaseIds: { '%SRCROOT%': { uri: fileUri(root).replace(/\/?$/, '/') } },
        results: findings.map((f) => ({
          ruleId: f.code,
          ruleIndex: ruleIndex.get(f.code)!,
          level: SARIF_LEVEL[f.severity],
          message: { text: f.message },
          locations: f.file
            ? [
                {
                  physicalLocation: {
                    artifactLocation: uriOf(f.file),
                    region: {
                      startLine: f.line,
                      startColumn: f.column,
                      endLine: f.endLine,
                      endColumn: Math.max(f.endColumn, f.column),
                    },
                  },
                },
              ]
            : [],
        })),
      },
    ],
  };
}

function fileUri(file: string): string {
  const abs = path.resolve(file).split(path.sep).join('/');
  return 'file://' + (abs.startsWith('/') ? '' : '/') + abs.split('/').map(encodeURIComponent).join('/');
}

const esc = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, '\\n');

export function toMarkdown(a: FolderAudit): string {
  const out: string[] = [`# Piggyback audit of ${a.root}`, ''];
  const counts = { error: 0, warning: 0, info: 0 };
  for (const f of a.findings) counts[f.severity]++;
  out.push(`${counts.error} errors, ${counts.warning} warnings, ${counts.info} notes.`, '');
  out.push('## Templates', '');
  for (const t of a.templates) {
    const seg = t.prepared.audit?.segments;
    out.push(`### ${path.relative(a.root, t.path) || t.path}`, '');
    if (seg) {
      out.push('| segment | tokens | text |', '|---|---|---|');
      for (const name of ['prefix', 'postfix'] as const) {
        const s = seg[name];
        out.push(`| ${name} | ${seg.tokenized ? s.tokens.length : 'n/a'} | \`${esc(s.text)}\` |`);
      }
      out.push('');
    }
    if (t.prepared.audit?.defaultSystemPrompt)
      out.push(`Default system prompt: \`${esc(t.prepared.audit.defaultSystemPrompt)}\``, '');
  }
  out.push('## Datasets', '');
  if (a.datasets.length) {
    out.push(
      '| dataset | split | template (how chosen) | rows | valid | format | identical prefix | distinct prefixes | prefix tokens | median query tokens |',
      '|---|---|---|---|---|---|---|---|---|---|',
    );
    for (const d of a.datasets) {
      const s = d.report.surface;
      out.push(
        `| ${path.relative(a.root, d.file)} | ${d.split ?? ''} | ${d.template ? path.relative(a.root, d.template) || '.' : 'none'} (${d.association}) | ${d.report.rows} | ${d.report.validRows} | ${d.report.format} | ${s ? (100 * s.identicalPrefixShare).toFixed(1) + '%' : 'n/a'} | ${s?.distinctPrefixes ?? 'n/a'} | ${s?.prefixTokens ?? 'n/a'} | ${s?.medianQueryTokens ?? 'n/a'} |`,
      );
    }
    out.push('');
  } else out.push('No datasets found.', '');
  if (a.trainers.length) {
    out.push('## Trainer configs', '');
    for (const t of a.trainers) out.push(`- ${path.relative(a.root, t.config.file)}: ${esc(trainerLine(t))}`);
    out.push('');
  }
  out.push('## Findings', '');
  if (a.findings.length) {
    out.push('| severity | code | where | message |', '|---|---|---|---|');
    for (const f of a.findings)
      out.push(
        `| ${f.severity} | ${f.code} | ${f.file ? path.relative(a.root, f.file) : ''}:${f.line}:${f.column} | ${esc(f.message)} |`,
      );
  } else out.push('None.');
  out.push('');
  return out.join('\n');
}

/**
 * The audit for a terminal: aligned columns instead of Markdown tables, and findings as `file:line:col: severity
 * CODE: message` lines (what editors and problem matchers pick up). `finding` formats one finding (the CLI adds
 * colour there).
 */
export function toTerminal(a: FolderAudit, finding: (f: Finding) => string): string {
  const rel = (p: string) => path.relative(a.root, p) || '.';
  const counts = { error: 0, warning: 0, info: 0 };
  for (const f of a.findings) counts[f.severity]++;
  const out = [
    `Piggyback audit of ${a.root}: ${counts.error} errors, ${counts.warning} warnings, ${counts.info} notes`,
    '',
  ];
  const table = (rows: string[][]) => {
    const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
    return rows.map((r) => `  ${r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ')}`.trimEnd());
  };
  out.push('Templates');
  if (a.templates.length) {
    const rows = [['template', 'prefix', 'postfix', 'default system prompt']];
    for (const t of a.templates) {
      const seg = t.prepared.audit?.segments;
      const tokens = (name: 'prefix' | 'postfix') =>
        seg ? (seg.tokenized ? `${seg[name].tokens.length} tokens` : `${seg[name].text.length} chars`) : 'n/a';
      const sys = t.prepared.audit?.defaultSystemPrompt;
      rows.push([rel(t.path), tokens('prefix'), tokens('postfix'), sys ? `${sys.length} chars` : 'none']);
    }
    out.push(...table(rows));
  } else out.push('  none found');
  out.push('', 'Datasets');
  if (a.datasets.length) {
    const rows = [['dataset', 'split', 'template', 'rows', 'format', 'same prefix', 'prefix tokens', 'median query']];
    for (const d of a.datasets) {
      const s = d.report.surface;
      const probes = d.report.format === 'probes';
      rows.push([
        rel(d.file),
        d.split ?? '-',
        d.template ? `${rel(d.template)} (${d.association})` : 'none',
        `${d.report.validRows}/${d.report.rows}`,
        probes ? 'probes (not training data)' : d.report.format,
        s ? `${(100 * s.identicalPrefixShare).toFixed(1)}%` : 'n/a',
        String(s?.prefixTokens ?? 'n/a'),
        String(s?.medianQueryTokens ?? 'n/a'),
      ]);
    }
    out.push(...table(rows));
  } else out.push('  none found');
  if (a.trainers.length) {
    out.push('', 'Trainer configs');
    for (const t of a.trainers) out.push(`  ${rel(t.config.file)}  ${trainerLine(t)}`);
  }
  out.push('', 'Findings');
  if (a.findings.length) out.push(...a.findings.map(finding));
  else out.push('  none');
  return `${out.join('\n')}\n`;
}
