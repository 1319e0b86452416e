/**
 * piggyback: the headless audit for CI. Same core as the extension; JSON output is a public interface.
 * Exit codes: 0 clean, 1 an error-level finding, 2 bad usage or an unexpected failure.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { DatasetReport } from '../core/dataset/audit';
import { Finding, hasErrors } from '../core/findings';
import { auditDatasetWith, auditFolder, datasetFindings, prepareTemplate, PreparedTemplate } from '../core/pipeline';
import { datasetJson, folderJson, templateJson, toMarkdown, toSarif, TOOL_VERSION } from '../core/report';

const USAGE = `piggyback ${TOOL_VERSION}: where a chat template carries a finetune's behaviour onto every query

Usage:
  piggyback template <source> [--tokenizer <dir|tokenizer.json>] [--name <template>] [--kwargs <json>] [--json]
  piggyback dataset <file.jsonl> --template <source> [--tokenizer ...] [--kwargs <json>] [--json]
  piggyback audit <folder> [--template <source>] [--sarif <out.sarif>] [--md <out.md>] [--json]

<source> is tokenizer_config.json, chat_template.jinja, chat_template.json, any .jinja file, or a model folder.
--kwargs passes template variables as the trainer does, e.g. '{"enable_thinking": false}'.
Exit code 1 when an error-level finding exists, 2 on bad usage.`;

class UsageError extends Error {}

export async function main(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        tokenizer: { type: 'string' },
        template: { type: 'string' },
        name: { type: 'string' },
        kwargs: { type: 'string' },
        json: { type: 'boolean' },
        sarif: { type: 'string' },
        md: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    });
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.version) {
    out(`${TOOL_VERSION}\n`);
    return 0;
  }
  const [command, target] = positionals;
  if (values.help || !command) {
    out(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  try {
    const kwargs = parseKwargs(values.kwargs);
    const common = { tokenizer: values.tokenizer, name: values.name, kwargs };
    switch (command) {
      case 'template': {
        if (!target) throw new UsageError('template needs a <source>');
        const p = prepareTemplate(path.resolve(target), common);
        out(values.json ? JSON.stringify(templateJson(p), null, 2) + '\n' : describeTemplate(p));
        return hasErrors(p.findings) ? 1 : 0;
      }
      case 'dataset': {
        if (!target) throw new UsageError('dataset needs a <file.jsonl>');
        if (!values.template) throw new UsageError('dataset needs --template <source>');
        if (!fs.existsSync(target)) throw new UsageError(`no such file: ${target}`);
        const p = prepareTemplate(path.resolve(values.template), common);
        const report = await auditDatasetWith(path.resolve(target), p);
        const findings = [...p.findings.filter((f) => f.severity === 'error'), ...datasetFindings(report)];
        if (values.json) out(JSON.stringify({ ...datasetJson(report), template: templateJson(p) }, null, 2) + '\n');
        else out(describeFindings(findings) + describeSurface(report));
        return hasErrors(findings) ? 1 : 0;
      }
      case 'audit': {
        const root = path.resolve(target ?? '.');
        if (!fs.existsSync(root) || !fs.statSync(root).isDirectory()) throw new UsageError(`not a folder: ${root}`);
        const a = await auditFolder(root, { ...common, template: values.template });
        if (values.sarif) fs.writeFileSync(values.sarif, JSON.stringify(toSarif(a.findings, root), null, 2) + '\n');
        if (values.md) fs.writeFileSync(values.md, toMarkdown(a));
        out(values.json ? JSON.stringify(folderJson(a), null, 2) + '\n' : toMarkdown(a));
        return hasErrors(a.findings) ? 1 : 0;
      }
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`piggyback: ${e.message}\n\n${USAGE}\n`);
      return 2;
    }
    process.stderr.write(`piggyback: ${(e as Error).stack ?? e}\n`);
    return 2;
  }
}

function parseKwargs(text: string | undefined): Record<string, unknown> {
  if (!text) return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--kwargs must be a JSON object: ${(e as Error).message}`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new UsageError('--kwargs must be a JSON object');
  return v as Record<string, unknown>;
}

const show = (s: string) => JSON.stringify(s);

function describeTemplate(p: PreparedTemplate): string {
  const lines: string[] = [];
  if (p.source) lines.push(`template: ${p.source.file} (${p.source.name})`, `tokenizer: ${p.tokenizer?.file ?? 'none (no token counts)'}`);
  const seg = p.audit?.segments;
  if (seg) {
    for (const name of ['prefix', 'query', 'postfix'] as const) {
      const s = seg[name];
      lines.push(`${name.padEnd(8)} ${seg.tokenized ? `${String(s.tokens.length).padStart(4)} tokens ` : ''}${show(s.text)}`);
    }
  }
  return lines.join('\n') + '\n' + describeFindings(p.findings);
}

function describeFindings(findings: Finding[]): string {
  if (findings.length === 0) return 'no findings\n';
  return findings.map((f) => `${f.file ?? ''}:${f.line}:${f.column}: ${f.severity} ${f.code}: ${f.message}`).join('\n') + '\n';
}

function describeSurface(r: DatasetReport): string {
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
  return lines.join('\n') + '\n';
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e) => {
      process.stderr.write(`piggyback: ${(e as Error).stack ?? e}\n`);
      process.exitCode = 2;
    },
  );
}
