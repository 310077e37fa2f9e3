// The main thread's handle on a device worker: one thread per virtio device, with
// its own blocking epoll loop (device-worker-main.ts) that runs the data planes of
// the device's started queues. Control goes down a MessagePort plus an eventfd
// that wakes the loop; the worker answers on the port. Counters are a shared array
// the worker writes and the main thread reads, so --stats costs the data path nothing.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { closeFd, eventfd, eventfdSignal } from '../../host/libc.js';
import type { MemoryTable } from '../../memory/guest-memory.js';
import type { QueueResources } from '../device.js';
import type { QueueState } from '../queue.js';
import { WORKER_COUNTERS } from './data-plane.js';

/** The data planes a worker can run, by the name the main thread asks for. */
export type DataPlaneKind = 'block';

export interface DeviceWorkerData {
  kind: DataPlaneKind;
  /** The device's plain-data description for its data planes (for block: BlockDisk). */
  init: unknown;
  controlFd: number;
  port: MessagePort;
  counters: SharedArrayBuffer;
}

export type ToWorker = { type: 'start'; memory: MemoryTable; features: bigint; queue: QueueResources } | { type: 'stop'; index: number } | { type: 'exit' };
export type FromWorker = { type: 'stopped'; index: number; state: QueueState | undefined } | { type: 'failed'; index: number; reason: string };

export class DeviceWorker {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly controlFd = eventfd();
  /** Per queue, the stops asked for and not yet answered, oldest first. */
  private readonly stops = new Map<number, ((state: QueueState | undefined) => void)[]>();
  private readonly exited: Promise<void>;
  private closing = false;
  /** Why the worker is gone, if it went on its own. */
  dead: string | undefined;
  /** The worker's counters (WORKER_COUNTERS, then the device's), summed over its queues. */
  readonly counters: Float64Array;

  /** `onFailure` hears of a queue whose data plane failed (with its index) or of the whole worker's death (without). */
  constructor(
    kind: DataPlaneKind,
    init: unknown,
    deviceCounters: number,
    private readonly onFailure: (reason: string, index?: number) => void,
  ) {
    const channel = new MessageChannel();
    this.port = channel.port1;
    const shared = new SharedArrayBuffer(8 * (WORKER_COUNTERS.length + deviceCounters));
    this.counters = new Float64Array(shared);
    const data: DeviceWorkerData = { kind, init, controlFd: this.controlFd, port: channel.port2, counters: shared };
    this.worker = new Worker(new URL('./device-worker-main.js', import.meta.url), { workerData: data, transferList: [channel.port2] });
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
        for (const waiting of this.stops.values()) for (const stop of waiting.splice(0)) stop(undefined);
        resolve();
      }),
    );
  }

  private received(m: FromWorker): void {
    if (m.type === 'stopped') this.stops.get(m.index)?.shift()?.(m.state);
    else this.onFailure(m.reason, m.index);
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
  stop(index: number): Promise<QueueState | undefined> {
    if (this.dead) return Promise.resolve(undefined);
    const stopped = new Promise<QueueState | undefined>((resolve) => {
      const waiting = this.stops.get(index) ?? [];
      waiting.push(resolve);
      this.stops.set(index, waiting);
    });
    this.send({ type: 'stop', index });
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
