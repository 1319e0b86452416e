import * as fs from 'node:fs';
import * as path from 'node:path';
import { auditFolder } from '../../app/audits';
import { folderJson, toMarkdown, toSarif, toTerminal } from '../../app/auditReport';
import { hasErrors } from '../../domain/findings';
import { type Command, SCAN_WORKER } from '../command';
import { TEMPLATE_OPTIONS, UsageError } from '../options';
import { describeFinding } from '../output';

export const audit: Command = {
  name: 'audit',
  usage: 'piggyback audit <folder> [--template <source>] [--sarif <out.sarif>] [--md <out.md|->] [--json]',
  about:
    'Audits every model folder and dataset under a folder: a table on the terminal; SARIF, Markdown (--md - to stdout) and JSON for CI.',
  options: ['template', ...TEMPLATE_OPTIONS, 'sarif', 'md', 'json'],
  async run(args, out) {
    const root = path.resolve(args.positionals[0] ?? '.');
    if (!fs.existsSync(root) || !fs.statSync(root).isDirectory()) throw new UsageError(`not a folder: ${root}`);
    // a relative --template is relative to where the command runs, like every other path argument
    const a = await auditFolder(root, {
      tokenizer: args.string('tokenizer'),
      name: args.string('name'),
      kwargs: args.kwargs(),
      template: args.path('template'),
      workerFile: SCAN_WORKER,
    });
    const sarif = args.string('sarif');
    const md = args.string('md');
    if (sarif) fs.writeFileSync(sarif, `${JSON.stringify(toSarif(a.findings, root), null, 2)}\n`);
    if (md && md !== '-') fs.writeFileSync(md, toMarkdown(a));
    // JSON with --json, Markdown with --md - (to stdout), else a table for the terminal
    if (args.flag('json')) out(`${JSON.stringify(folderJson(a), null, 2)}\n`);
    else if (md === '-') out(toMarkdown(a));
    else out(toTerminal(a, describeFinding));
    return hasErrors(a.findings) ? 1 : 0;
  },
};
