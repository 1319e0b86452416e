/**
 * The client side of the model host: forks the host process, speaks the typed protocol, and survives the host's
 * death. A crash (native abort, out-of-memory, kill) rejects every pending request with a HostCrashedError that
 * says what was running and how the host ended; `restart()` brings up a fresh host with the same checkpoints.
 */
import { type ChildProcess, fork } from 'node:child_process';
import {
  CancellationTokenSource,
  createMessageConnection,
  type MessageConnection,
  type RequestType,
  ResponseError,
} from 'vscode-jsonrpc/node';
import { IPCMessageReader, IPCMessageWriter } from 'vscode-jsonrpc/node';
import {
  HostErrors,
  type HostProgress,
  Load,
  type LoadParams,
  type LoadResult,
  Log,
  progressType,
  type WorkDoneParams,
} from '../contracts/modelHost';

export class HostCrashedError extends Error {
  constructor(
    readonly operation: string,
    readonly exit: { code: number | null; signal: NodeJS.Signals | null },
  ) {
    super(
      `the model host stopped during ${operation} (${exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`}); results so far are kept, restart the host to continue`,
    );
    this.name = 'HostCrashedError';
  }
}

export class HostRequestError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = 'HostRequestError';
  }
  get cancelled(): boolean {
    return this.code === HostErrors.Cancelled;
  }
}

export interface HostOptions {
  /** Path of the bundled host script (dist/host.js). */
  script: string;
  onLog?: (level: string, message: string) => void;
  onExit?: (exit: { code: number | null; signal: NodeJS.Signals | null }) => void;
  env?: NodeJS.ProcessEnv;
}

export interface RequestOptions {
  onProgress?: (p: HostProgress) => void;
  /** Cancels the request on the host. */
  signal?: AbortSignal;
}

let progressCounter = 0;

/** What the app needs from a model host: typed requests. HostClient (the host process) implements it; a remote
 * backend or a test's fake can too (docs/scale-out.md). */
export interface ModelHost {
  request<P extends WorkDoneParams, R>(type: RequestType<P, R, void>, params: P, options?: RequestOptions): Promise<R>;
}

export class HostClient implements ModelHost {
  private child: ChildProcess;
  private connection: MessageConnection;
  private exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private readonly pending = new Set<(e: Error) => void>();
  private lastLoad: LoadParams | undefined;

  constructor(private readonly options: HostOptions) {
    [this.child, this.connection] = this.spawn();
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exited === undefined;
  }

  private spawn(): [ChildProcess, MessageConnection] {
    this.exited = undefined;
    const child = fork(this.options.script, [], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: hostEnv({ ...process.env, ORT_DISABLE_TELEMETRY: '1', ...this.options.env }),
      execArgv: [],
    });
    child.stdout?.on('data', (d: Buffer) => this.options.onLog?.('info', d.toString().trimEnd()));
    child.stderr?.on('data', (d: Buffer) => this.options.onLog?.('error', d.toString().trimEnd()));
    const connection = createMessageConnection(new IPCMessageReader(child), new IPCMessageWriter(child));
    connection.onNotification(Log.type, (m) => this.options.onLog?.(m.level, m.message));
    connection.onError(() => undefined); // a dead host is reported through 'exit' below
    connection.listen();
    child.on('exit', (code, signal) => {
      if (this.child !== child) return;
      this.exited = { code, signal };
      for (const reject of this.pending) reject(new Error('exit'));
      this.pending.clear();
      connection.dispose();
      this.options.onExit?.(this.exited);
    });
    return [child, connection];
  }

  async load(params: LoadParams, options?: RequestOptions): Promise<LoadResult> {
    const result = await this.request(Load.type, params, options);
    this.lastLoad = params;
    return result;
  }

  /** Sends a request; rejects with HostCrashedError if the host dies first, HostRequestError if it says no. */
  async request<P extends WorkDoneParams, R>(
    type: RequestType<P, R, void>,
    params: P,
    options: RequestOptions = {},
  ): Promise<R> {
    if (this.exited) throw new HostCrashedError(type.method, this.exited);
    const token = `piggyback-${process.pid}-${++progressCounter}`;
    const progress = options.onProgress
      ? this.connection.onProgress(progressType, token, options.onProgress)
      : undefined;
    const cts = new CancellationTokenSource();
    const onAbort = () => cts.cancel();
    options.signal?.addEventListener('abort', onAbort);
    let rejectDeath!: (e: Error) => void;
    const death = new Promise<never>((_, reject) => {
      rejectDeath = () => reject(new HostCrashedError(type.method, this.exited ?? { code: null, signal: null }));
    });
    this.pending.add(rejectDeath);
    try {
      // only ask for progress when someone listens: each report is an IPC message
      const sent: P = options.onProgress ? { ...params, workDoneToken: token } : params;
      return await Promise.race([this.connection.sendRequest(type, sent, cts.token), death]);
    } catch (e) {
      if (e instanceof HostCrashedError) throw e;
      if (this.exited) throw new HostCrashedError(type.method, this.exited);
      if (e instanceof ResponseError) throw new HostRequestError(e.code, e.message);
      throw e;
    } finally {
      this.pending.delete(rejectDeath);
      progress?.dispose();
      options.signal?.removeEventListener('abort', onAbort);
      cts.dispose();
    }
  }

  notify<P>(method: string, params: P): void {
    if (!this.exited) void this.connection.sendNotification(method, params);
  }

  /** A fresh host process, with the last checkpoints loaded again. */
  async restart(): Promise<LoadResult | undefined> {
    await this.dispose();
    [this.child, this.connection] = this.spawn();
    return this.lastLoad ? this.load(this.lastLoad) : undefined;
  }

  async dispose(): Promise<void> {
    if (this.exited) return;
    const child = this.child;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    this.connection.dispose();
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await gone;
    clearTimeout(timer);
  }
}

/** The model host needs no secrets: the judge's API key is not passed on to it (nor to anything it might start). */
export function hostEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env };
  delete out.PIGGYBACK_JUDGE_API_KEY;
  return out;
}
