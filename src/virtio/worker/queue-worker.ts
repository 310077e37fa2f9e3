// The main thread's handle on one queue's device worker: a thread with its own
// blocking epoll loop (queue-worker-main.ts) that runs the queue's data plane.
// Control goes down a MessagePort plus an eventfd that wakes the loop; the worker
// answers on the port. Counters are a shared array the worker writes and the
// main thread reads, so --stats costs the data path nothing.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { closeFd, eventfd, eventfdSignal } from '../../host/libc.js';
import type { MemoryTable } from '../../memory/guest-memory.js';
import type { QueueResources } from '../device.js';
import type { QueueState } from '../queue.js';
import { WORKER_COUNTERS } from './data-plane.js';

/** The data planes a worker can run, by the name the main thread asks for. */
export type DataPlaneKind = 'block';

export interface QueueWorkerData {
  kind: DataPlaneKind;
  /** The device's plain-data description for its data plane (for block: BlockDisk). */
  init: unknown;
  controlFd: number;
  port: MessagePort;
  counters: SharedArrayBuffer;
}

export type ToWorker = { type: 'start'; memory: MemoryTable; features: bigint; queue: QueueResources } | { type: 'stop' } | { type: 'exit' };
export type FromWorker = { type: 'stopped'; state: QueueState | undefined } | { type: 'failed'; reason: string };

export class QueueWorker {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly controlFd = eventfd();
  private readonly stops: ((state: QueueState | undefined) => void)[] = [];
  private readonly exited: Promise<void>;
  private closing = false;
  /** Why the worker is gone, if it went on its own. */
  dead: string | undefined;
  /** The worker's counters (WORKER_COUNTERS, then the device's). */
  readonly counters: Float64Array;

  constructor(
    kind: DataPlaneKind,
    init: unknown,
    deviceCounters: number,
    private readonly onFailure: (reason: string) => void,
  ) {
    const channel = new MessageChannel();
    this.port = channel.port1;
    const shared = new SharedArrayBuffer(8 * (WORKER_COUNTERS.length + deviceCounters));
    this.counters = new Float64Array(shared);
    const data: QueueWorkerData = { kind, init, controlFd: this.controlFd, port: channel.port2, counters: shared };
    this.worker = new Worker(new URL('./queue-worker-main.js', import.meta.url), { workerData: data, transferList: [channel.port2] });
    this.port.on('message', (m: FromWorker) => this.received(m));
    this.port.unref();
    let errorText = '';
    this.worker.on('error', (e) => (errorText = e instanceof Error ? e.message : String(e)));
    this.exited = new Promise((resolve) =>
      this.worker.once('exit', (code) => {
        if (!this.closing) {
          this.dead = `device worker exited (code ${code}${errorText ? `: ${errorText}` : ''})`;
          this.onFailure(this.dead);
        }
        for (const stop of this.stops.splice(0)) stop(undefined);
        resolve();
      }),
    );
  }

  private received(m: FromWorker): void {
    if (m.type === 'stopped') this.stops.shift()?.(m.state);
    else this.onFailure(m.reason);
  }

  private send(m: ToWorker): void {
    if (this.dead) return;
    this.port.postMessage(m);
    eventfdSignal(this.controlFd);
  }

  start(memory: MemoryTable, features: bigint, queue: QueueResources): void {
    this.send({ type: 'start', memory, features, queue });
  }

  /** Resolves with the queue's state once the worker has finished the chain in hand and let the queue go. */
  stop(): Promise<QueueState | undefined> {
    if (this.dead) return Promise.resolve(undefined);
    const stopped = new Promise<QueueState | undefined>((resolve) => this.stops.push(resolve));
    this.send({ type: 'stop' });
    return stopped;
  }

  /** Ends the thread (after any stop asked for before) and frees its fd. */
  async close(): Promise<void> {
    this.closing = true;
    this.send({ type: 'exit' });
    await this.exited;
    this.port.close();
    closeFd(this.controlFd);
  }

  /**
   * Ends the thread at once, as a crash would (for tests of what a dead worker
   * leaves). Termination takes effect when the thread next runs JavaScript, so the
   * control fd wakes it out of epoll_wait.
   */
  kill(): Promise<number> {
    const ended = this.worker.terminate();
    eventfdSignal(this.controlFd);
    return ended;
  }
}
