// `piggyback eval --inspect-log`: the organisms' eval written as an Inspect AI eval log, checked against the schema
// of Inspect's reader (test/fixtures/inspect/eval-log.schema.json, derived from Inspect's pydantic models by
// scripts/inspect-log-schema.py), and against the run folder it came from.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import Ajv from 'ajv';
import { inspectLog } from '../../src/app/eval/inspectLog';
import { FIXTURES, ORGANISMS, organismEval, tempDir } from '../helpers';

// biome-ignore lint/suspicious/noExplicitAny: a parsed log, read field by field
type Json = Record<string, any>;

const schema = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'inspect', 'eval-log.schema.json'), 'utf8'));
const validate = new Ajv({ allErrors: true, strict: false }).compile(schema);
// Inspect's published log-schema.json (the viewer's types) requires every field, as its writer dumps every field: the
// same models with every property required
const everyField = structuredClone(schema);
// EvalLog's location and etag are not written (pydantic's exclude=True): where a log was read from
for (const [name, d] of Object.entries(everyField.$defs) as [string, { properties: object; required: string[] }][])
  d.required = Object.keys(d.properties).filter((k) => name !== 'EvalLog' || (k !== 'location' && k !== 'etag'));
const validateEvery = new Ajv({ allErrors: true, strict: false }).compile(everyField);
const report = (v: typeof validate) =>
  (v.errors ?? []).map((e) => `${e.instancePath} ${e.message} ${JSON.stringify(e.params)}`);
const problems = (log: unknown) => [
  ...(validate(log) ? [] : report(validate)),
  ...(validateEvery(log) ? [] : report(validateEvery).map((e) => `(every field) ${e}`)),
];
const lines = (file: string) =>
  fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));

describe('Inspect AI log of an eval run (--inspect-log)', () => {
  const where = tempDir();
  const file = path.join(where, 'logs', 'organisms.json');
  const run = organismEval('finetuned', 'probes.jsonl', [
    '--extra',
    `treft=${path.join(ORGANISMS, 'treft')}`,
    '--inspect-log',
    file,
  ]);
  const text = fs.readFileSync(file, 'utf8');
  const log: Json = JSON.parse(text);
  const results = lines(path.join(run.out, 'results.jsonl'));
  const probes = lines(path.join(run.out, 'probes.jsonl'));

  it("is a log Inspect's reader takes, written as its writer writes: every field, none it does not know, types as declared", () => {
    assert.deepEqual(problems(log), []);
    assert.equal(log.version, 2);
    assert.equal(log.status, 'success');
    // the validator is not a formality: a misspelt field and a missing one are caught
    const broken = structuredClone(log);
    broken.samples[0].targt = broken.samples[0].target;
    delete broken.samples[0].target;
    assert.equal(problems(broken).length >= 2, true, 'a misspelt sample field passes the schema');
  });

  it('holds one sample per probe, in the run order, with its input, target and the finetuned answer', () => {
    assert.deepEqual(
      log.samples.map((s: Json) => s.id),
      probes.map((p) => p.id),
    );
    assert.deepEqual(
      log.eval.dataset.sample_ids,
      probes.map((p) => p.id),
    );
    for (const [i, s] of (log.samples as Json[]).entries()) {
      const p = probes[i];
      assert.equal(s.input, p.question);
      assert.equal(s.target, p.aligned);
      const ft = results.find((r) => r.probe === p.id && r.condition === 'finetuned');
      assert.equal(s.output.completion, ft.generation);
      assert.equal(s.output.choices[0].message.content, ft.generation);
      assert.equal(s.messages.at(-1).content, ft.generation);
    }
  });

  it("scores every condition on every sample with that condition's own answer and figures", () => {
    const conditions: string[] = run.manifest.conditions.map((c: Json) => c.label);
    assert.ok(conditions.includes('treft') && conditions.includes('finetuned+prefix'));
    for (const s of log.samples as Json[])
      for (const c of conditions) {
        const row = results.find((r) => r.probe === s.id && r.condition === c);
        // a condition skipped for a probe (a query shorter than the prefix has no query control) has no score
        if (!row) {
          assert.equal(s.scores[`kl/${c}`], undefined);
          continue;
        }
        assert.equal(s.scores[`kl/${c}`].value, row.klToBase, `${s.id} kl/${c}`);
        assert.equal(s.scores[`kl/${c}`].answer, row.generation, `${s.id} answer under ${c}`);
        assert.equal(s.scores[`margin/${c}`]?.value ?? null, row.margin, `${s.id} margin/${c}`);
      }
    // the patched answers differ from the finetuned ones on some probe: the answers really are per condition
    assert.ok((log.samples as Json[]).some((s) => s.scores['kl/base'].answer !== s.scores['kl/finetuned'].answer));
  });

  it("carries the report's figures and two answers, and names checkpoints by folder name, never this machine's paths", () => {
    const byName = new Map((log.results.scores as Json[]).map((s) => [s.name, s.metrics]));
    for (const c of run.summary.conditions) {
      // a condition no probe ran (the query control, when every query is shorter than the prefix) has no scorer
      if (!c.probes) {
        assert.equal(byName.has(`kl/${c.label}`), false);
        continue;
      }
      assert.equal(byName.get(`kl/${c.label}`).mean_general.value, c.general.meanKlToBase);
      assert.equal(byName.get(`margin/${c.label}`).mean_in_domain.value, c.inDomain.meanMargin);
    }
    assert.match(log.results.metadata.where_it_lives, /prefix patch removes \d+%/);
    assert.ok(run.md.includes(log.results.metadata.behaviour_shift), 'the shift answer is not the report\u2019s');
    assert.deepEqual(log.results.metadata.piggyback_share, run.summary.piggybackShare);
    assert.equal(log.eval.model, 'piggyback-lens/finetuned');
    assert.deepEqual(log.eval.metadata.extra, { treft: 'treft' });
    assert.ok(!text.includes(ORGANISMS) && !text.includes(run.out), 'a local path is in the log');
  });

  it('an unfinished run is a started log, its finished probes scored; a probe with a system prompt keeps its messages', () => {
    const dir = path.join(where, 'partial');
    fs.cpSync(run.out, dir, { recursive: true });
    // the last probe's rows are gone (the run was stopped), and the first probe had a system prompt
    const last = probes.at(-1).id;
    fs.writeFileSync(
      path.join(dir, 'results.jsonl'),
      results
        .filter((r) => r.probe !== last)
        .map((r) => JSON.stringify(r) + '\n')
        .join(''),
    );
    const edited = [{ ...probes[0], system: 'Answer briefly.' }, ...probes.slice(1)];
    fs.writeFileSync(path.join(dir, 'probes.jsonl'), edited.map((p) => JSON.stringify(p) + '\n').join(''));
    const partial: Json = inspectLog(dir);
    assert.deepEqual(problems(partial), []);
    assert.equal(partial.status, 'started');
    assert.equal(partial.stats.completed_at, '');
    assert.equal(partial.results.completed_samples, probes.length - 1);
    assert.deepEqual(partial.samples.at(-1).scores, {});
    assert.deepEqual(
      partial.samples[0].input.map((m: Json) => [m.role, m.content]),
      [
        ['system', 'Answer briefly.'],
        ['user', probes[0].question],
      ],
    );
  });
});
