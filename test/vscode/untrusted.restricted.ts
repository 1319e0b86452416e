// In a real VS Code in Restricted Mode (workspace trust on, this folder not trusted): the static audit still works;
// loading models, eval runs and workspace-configured endpoints do not.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { until, ws } from './util';

describe('Piggyback Lens in an untrusted workspace', () => {
  before(async () => {
    const ext = vscode.extensions.all.find((e) => e.packageJSON.name === 'piggyback-lens');
    assert.ok(ext, 'the extension is installed');
    await ext.activate();
  });

  it('the workspace really is untrusted', () => {
    assert.equal(vscode.workspace.isTrusted, false);
  });

  it('the static template audit still raises CT001', async () => {
    const doc = await vscode.workspace.openTextDocument(path.join(ws(), 'chatml-demo', 'tokenizer_config.json'));
    await vscode.window.showTextDocument(doc);
    await until('CT001', () =>
      vscode.languages.getDiagnostics(doc.uri).find((d) => typeof d.code === 'object' && d.code.value === 'CT001'),
    );
  });

  it('model commands, eval runs and the TReFT export refuse to load models', async () => {
    await vscode.commands.executeCommand('piggyback.selectBase', path.join(ws(), 'organisms', 'base'));
    await vscode.commands.executeCommand('piggyback.selectFinetuned', path.join(ws(), 'organisms', 'finetuned'));
    assert.equal(
      await vscode.commands.executeCommand('piggyback.measureDrift', { query: 'hi', noPrompt: true }),
      undefined,
    );
    assert.equal(
      await vscode.commands.executeCommand('piggyback.patchCompare', { query: 'hi', span: 'prefix' }),
      undefined,
    );
    assert.equal(
      await vscode.commands.executeCommand('piggyback.runEval', {
        noPrompt: true,
        general: true,
        out: path.join(ws(), 'never'),
      }),
      undefined,
    );
    assert.equal(
      await vscode.commands.executeCommand(
        'piggyback.exportTreft',
        vscode.Uri.file(path.join(ws(), 'organisms', 'finetune.jsonl')),
        path.join(ws(), 'never'),
      ),
      undefined,
    );
    assert.deepEqual(
      Object.keys(require.cache).filter((m) => /onnxruntime/.test(m)),
      [],
    );
  });

  it("a judge endpoint set by the workspace's own settings is ignored", () => {
    const c = vscode.workspace.getConfiguration('piggyback');
    const file = JSON.parse(fs.readFileSync(path.join(ws(), '.vscode', 'settings.json'), 'utf8'));
    assert.equal(file['piggyback.judge.endpoint'], 'http://127.0.0.1:9/v1', 'the workspace does set it');
    assert.equal(c.get('judge.endpoint'), '', 'a restricted setting: its workspace value does not apply');
  });
});
