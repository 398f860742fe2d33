// The embedded PGlite runs on a worker thread of its own. Every statement is synchronous
// WebAssembly, a few milliseconds each; on the main thread it would stall the event loop, and
// with it the byte pumps of live consoles and the accepting of new connections (Node takes one
// new connection per loop turn). On its own thread the database uses the second core, and while
// a statement runs the connect path keeps gathering the next group-committed batch.
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

export interface QueryAnswer<R> {
  rows: R[];
  affectedRows?: number;
}

/** The worker's side, as a script string so it runs alike from the built gateway and the sources under test. */
const SCRIPT = `
const { parentPort, workerData } = require('node:worker_threads');
// Baseline (Liftoff) code only, before PGlite's WebAssembly is compiled. TurboFan recompiling the
// hot functions on background threads left ~70 MiB in their allocator arenas that an idle gateway
// never gives back (idle RSS 216-272 MiB against 164-172), and the connect path measured no slower.
require('node:v8').setFlagsFromString('--liftoff-only');
const { entry, dir, startParams } = workerData;
const FIELDS = ['message', 'code', 'severity', 'detail', 'hint', 'constraint', 'table', 'column', 'schema', 'routine'];
// Only the fields that explain a failure cross over: never the query's parameters.
const describe = (error) => Object.fromEntries(FIELDS.filter((k) => error?.[k] !== undefined).map((k) => [k, String(error[k])]));
require(entry).PGlite.create(dir, { startParams: [...require(entry).PGlite.defaultStartParams, ...startParams] }).then(
  (pg) => {
    parentPort.on('message', async ({ id, op, sql, params, channel }) => {
      try {
        if (op === 'query') {
          const { rows, affectedRows } = await pg.query(sql, params);
          parentPort.postMessage({ id, rows, affectedRows });
        } else if (op === 'listen') {
          await pg.listen(channel, (payload) => parentPort.postMessage({ channel, payload }));
          parentPort.postMessage({ id });
        } else if (op === 'close') {
          await pg.close();
          parentPort.postMessage({ id });
          parentPort.close();
        }
      } catch (error) {
        parentPort.postMessage({ id, error: describe(error) });
      }
    });
    parentPort.postMessage({ ready: true });
  },
  (error) => parentPort.postMessage({ ready: false, error: describe(error) }),
);
`;

type Reply = { id: number; rows?: unknown[]; affectedRows?: number; error?: Record<string, string> };

export class PGliteThread {
  private readonly waiting = new Map<number, { resolve(reply: Reply): void; reject(error: Error): void }>();
  private readonly listeners = new Map<string, (payload: string) => void>();
  private nextId = 1;
  private exited: Error | undefined;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (message: Reply & { channel?: string; payload?: string }) => {
      if (message.channel !== undefined) return this.listeners.get(message.channel)?.(message.payload ?? '');
      const waiter = this.waiting.get(message.id);
      this.waiting.delete(message.id);
      waiter?.resolve(message);
    });
    // An uncaught failure in the thread ends it; 'exit' follows and fails whatever was waiting.
    let failure: Error | undefined;
    worker.on('error', (error) => (failure = error));
    worker.on('exit', (code) => {
      this.exited = new Error(`the embedded database thread stopped (exit code ${code})${failure ? `: ${failure.message}` : ''}`);
      for (const waiter of this.waiting.values()) waiter.reject(this.exited);
      this.waiting.clear();
    });
  }

  /** Starts PGlite on a worker thread over the cluster in `dir`; throws with its error if it cannot open. */
  static start(dir: string, startParams: readonly string[]): Promise<PGliteThread> {
    const entry = createRequire(import.meta.url).resolve('@electric-sql/pglite');
    const worker = new Worker(SCRIPT, { eval: true, workerData: { entry, dir, startParams } });
    return new Promise((resolve, reject) => {
      const failed = (error: Error) => reject(error);
      const exited = (code: number) => reject(new Error(`the embedded database thread exited with code ${code}`));
      worker.once('error', failed);
      worker.once('exit', exited);
      worker.once('message', (message: { ready: boolean; error?: Record<string, string> }) => {
        // Only our own listeners: the Worker keeps internal ones of its own on the same emitter.
        worker.off('error', failed);
        worker.off('exit', exited);
        if (message.ready) return resolve(new PGliteThread(worker));
        void worker.terminate();
        reject(toError(message.error));
      });
    });
  }

  get closed(): boolean {
    return this.exited !== undefined;
  }

  async query<R>(sql: string, params: readonly unknown[] = []): Promise<QueryAnswer<R>> {
    const reply = await this.send({ op: 'query', sql, params });
    if (reply.error !== undefined) throw toError(reply.error);
    return { rows: reply.rows as R[], ...(reply.affectedRows !== undefined ? { affectedRows: reply.affectedRows } : {}) };
  }

  /** Calls `onPayload` for every NOTIFY on `channel`. */
  async listen(channel: string, onPayload: (payload: string) => void): Promise<void> {
    this.listeners.set(channel, onPayload);
    const reply = await this.send({ op: 'listen', channel });
    if (reply.error !== undefined) throw toError(reply.error);
  }

  /** Closes the database (a clean shutdown of its files), then the thread. */
  async close(): Promise<void> {
    if (this.exited !== undefined) return;
    const exited = new Promise((resolve) => this.worker.once('exit', resolve));
    await this.send({ op: 'close' }).catch(() => {});
    await exited;
  }

  private send(message: Record<string, unknown>): Promise<Reply> {
    if (this.exited !== undefined) return Promise.reject(this.exited);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, ...message });
    });
  }
}

/** The database's error as the main thread sees it: its message, with SQLSTATE and details as fields. */
function toError(fields: Record<string, string> | undefined): Error {
  return Object.assign(new Error(fields?.message ?? 'embedded database error'), fields);
}
