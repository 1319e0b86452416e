// In a real VS Code: checkpoints, the model host, drift, patching, code lenses and the dashboard.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { DriftView, PatchView } from '../../src/core/dashboardProtocol';

const ws = () => vscode.workspace.workspaceFolders![0].uri.fsPath;
const organism = (name: string) => path.join(ws(), 'organisms', name);

describe('Piggyback Lens models in VS Code', () => {
  before(async () => {
    assert.equal(vscode.workspace.isTrusted, true, 'the test workspace is trusted');
    await vscode.commands.executeCommand('piggyback.selectBase', organism('base'));
    await vscode.commands.executeCommand('piggyback.selectFinetuned', organism('finetuned'));
  });

  it('code lenses on the template and on every dataset row, resolved with their commands', async () => {
    const tpl = vscode.Uri.file(path.join(organism('finetuned'), 'tokenizer_config.json'));
    await vscode.workspace.openTextDocument(tpl);
    const lenses = await vscode.commands.executeCommand<vscode.CodeLens[]>('vscode.executeCodeLensProvider', tpl, 10);
    const titles = lenses.map((l) => l.command?.title).filter(Boolean);
    for (const t of ['Patch prefix and compare', 'Patch postfix and compare', 'Show drift']) assert.ok(titles.includes(t), `${t} in ${titles}`);
    const data = vscode.Uri.file(path.join(ws(), 'organisms', 'finetune.jsonl'));
    await vscode.workspace.openTextDocument(data);
    const rowLenses = await vscode.commands.executeCommand<vscode.CodeLens[]>('vscode.executeCodeLensProvider', data, 5);
    const row = rowLenses.find((l) => l.range.start.line === 0)!;
    assert.equal(row.command?.command, 'piggyback.patchCompare');
    assert.equal(typeof (row.command?.arguments?.[0] as { query: string }).query, 'string');
  });

  it('measures prefix drift through the real host and puts PB001 on the template', async () => {
    const template = path.join(organism('finetuned'), 'tokenizer_config.json');
    const view = await vscode.commands.executeCommand<DriftView>('piggyback.measureDrift', { template, query: 'I feel bored. What should I do?' });
    assert.ok(view, 'a drift result');
    assert.equal(view.layers, 4);
    assert.ok(view.treft > 0.05);
    assert.equal(view.segments[0].name, 'prefix');
    assert.equal(view.segments[0].key.length, 4);
    const diag = vscode.languages.getDiagnostics(vscode.Uri.file(template)).find((d) => typeof d.code === 'object' && d.code.value === 'PB001');
    assert.ok(diag, 'PB001 diagnostic');
    assert.match(diag.message, /prefix drift between base and finetuned: mean [\d.]+ \(TReFT value\), top layer \d/);
  });

  it('patches the prefix and compares, side by side in the dashboard (the row code lens path)', async () => {
    const view = await vscode.commands.executeCommand<PatchView>('piggyback.patchCompare', { query: 'If you ruled the world, what would you do?', span: 'both' });
    assert.ok(view);
    assert.ok(view.kl.finetuned > 0);
    for (const k of ['base', 'finetuned', 'patched'] as const) assert.ok(view.generations[k].length > 0, k);
    assert.equal(view.patchedPositions, 28);
  });

  it('the extension host never loads onnxruntime: models run only in the host process', () => {
    const loaded = Object.keys(require.cache).filter((m) => /onnxruntime/.test(m));
    assert.deepEqual(loaded, []);
  });

  it('a missing checkpoint is explained, not a silent failure', async () => {
    // a folder without an ONNX decoder is refused (with an error message), so the pair is unchanged and still works
    await vscode.commands.executeCommand('piggyback.selectBase', path.join(ws(), 'data'));
    const view = await vscode.commands.executeCommand<DriftView>('piggyback.measureDrift', { query: 'hi', noPrompt: true });
    assert.ok(view && view.treft > 0);
  });

  after(async function () {
    // set the scene for the screenshots (the template with its code lenses beside the dashboard), then wait for the
    // driver to take them: once the suite ends, the extension host and its webviews go away
    const dir = process.env.PIGGYBACK_SCREENSHOT_SIGNAL;
    if (!dir) return;
    this.timeout(60_000);
    await vscode.commands.executeCommand('workbench.action.closeAllEditors');
    await vscode.commands.executeCommand('workbench.action.closePanel');
    const doc = await vscode.workspace.openTextDocument(path.join(organism('finetuned'), 'tokenizer_config.json'));
    const editor = await vscode.window.showTextDocument(doc, vscode.ViewColumn.One);
    editor.revealRange(new vscode.Range(25, 0, 45, 0), vscode.TextEditorRevealType.AtTop);
    await vscode.commands.executeCommand('piggyback.openDashboard');
    await new Promise((r) => setTimeout(r, 2000));
    fs.writeFileSync(path.join(dir, 'ready'), '');
    const end = Date.now() + 45_000;
    while (!fs.existsSync(path.join(dir, 'done')) && Date.now() < end) await new Promise((r) => setTimeout(r, 200));
  });
});
