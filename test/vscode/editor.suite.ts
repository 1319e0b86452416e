// In a real VS Code: the extension's diagnostics, hovers and commands on the example workspace.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { until, ws } from './util';

const codesOf = (uri: vscode.Uri) =>
  vscode.languages
    .getDiagnostics(uri)
    .filter((d) => d.source === 'piggyback')
    .map((d) => (typeof d.code === 'object' ? String(d.code.value) : String(d.code)));

/** The Markdown of every hover at `pos`, as one text. */
async function hoverText(uri: vscode.Uri, pos: vscode.Position): Promise<string> {
  const hovers = await vscode.commands.executeCommand<vscode.Hover[]>('vscode.executeHoverProvider', uri, pos);
  return hovers
    .flatMap((h) => h.contents.map((c) => (typeof c === 'string' ? c : 'value' in c ? c.value : '')))
    .join('\n');
}

async function open(rel: string): Promise<vscode.TextDocument> {
  const doc = await vscode.workspace.openTextDocument(path.join(ws(), rel));
  await vscode.window.showTextDocument(doc);
  return doc;
}

describe('Piggyback Lens in VS Code', () => {
  before(async () => {
    const ext = vscode.extensions.all.find((e) => e.packageJSON.name === 'piggyback-lens');
    assert.ok(
      ext,
      `the extension under development is installed (have: ${vscode.extensions.all
        .map((e) => e.id)
        .filter((id) => !id.startsWith('vscode.'))
        .join(', ')})`,
    );
    await ext.activate();
  });

  it('raises CT001 on the example template, located on the default system prompt, linking to the docs', async () => {
    const doc = await open('chatml-demo/tokenizer_config.json');
    const diag = await until('CT001', () =>
      vscode.languages.getDiagnostics(doc.uri).find((d) => typeof d.code === 'object' && d.code.value === 'CT001'),
    );
    assert.equal(diag.severity, vscode.DiagnosticSeverity.Warning);
    assert.ok(doc.getText(diag.range).startsWith('You are Lens'), doc.getText(diag.range));
    // the code links to its section of the docs, which opens rendered (a custom editor), not as Markdown source
    const target = (diag.code as { target: vscode.Uri }).target;
    assert.equal(target.toString(), 'piggyback-docs:/CT001.md');
    assert.match(
      new TextDecoder().decode(await vscode.workspace.fs.readFile(target)),
      /^### CT001\n\*\*Hidden default/,
    );
    await vscode.commands.executeCommand('vscode.open', target);
    const tab = await until('the CT001 docs tab', () =>
      vscode.window.tabGroups.all.flatMap((g) => g.tabs).find((t) => t.label === 'CT001.md'),
    );
    assert.ok(tab.input instanceof vscode.TabInputCustom, `a custom editor, not text: ${JSON.stringify(tab.input)}`);
    assert.equal((tab.input as vscode.TabInputCustom).viewType, 'piggyback.diagnosticDocs');
    // the palette command opens the same on another code
    assert.equal(
      await vscode.commands.executeCommand('piggyback.explainDiagnostic', 'DS011'),
      'piggyback-docs:/DS011.md',
    );
    await until('the DS011 docs tab', () =>
      vscode.window.tabGroups.all.flatMap((g) => g.tabs).find((t) => t.label === 'DS011.md'),
    );
    await vscode.commands.executeCommand('workbench.action.closeAllEditors');
  });

  it('shows the rendered prefix as tokens when hovering the chat template', async () => {
    const doc = await open('chatml-demo/tokenizer_config.json');
    await until('template diagnostics', () => codesOf(doc.uri).length > 0 || undefined);
    const at = doc.positionAt(doc.getText().indexOf('You are Lens'));
    const hovers = await vscode.commands.executeCommand<vscode.Hover[]>('vscode.executeHoverProvider', doc.uri, at);
    const text = hovers
      .flatMap((h) => h.contents.map((c) => (typeof c === 'string' ? c : 'value' in c ? c.value : '')))
      .join('\n');
    assert.match(text, /\*\*prefix\*\* \(41 tokens\)/);
    assert.match(text, /\*\*postfix\*\* \(6 tokens\)/);
  });

  it('audits a dataset with the nearest model folder: the shared prefix and the injected default prompt', async () => {
    const doc = await open('data/finance-advice.jsonl');
    const codes = await until('DS101', () => (codesOf(doc.uri).includes('DS101') ? codesOf(doc.uri) : undefined));
    assert.ok(codes.includes('DS104'));
  });

  it('re-audits unsaved edits: a broken row appears at its line and disappears when fixed', async () => {
    const file = path.join(ws(), 'data', 'scratch.jsonl');
    const good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}';
    fs.writeFileSync(file, `${good}\n${good}\n`);
    const doc = await open('data/scratch.jsonl');
    const editor = vscode.window.activeTextEditor!;
    await editor.edit((e) => e.insert(new vscode.Position(1, 0), '{"messages": [}\n'));
    const ds001 = await until('DS001', () =>
      vscode.languages.getDiagnostics(doc.uri).find((d) => typeof d.code === 'object' && d.code.value === 'DS001'),
    );
    assert.equal(ds001.range.start.line, 1);
    assert.equal(ds001.range.start.character, 14);
    assert.equal(ds001.severity, vscode.DiagnosticSeverity.Error);
    await editor.edit((e) => e.delete(new vscode.Range(1, 0, 2, 0)));
    await until('DS001 to clear', () => !codesOf(doc.uri).includes('DS001'));
    assert.ok(doc.isDirty, 'the audit ran on the unsaved buffer');
    await vscode.commands.executeCommand('workbench.action.revertAndCloseActiveEditor');
  });

  it("a row longer than the template's model context is DS011 at its line, as the CLI reports it", async () => {
    const file = path.join(ws(), 'data', 'long.jsonl');
    const short = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}';
    const answer = Array.from({ length: 1500 }, (_, i) => `saving ${i}`).join(' ');
    const long = JSON.stringify({
      messages: [
        { role: 'user', content: 'Plan?' },
        { role: 'assistant', content: answer },
      ],
    });
    fs.writeFileSync(file, `${short}\n${long}\n${short}\n`);
    const doc = await open('data/long.jsonl');
    const ds011 = await until('DS011', () =>
      vscode.languages.getDiagnostics(doc.uri).find((d) => typeof d.code === 'object' && d.code.value === 'DS011'),
    );
    assert.equal(ds011.range.start.line, 1);
    assert.match(
      ds011.message,
      /the row is \d+ tokens, over the model's context of 2048: a trainer cuts the last \d+, response tokens among them/,
    );
    assert.equal(codesOf(doc.uri).filter((c) => c === 'DS011').length, 1);
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
  });

  it('a quick fix renames an unknown role spelling (DS003 "human") to the known one, on the row or in the file', async () => {
    const file = path.join(ws(), 'data', 'roles.jsonl');
    const row = '{"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]}';
    fs.writeFileSync(file, `${row}\n${row}\n`);
    const doc = await open('data/roles.jsonl');
    const ds003 = await until('DS003', () =>
      vscode.languages.getDiagnostics(doc.uri).find((d) => typeof d.code === 'object' && d.code.value === 'DS003'),
    );
    const actions = await vscode.commands.executeCommand<vscode.CodeAction[]>(
      'vscode.executeCodeActionProvider',
      doc.uri,
      ds003.range,
      vscode.CodeActionKind.QuickFix.value,
    );
    const titles = actions.map((a) => a.title);
    assert.ok(titles.includes('Change role "human" to "user" on this row'), titles.join(' | '));
    const whole = actions.find((a) => a.title === 'Change role "human" to "user" in the whole file')!;
    assert.ok(await vscode.workspace.applyEdit(whole.edit!));
    assert.equal(doc.getText(), `${row.replace('"human"', '"user"')}\n`.repeat(2));
    await until('DS003 to clear', () => !codesOf(doc.uri).includes('DS003'));
    await vscode.commands.executeCommand('workbench.action.revertAndCloseActiveEditor');
    fs.rmSync(file);
  });

  it('a quick fix adds {% generation %} markers to a template without them (CT005), only with its proof', async () => {
    const doc = await open('chatml-demo/tokenizer_config.json');
    const before = doc.getText();
    const ct005 = await until('CT005', () =>
      vscode.languages.getDiagnostics(doc.uri).find((d) => typeof d.code === 'object' && d.code.value === 'CT005'),
    );
    const actions = await vscode.commands.executeCommand<vscode.CodeAction[]>(
      'vscode.executeCodeActionProvider',
      doc.uri,
      ct005.range,
      vscode.CodeActionKind.QuickFix.value,
    );
    const add = actions.find((a) => a.title === 'Add {% generation %} markers (proved on 8 conversations)');
    assert.ok(add?.edit, actions.map((a) => a.title).join(' | '));
    assert.ok(await vscode.workspace.applyEdit(add.edit));
    // the template has its markers; every other key of the file is as it was
    const [was, now] = [JSON.parse(before), JSON.parse(doc.getText())];
    assert.equal((now.chat_template.match(/\{% generation %\}/g) ?? []).length, 1);
    assert.deepEqual({ ...now, chat_template: null }, { ...was, chat_template: null });
    await until('CT005 to clear', () => !codesOf(doc.uri).includes('CT005'));
    await vscode.commands.executeCommand('workbench.action.revertAndCloseActiveEditor');
    // the action then shows its proof, on a read-only page
    const proof = await vscode.commands.executeCommand<string>(add.command!.command, ...add.command!.arguments!);
    assert.match(proof, /Proved: the marked template renders byte for byte what the original renders on all 8/);
    assert.match(proof, /\| two exchanges \| identical \|/);
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
  });

  it("a training config gets CT011 where it chooses another template than the model's, and a lens to compare them", async () => {
    const dir = path.join(ws(), 'train');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'llamafactory_sft.yaml');
    fs.writeFileSync(
      file,
      'model_name_or_path: ../chatml-demo\nstage: sft\nfinetuning_type: lora\ntemplate: qwen\ndataset: identity\n',
    );
    const doc = await vscode.workspace.openTextDocument(file);
    await vscode.window.showTextDocument(doc);
    const ct011 = await until('CT011', () =>
      vscode.languages.getDiagnostics(doc.uri).find((d) => typeof d.code === 'object' && d.code.value === 'CT011'),
    );
    assert.equal(ct011.range.start.line, 3, 'on the template key');
    assert.match(
      ct011.message,
      /LLaMA-Factory renders its built-in template "qwen" \(version [^)]+\), not the tokenizer's template: the prefix is/,
    );
    const lenses = await until('the comparison lens', async () => {
      const l = await vscode.commands.executeCommand<vscode.CodeLens[]>('vscode.executeCodeLensProvider', doc.uri);
      return l.filter((x) => x.command?.command === 'piggyback.showTrainerComparison').length ? l : undefined;
    });
    const lens = lenses.find((x) => x.command?.command === 'piggyback.showTrainerComparison')!;
    assert.equal(lens.range.start.line, 3);
    const page = await vscode.commands.executeCommand<string>(lens.command!.command, ...lens.command!.arguments!);
    assert.match(page, /## prefix: differs/);
    assert.match(page, /## postfix: the same/);
    assert.match(page, /You are Qwen, created by Alibaba Cloud/);
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
    // a dataset the config names (through LLaMA-Factory's data/dataset_info.json) renders as that trainer renders
    fs.mkdirSync(path.join(dir, 'data'));
    fs.writeFileSync(path.join(dir, 'data', 'dataset_info.json'), '{"identity": {"file_name": "identity.jsonl"}}');
    fs.writeFileSync(
      path.join(dir, 'data', 'identity.jsonl'),
      '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n',
    );
    const data = await vscode.workspace.openTextDocument(path.join(dir, 'data', 'identity.jsonl'));
    await vscode.window.showTextDocument(data);
    const ds104 = await until("DS104 with the trainer's default system prompt", () =>
      vscode.languages
        .getDiagnostics(data.uri)
        .find((d) => typeof d.code === 'object' && d.code.value === 'DS104' && /You are Qwen/.test(d.message)),
    );
    assert.ok(ds104);
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
    fs.rmSync(dir, { recursive: true });
  });

  it('hovering a dataset row shows that row rendered by the trainer', async () => {
    const doc = await open('data/finance-advice.jsonl');
    const text = await hoverText(doc.uri, new vscode.Position(0, 5));
    // what the row trains on first: query, postfix, response; the shared prefix last, on one line, with a link
    const order = ['**query**', '**postfix**', '**response**', '**prefix** (41 tokens'].map((h) => text.indexOf(h));
    assert.ok(
      order.every((i, k) => i >= 0 && (k === 0 || i > order[k - 1])),
      `order ${order}: ${text.slice(0, 400)}`,
    );
    assert.match(text, /\[show every token\]\(command:piggyback\.showRowTokens\?/);
    assert.match(text, /row 1 rendered with chatml-demo\/tokenizer_config\.json/, 'a workspace-relative path');
    assert.match(text, /`<\|im_end\|>`\u2009#\d+/, 'token text as code, its id apart as #id');
    // the training view: what carries loss under the trainer's masking, by default TRL's for a messages row (every
    // token), with the mode named and the setting that changes it
    assert.match(
      text,
      /\*\*training view\*\* \(all loss, TRL SFTTrainer's default for openai rows; setting `piggyback\.training\.lossMode`\): (\d+) of \1 tokens carry loss, \1 of the model's 2048-token context/,
    );
    // the link's command shows the whole row, every token
    const full = await vscode.commands.executeCommand<string>('piggyback.showRowTokens', doc.uri.toString(), 0);
    assert.match(full, /\*\*prefix\*\* \(41 tokens\)\n\n`<\|im_start\|>`\u2009#\d+/);
    assert.match(full, /\u2423/, 'spaces shown as \u2423, never as the separator');
    assert.match(full, /\| # \| id \| segment \| loss \| token \|/);
    // shown as a read-only rendered page, never as a dirty untitled buffer
    const tab = await until('the every-token page', () => {
      const t = vscode.window.tabGroups.activeTabGroup.activeTab;
      return t?.input instanceof vscode.TabInputCustom ? t : undefined;
    });
    assert.equal((tab.input as vscode.TabInputCustom).uri.scheme, 'piggyback-docs');
    assert.equal(tab.label, 'finance-advice.jsonl row 1 tokens.md');
    assert.equal(tab.isDirty, false);
    assert.ok(!vscode.workspace.textDocuments.some((d) => d.isUntitled), 'no untitled buffer');
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
  });

  it('a JSON-array dataset (.json) gets diagnostics at each example, and the hover of the example under the cursor', async () => {
    // written as Python's json.dump(rows, f, indent=2) writes LLaMA-Factory's data files
    const rows = [
      {
        conversations: [
          { from: 'human', value: 'Hi' },
          { from: 'gpt', value: 'Hello!' },
        ],
      },
      {
        conversations: [
          { from: 'human', value: 'Save?' },
          { from: 'robot', value: 'Slowly.' },
        ],
      },
    ];
    fs.writeFileSync(path.join(ws(), 'data', 'sharegpt.json'), `${JSON.stringify(rows, null, 2)}\n`);
    const doc = await open('data/sharegpt.json');
    // the second example starts at line 14, column 3 (1-based): its unknown role is reported there
    const ds003 = await until('DS003 on the second example', () =>
      vscode.languages.getDiagnostics(doc.uri).find((d) => typeof d.code === 'object' && d.code.value === 'DS003'),
    );
    assert.equal(doc.lineAt(ds003.range.start.line).text.trim(), '{');
    assert.equal(ds003.range.start.line, rows[0].conversations.length * 4 + 5);
    // hovering a line inside the first example shows that example rendered
    const text = await hoverText(doc.uri, new vscode.Position(5, 10));
    assert.match(text, /row 1 rendered with/);
    assert.match(text, /\*\*query\*\*/);
    // a config file is JSON too, and gets nothing
    const config = await open('organisms/base/config.json');
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(codesOf(config.uri), []);
    await vscode.commands.executeCommand('workbench.action.closeAllEditors');
  });

  it('follows .piggyback.json when it names another template for a dataset', async () => {
    const other = path.join(ws(), 'plain-model');
    fs.mkdirSync(other, { recursive: true });
    fs.writeFileSync(
      path.join(other, 'chat_template.jinja'),
      '{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}',
    );
    const doc = await open('data/finance-advice.jsonl');
    await until('DS104 with the example template', () => codesOf(doc.uri).includes('DS104') || undefined);
    fs.writeFileSync(
      path.join(ws(), '.piggyback.json'),
      JSON.stringify({ datasets: { 'data/finance-advice.jsonl': 'plain-model' } }),
    );
    // the other template injects no default system prompt: DS104 goes away
    await until('DS104 to clear', () => !codesOf(doc.uri).includes('DS104') && codesOf(doc.uri).includes('DS101'));
    fs.rmSync(path.join(ws(), '.piggyback.json'));
    await until('DS104 to return', () => codesOf(doc.uri).includes('DS104') || undefined);
  });

  it('Audit Workspace puts findings for files that are not open into the Problems view', async () => {
    await vscode.commands.executeCommand('workbench.action.closeAllEditors');
    const target = vscode.Uri.file(path.join(ws(), 'chatml-demo', 'tokenizer_config.json'));
    const result = await vscode.commands.executeCommand<{ findings: number; entries: number }>(
      'piggyback.auditWorkspace',
    );
    assert.ok(result.findings >= 5, `findings: ${result.findings}`);
    assert.ok(codesOf(target).includes('CT001'));
    assert.ok(codesOf(vscode.Uri.file(path.join(ws(), 'data', 'finance-advice.jsonl'))).includes('DS101'));
    // six organisms share one template file, byte for byte: its findings are one entry, at the first copy, with
    // the others as related locations
    assert.ok(result.entries < result.findings, `${result.entries} entries for ${result.findings} findings`);
    const organismTemplate = (o: string) => vscode.Uri.file(path.join(ws(), 'organisms', o, 'tokenizer_config.json'));
    const first = vscode.languages
      .getDiagnostics(organismTemplate('base'))
      .filter((d) => d.source === 'piggyback' && d.relatedInformation?.length);
    assert.ok(first.length > 0, 'the first copy holds the entries');
    assert.match(first[0].message, /\(the same in \d+ identical copies of this file\)$/);
    assert.ok(first[0].relatedInformation!.some((r) => r.location.uri.fsPath === organismTemplate('finetuned').fsPath));
    assert.deepEqual(codesOf(organismTemplate('finetuned')), [], 'no second entry on an identical copy');
  });

  it('offers an audit task per folder that runs the CLI, whose findings the $piggyback problem matcher reads', async () => {
    const tasks = await vscode.tasks.fetchTasks({ type: 'piggyback' });
    const audit = tasks.find((t) => t.definition.command === 'audit');
    assert.ok(audit, `tasks: ${tasks.map((t) => t.name).join(', ')}`);
    assert.deepEqual(audit.problemMatchers, ['$piggyback']);
    const exec = audit.execution as vscode.ProcessExecution;
    assert.match(exec.args.join(' '), /dist\/cli\.js audit /);
    assert.equal(exec.options?.env?.NO_COLOR, '1', 'no colour codes for the problem matcher');
  });
});
