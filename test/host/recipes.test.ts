// The cluster recipes (recipes/), run here as far as they can be without a cluster: the Slurm scripts as an array's
// tasks would run them, the Kubernetes Indexed Job's commands with the index Kubernetes would set, and the container
// image's file list as the only files the CLI has. Each ends in a merged run equal to an unsharded one.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { ORGANISMS, pairArgs, ROOT, tempDir } from '../helpers';

const RECIPES = path.join(ROOT, 'recipes');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const EVAL_ARGS = `--probes ${path.join(ORGANISMS, 'probes.jsonl')} --perturb-trials 0 --max-new-tokens 8`;

/** A `piggyback` command on PATH that runs this checkout's CLI, as the installed bin would. */
function piggybackOnPath(): string {
  const bin = tempDir();
  fs.writeFileSync(path.join(bin, 'piggyback'), `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`, {
    mode: 0o755,
  });
  return bin;
}

function sh(script: string, args: string[], env: NodeJS.ProcessEnv) {
  const r = spawnSync('bash', [script, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  return r;
}

/** One unsharded run of the same request, to compare merged runs with. */
const reference = (() => {
  let dir: string | undefined;
  return () => {
    if (dir) return dir;
    dir = path.join(tempDir(), 'full');
    const r = spawnSync(
      process.execPath,
      [CLI, 'eval', ...pairArgs(), '--threads', '1', '--out', dir, ...EVAL_ARGS.split(' ')],
      { encoding: 'utf8' },
    );
    assert.ok(r.status === 0 || r.status === 1, r.stderr);
    return dir;
  };
})();

const sameRun = (merged: string) => {
  for (const f of ['manifest.json', 'results.jsonl', 'summary.json', 'report.md'])
    assert.equal(
      fs.readFileSync(path.join(merged, f), 'utf8'),
      fs.readFileSync(path.join(reference(), f), 'utf8'),
      `${f} of the merged run`,
    );
};

describe('cluster recipes', () => {
  it('Slurm: the array script as tasks 0 and 1 of 2, then the merge script, give the unsharded run', () => {
    for (const f of ['eval-shard.sbatch', 'merge.sbatch', 'submit.sh']) {
      const file = path.join(RECIPES, 'slurm', f);
      assert.equal(spawnSync('bash', ['-n', file]).status, 0, `${f} parses`);
      // every #SBATCH line is one long option sbatch knows the form of
      for (const l of fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter((x) => x.startsWith('#SBATCH')))
        assert.match(l, /^#SBATCH --[a-z-]+=\S+$/, l);
    }
    const runs = tempDir();
    const env = {
      SHARDS: '2',
      BASE: path.join(ORGANISMS, 'base'),
      FINETUNED: path.join(ORGANISMS, 'finetuned'),
      RUNS: runs,
      PIGGYBACK: `${process.execPath} ${CLI}`,
      EVAL_ARGS,
      SLURM_CPUS_PER_TASK: '1',
    };
    for (const task of ['0', '1']) {
      const r = sh(path.join(RECIPES, 'slurm', 'eval-shard.sbatch'), [], { ...env, SLURM_ARRAY_TASK_ID: task });
      assert.ok(r.status === 0 || r.status === 1, r.stderr);
    }
    const missing = sh(path.join(RECIPES, 'slurm', 'eval-shard.sbatch'), [], env);
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /run as a Slurm array task/);
    const m = sh(path.join(RECIPES, 'slurm', 'merge.sbatch'), [], env);
    assert.ok(m.status === 0 || m.status === 1, m.stderr);
    assert.match(m.stderr, /merged shards 0, 1 of 2/);
    sameRun(path.join(runs, 'merged'));
    assert.ok(fs.existsSync(path.join(runs, 'findings.sarif')));
  });

  it('Kubernetes: an Indexed Job whose pods, given JOB_COMPLETION_INDEX, and the merge Job give the unsharded run', () => {
    const docs = parseAllDocuments(fs.readFileSync(path.join(RECIPES, 'kubernetes', 'eval-indexed-job.yaml'), 'utf8'));
    assert.deepEqual(
      docs.map((d) => d.errors),
      [[], []],
    );
    type Container = { name: string; image: string; env: { name: string; value: string }[]; args: string[] };
    type Job = {
      apiVersion: string;
      kind: string;
      metadata: { name: string };
      spec: {
        completionMode?: string;
        completions: number;
        parallelism?: number;
        backoffLimitPerIndex?: number;
        template: {
          spec: {
            restartPolicy: string;
            containers: Container[];
            volumes: { persistentVolumeClaim: { claimName: string } }[];
          };
        };
      };
    };
    const [shards, merge] = docs.map((d) => d.toJS() as Job);
    for (const j of [shards, merge]) {
      assert.equal(j.apiVersion, 'batch/v1');
      assert.equal(j.kind, 'Job');
      // a Job's pods may not restart in place (Never or OnFailure); the index retries need Never
      assert.equal(j.spec.template.spec.restartPolicy, 'Never');
    }
    // what the API server checks for an Indexed Job: completions set, parallelism at most 10^5
    assert.equal(shards.spec.completionMode, 'Indexed');
    const env = Object.fromEntries(shards.spec.template.spec.containers[0].env.map((e) => [e.name, e.value]));
    assert.equal(Number(env.SHARDS), shards.spec.completions, 'SHARDS is the number of indices');
    assert.ok((shards.spec.parallelism ?? 1) <= 100_000);
    assert.equal(
      merge.spec.template.spec.volumes[0].persistentVolumeClaim.claimName,
      shards.spec.template.spec.volumes[0].persistentVolumeClaim.claimName,
      'the merge reads the volume the shards wrote',
    );
    // the pods' commands, run here with /shared mapped to a temporary folder and piggyback on PATH
    const shared = tempDir();
    const local = (v: string) => v.replace(/^\/shared/, shared);
    const podEnv = {
      PATH: `${piggybackOnPath()}:${process.env.PATH}`,
      SHARDS: env.SHARDS,
      BASE: path.join(ORGANISMS, 'base'),
      FINETUNED: path.join(ORGANISMS, 'finetuned'),
      RUNS: local(env.RUNS),
      EVAL_ARGS: `${EVAL_ARGS} --threads 1`,
    };
    const [shell, flag] = ['/bin/sh', '-c'];
    for (let i = 0; i < shards.spec.completions; i++) {
      const r = spawnSync(shell, [flag, shards.spec.template.spec.containers[0].args[0]], {
        encoding: 'utf8',
        env: { ...process.env, ...podEnv, JOB_COMPLETION_INDEX: String(i) },
      });
      assert.ok(r.status === 0 || r.status === 1, r.stderr);
    }
    const mergeEnv = Object.fromEntries(merge.spec.template.spec.containers[0].env.map((e) => [e.name, e.value]));
    assert.equal(mergeEnv.RUNS, env.RUNS);
    const m = spawnSync(shell, [flag, merge.spec.template.spec.containers[0].args[0]], {
      encoding: 'utf8',
      env: { ...process.env, ...podEnv },
    });
    assert.ok(m.status === 0 || m.status === 1, m.stderr);
    assert.match(m.stderr, new RegExp(`merged shards 0, 1, 2, 3 of ${shards.spec.completions}`));
    sameRun(path.join(local(env.RUNS), 'merged'));
    assert.equal(spawnSync('bash', ['-n', path.join(RECIPES, 'kubernetes', 'run.sh')]).status, 0);
  });

  it("container: the image's file list alone runs the CLI (a model loads), and the build context leaves out node_modules", () => {
    const dockerfile = fs.readFileSync(path.join(RECIPES, 'container', 'Dockerfile'), 'utf8');
    const final = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    const image = tempDir();
    const copies = [...final.matchAll(/^COPY --from=build (.+)$/gm)].map((m) => m[1].split(/\s+/));
    assert.ok(copies.length >= 5, 'the runtime stage copies the bundles and onnxruntime-node');
    const workdir = /^WORKDIR (\S+)$/m.exec(final)![1];
    for (const parts of copies) {
      const dest = parts.pop()!;
      const into = path.join(image, path.resolve(workdir, dest));
      for (const src of parts) {
        const from = path.join(ROOT, path.relative('/src', src));
        assert.ok(fs.existsSync(from), `${src} exists after npm run build`);
        const to = dest.endsWith('/') ? path.join(into, path.basename(from)) : into;
        fs.mkdirSync(path.dirname(to), { recursive: true });
        fs.cpSync(from, to, { recursive: true });
      }
    }
    const cli = path.join(image, workdir, 'dist', 'cli.js');
    const r = spawnSync(process.execPath, [cli, 'drift', ...pairArgs(), '--threads', '1', '--json'], {
      encoding: 'utf8',
      cwd: image,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(JSON.parse(r.stdout).treft > 0, 'the drift of the organisms, measured by the copied host');
    const ignore = fs.readFileSync(path.join(RECIPES, 'container', 'Dockerfile.dockerignore'), 'utf8').split('\n');
    for (const p of ['node_modules', '.cache', 'dist']) assert.ok(ignore.includes(p), `${p} stays out of the context`);
  });
});
