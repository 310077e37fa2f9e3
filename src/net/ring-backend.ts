// The boundary between a back-end that must live on the main thread (user-mode
// networking: Node's sockets) and a front-end in a device worker. Two frame rings
// carry packets each way; each side sleeps on its own eventfd. On the main thread
// a RingBridge is the back-end's port; in the worker a RingBackend is the
// front-end's back-end. Neither is device code: the front-end sees a NetBackend
// like any other.
import { closeFd, eventfd, eventfdDrain, eventfdSignal } from '../host/libc.js';
import type { FdPoller, NetBackend, NetPort } from './backend.js';
import { DropCounter } from './counters.js';
import { FrameRing, frameRingShared, type Frame, type FrameRingShared } from './frame-ring.js';

/** Bytes each way: over a thousand full-size frames. */
const RING_BYTES = 2 << 20;
/** Packets handled per wakeup before the thread's other work gets a turn. */
const BURST = 64;

export const RING_DROPS = ['ring-full'] as const;
/** Float64 slots the worker's end counts into. */
export const RING_SLOTS = RING_DROPS.length;

/** What the worker's end counted into `storage`, read from any thread. */
export const ringStats = (storage: Float64Array<ArrayBufferLike>): Record<string, number> => new DropCounter(RING_DROPS, storage).stats();

/** The rings as plain data, for the worker's end. */
export interface RingPlan {
  kind: 'ring';
  toGuest: FrameRingShared;
  fromGuest: FrameRingShared;
  /** The worker's end sleeps on it. */
  workerFd: number;
  queues: number;
  offloads: boolean;
  description: string;
}

/** The main thread's end: the back-end's port, and its source of packets from the guest. */
export class RingBridge implements NetPort {
  readonly plan: RingPlan;
  private readonly mainFd = eventfd();
  private readonly toGuest: FrameRing;
  private readonly fromGuest: FrameRing;
  private readonly refused = new Set<number>();
  private readonly token: number;

  constructor(
    private readonly backend: NetBackend,
    private readonly poller: FdPoller,
  ) {
    const workerFd = eventfd();
    const toGuest = frameRingShared(RING_BYTES, workerFd, this.mainFd);
    const fromGuest = frameRingShared(RING_BYTES, this.mainFd, workerFd);
    this.toGuest = new FrameRing(toGuest);
    this.fromGuest = new FrameRing(fromGuest);
    this.plan = { kind: 'ring', toGuest, fromGuest, workerFd, queues: backend.queues, offloads: backend.offloads, description: backend.description };
    this.token = poller.add(this.mainFd, () => this.wake());
    backend.attach(this, poller);
  }

  receive(queue: number, packet: Uint8Array): boolean {
    if (this.toGuest.push(queue, packet)) return true;
    this.refused.add(queue);
    return false;
  }

  private wake(): void {
    eventfdDrain(this.mainFd);
    for (let i = 0; i < BURST; i++) {
      const f = this.fromGuest.pop();
      if (!f) break;
      if (i === BURST - 1) eventfdSignal(this.mainFd); // more may wait: come back after the event loop's other work
      this.backend.send(f.queue, f.packet);
    }
    for (const q of [...this.refused]) {
      this.refused.delete(q);
      this.backend.resume(q);
    }
  }

  /** After the worker is gone. */
  close(): void {
    this.poller.remove(this.token);
    closeFd(this.mainFd);
    closeFd(this.plan.workerFd);
  }
}

/** The worker's end: a NetBackend whose packets come from and go to the main thread's back-end. */
export class RingBackend implements NetBackend {
  readonly description: string;
  readonly queues: number;
  readonly offloads: boolean;
  readonly drops: DropCounter<(typeof RING_DROPS)[number]>;
  private readonly toGuest: FrameRing;
  private readonly fromGuest: FrameRing;
  private port: NetPort | undefined;
  private poller: FdPoller | undefined;
  private token: number | undefined;
  /** The packet the port refused; nothing behind it is taken until resume(). */
  private held: Frame | undefined;

  constructor(
    private readonly plan: RingPlan,
    storage?: Float64Array<ArrayBufferLike>,
  ) {
    this.description = plan.description;
    this.queues = plan.queues;
    this.offloads = plan.offloads;
    this.toGuest = new FrameRing(plan.toGuest);
    this.fromGuest = new FrameRing(plan.fromGuest);
    this.drops = new DropCounter(RING_DROPS, storage);
  }

  attach(port: NetPort, poller: FdPoller): void {
    this.port = port;
    this.poller = poller;
    this.token = poller.add(this.plan.workerFd, () => {
      eventfdDrain(this.plan.workerFd);
      this.deliver();
    });
  }

  private deliver(): void {
    for (let i = 0; i < BURST && this.port; i++) {
      const f = this.held ?? this.toGuest.pop();
      if (!f) return;
      this.held = undefined;
      if (!this.port.receive(f.queue, f.packet)) {
        this.held = f;
        return;
      }
    }
    eventfdSignal(this.plan.workerFd); // the burst ran out: come back after the other queues' turn
  }

  resume(queue: number): void {
    if (!this.held || this.held.queue === queue) this.deliver();
  }

  send(queue: number, packet: Uint8Array): void {
    if (packet.length > this.fromGuest.maxPacket || !this.fromGuest.push(queue, packet)) this.drops.count('ring-full');
  }

  setRxOffloads(): void {}

  stats(): Record<string, number> {
    return this.drops.stats();
  }

  async close(): Promise<void> {
    if (this.token !== undefined) this.poller?.remove(this.token);
    this.token = undefined;
    this.port = undefined;
  }
}
