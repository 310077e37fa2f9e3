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

/** The devices a worker can run, by the name the main thread asks for. */
export type DeviceKind = 'block' | 'net';

export interface DeviceWorkerData {
  kind: DeviceKind;
  /** The device's plain-data description (block: BlockDisk; net: NetInit). */
  init: unknown;
  controlFd: number;
  port: MessagePort;
  counters: SharedArrayBuffer;
}

export type ToWorker =
  { type: 'start'; memory: MemoryTable; features: bigint; queue: QueueResources } | { type: 'stop'; index: number } | { type: 'reset' } | { type: 'exit' };
/** `failed` without an index: the device as a whole. */
export type FromWorker = { type: 'stopped'; index: number; state: QueueState | undefined } | { type: 'failed'; index?: number; reason: string };

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

  /** `onFailure` hears of a queue whose data plane failed (with its index), or of the device's or the worker's death (without). */
  constructor(
    kind: DeviceKind,
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

  /** The driver reset the device, after its queues were stopped. */
  reset(): void {
    this.send({ type: 'reset' });
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

/**
 * A device's worker, made when first needed and made again when the last one
 * died (its device was failed meanwhile, so the guest has reset it); the counters
 * of workers that are gone are kept.
 */
export class WorkerSlot {
  private worker: DeviceWorker | undefined;
  private readonly retired: Float64Array;

  constructor(
    private readonly kind: DeviceKind,
    private readonly init: unknown,
    private readonly deviceCounters: number,
    private readonly onFailure: (reason: string, index?: number) => void,
  ) {
    this.retired = new Float64Array(WORKER_COUNTERS.length + deviceCounters);
  }

  /** The live worker. */
  live(): DeviceWorker {
    let w = this.worker;
    if (w?.dead) {
      w.counters.forEach((n, i) => (this.retired[i]! += n));
      void w.close();
      w = undefined;
    }
    if (!w) {
      w = new DeviceWorker(this.kind, this.init, this.deviceCounters, this.onFailure);
      this.worker = w;
    }
    return w;
  }

  /** The worker, if one was made (for tests that must see what a crashed worker leaves). */
  current(): DeviceWorker | undefined {
    return this.worker;
  }

  stop(index: number): Promise<QueueState | undefined> {
    return this.worker?.stop(index) ?? Promise.resolve(undefined);
  }

  reset(): void {
    this.worker?.reset();
  }

  /** WORKER_COUNTERS then the device's, over every worker this slot had. */
  counters(): Float64Array {
    const sum = Float64Array.from(this.retired);
    this.worker?.counters.forEach((n, i) => (sum[i]! += n));
    return sum;
  }

  async close(): Promise<void> {
    await this.worker?.close();
  }
}
