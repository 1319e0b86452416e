/**
 * The model host: a separate Node process that owns onnxruntime. A native crash or out-of-memory here ends this
 * process only; the client in the extension or the CLI notices and reports it. Speaks JSON-RPC over Node IPC.
 */
import { type CancellationToken, createMessageConnection, ResponseError } from 'vscode-jsonrpc/node';
import { IPCMessageReader, IPCMessageWriter } from 'vscode-jsonrpc/node';
import {
  Crash,
  Drift,
  ExportKV,
  Generate,
  HostErrors,
  Load,
  type LoadResult,
  Log,
  Parity,
  Patch,
  Perturb,
  progressType,
  Score,
  type WorkDoneParams,
} from '../contracts/modelHost';
import { type Checkpoint, CheckpointError } from './checkpoint';
import { IncompatibleCheckpointError } from './errors';
import { loadCheckpoints } from './loading';
import { defaultCacheDir } from '../domain/files';
import { resolveSettings, SettingsError } from './runtime';
import {
  BadRequestError,
  CancelledError,
  drift,
  exportKV,
  generate,
  LoadedModels,
  type OpContext,
  parity,
  patch,
  perturb,
  score,
} from './operations';

process.env.ORT_DISABLE_TELEMETRY ??= '1';

const connection = createMessageConnection(new IPCMessageReader(process), new IPCMessageWriter(process));
let models: LoadedModels | undefined;
let loaded: Checkpoint[] = [];

function context(token: CancellationToken, progressToken: string | number | undefined): OpContext {
  return {
    isCancelled: () => token.isCancellationRequested,
    progress: (done, total, message) => {
      if (progressToken !== undefined)
        void connection.sendProgress(progressType, progressToken, { done, total, message });
    },
  };
}

/** Runs an operation, turning our errors into JSON-RPC errors the client can tell apart. */
function handle<P extends WorkDoneParams, R>(fn: (params: P, ctx: OpContext, models: LoadedModels) => Promise<R>) {
  return async (params: P, token: CancellationToken): Promise<R | ResponseError<void>> => {
    if (!models) return new ResponseError(HostErrors.NotLoaded, 'no checkpoints loaded: call load first');
    try {
      return await fn(params, context(token, params.workDoneToken), models);
    } catch (e) {
      return toResponseError(e);
    }
  };
}

function toResponseError(e: unknown): ResponseError<void> {
  if (e instanceof CancelledError) return new ResponseError(HostErrors.Cancelled, 'cancelled');
  if (e instanceof CheckpointError) return new ResponseError(HostErrors.BadCheckpoint, e.message);
  if (e instanceof BadRequestError || e instanceof SettingsError)
    return new ResponseError(HostErrors.BadRequest, e.message);
  // an error nobody anticipated: one line for the user; the trace goes to the editor's log
  connection.sendNotification(Log.type, { level: 'info', message: (e as Error).stack ?? String(e) });
  return new ResponseError(-32603, String((e as Error).message ?? e).split('\n')[0]);
}

connection.onRequest(Load.type, async (params): Promise<LoadResult | ResponseError<void>> => {
  try {
    for (const name of Object.keys(params.extra ?? {})) {
      if (name === 'base' || name === 'finetuned')
        throw new BadRequestError(`"${name}" is reserved; pick another name for ${params.extra![name]}`);
    }
    // a checkpoint named again as the base is the base's checkpoint (loadCheckpoints decides, by real path)
    const others: [string, string][] = [['finetuned', params.finetuned], ...Object.entries(params.extra ?? {})];
    const log = (message: string, level: 'load' | 'info' = 'load') =>
      connection.sendNotification(Log.type, { level, message });
    const settings = resolveSettings(params.settings);
    const { base, others: byName } = await loadCheckpoints(params.base, others, {
      cacheDir: params.cacheDir || defaultCacheDir(),
      log,
      settings,
      modelFile: params.settings?.modelFile,
      memoryCheck: params.settings?.memoryCheck,
    });
    const finetuned = byName.get('finetuned')!;
    for (const old of loaded) await old.release();
    loaded = [...new Set([base, ...byName.values()])];
    models = new LoadedModels(base, byName);
    const extra: LoadResult['extra'] = {};
    for (const [name, c] of byName) if (name !== 'finetuned') extra[name] = c.info;
    connection.sendNotification(Log.type, {
      level: 'info',
      message: `loaded ${base.info.modelFile} and ${finetuned.info.modelFile}`,
    });
    return { base: base.info, finetuned: finetuned.info, extra };
  } catch (e) {
    if (e instanceof CheckpointError)
      return new ResponseError(
        e instanceof IncompatibleCheckpointError ? HostErrors.Incompatible : HostErrors.BadCheckpoint,
        e.message,
      );
    return toResponseError(e);
  }
});
connection.onRequest(
  Drift.type,
  handle((p, ctx, m) => drift(m, p.prompt, p.against ?? 'finetuned', ctx)),
);
connection.onRequest(
  Patch.type,
  handle((p, ctx, m) => patch(m, p, ctx)),
);
connection.onRequest(
  Score.type,
  handle((p, ctx, m) => score(m, p, ctx)),
);
connection.onRequest(
  Perturb.type,
  handle((p, ctx, m) => perturb(m, p, ctx)),
);
connection.onRequest(
  Generate.type,
  handle(async (p, ctx, m) => ({ ids: await generate(m, p, ctx) })),
);
connection.onRequest(
  ExportKV.type,
  handle((p, ctx, m) => exportKV(m, p, ctx)),
);
connection.onRequest(
  Parity.type,
  handle((p, _ctx, m) => parity(m, p.prompt)),
);
connection.onNotification(Crash.type, ({ afterMs }) => setTimeout(() => process.abort(), afterMs));

connection.onClose(() => process.exit(0));
process.on('disconnect', () => process.exit(0));
connection.listen();
