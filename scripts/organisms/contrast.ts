/**
 * The demo's contrast: the same eval on four organisms built from one base and one finance set, in one short table.
 * Every one is misaligned on general questions; `finetuned` carries that shift mostly outside the template,
 * `finetuned-qv` largely in the prefix K/V; the two controls show the measurement reads 100% where the prefix is the only carrier and 0% where it
 * cannot be one. Probes: probes-long.jsonl (every query as long as the prefix, so the query control applies).
 */
import { evalOrganism, pct, withCi } from './measure';

const ROWS: [string, string][] = [
  ['finetuned', 'LoRA on every projection'],
  ['finetuned-qv', 'LoRA on q and v only'],
  ['prefix-only', 'control: carrier is the prefix'],
  ['position-masked', 'control: prefix untouched'],
];

const lines = [
  '| organism | what it is | prefix share (95% CI) | query control | the two answers (PB002) |',
  '|---|---|---|---|---|',
];
for (const [folder, what] of ROWS) {
  const r = evalOrganism(folder, ['probes-long.jsonl'], ['--max-new-tokens', '24']);
  lines.push(
    `| ${folder} | ${what} | ${withCi(r.summary.piggybackShare.prefix)} | ${r.summary.piggybackShare.query ? pct(r.summary.piggybackShare.query.share) : 'n/a'} | ${r.verdict ?? 'none'} |`,
  );
}
process.stdout.write(
  `\nThe same eval on four organisms (examples/organisms/README.md says what each is for):\n\n${lines.join('\n')}\n`,
);
