// Devices whose data plane runs on the main thread, because their back-end lives
// there (the console's stdin and stdout) or is too cheap to need a thread of its
// own (virtio-rng). They are written against ActiveQueues,
// live queues handed over at activation; onMainThread() puts such a device behind
// the per-queue contract of device.ts, so the transport drives every device the
// same way: the kick fd is watched here, the call fd is signalled from here.
import { eventfdDrain, eventfdSignal } from '../host/libc.js';
import type { GuestMemory, MemoryTable } from '../memory/guest-memory.js';
import type { DescriptorChain } from './chain.js';
import { describeError, type DeviceHost, type QueueResources, type VirtioDevice } from './device.js';
import { SplitQueue, type QueueState } from './queue.js';

/** Calls `onReadable` on the main thread whenever `fd` is readable; returns the undo. */
export type WatchFd = (fd: number, onReadable: () => void) => () => void;

/** How a device tells the driver something happened. */
export interface VirtioInterrupt {
  /** The device put buffers in queue `index`'s used ring. */
  queue(index: number): void;
  /** The device changed its configuration space. */
  configChanged(): void;
}

export interface ActiveQueues {
  memory: GuestMemory;
  /** Live queues by index; undefined where a queue is not running. */
  queues: (SplitQueue | undefined)[];
  interrupt: VirtioInterrupt;
  /** The features the driver accepted. */
  features: bigint;
  /** Set when this activation ended (a reset, or a failure): nothing may touch its queues any more. */
  readonly stopped: boolean;
  /** Called when the driver broke the rules and the device stopped: DEVICE_NEEDS_RESET. */
  fail(reason: string): void;
}

/** A device written against live queues (see the file comment). */
export interface MainThreadDevice extends Omit<VirtioDevice, 'activate' | 'startQueue' | 'stopQueue'> {
  /** DRIVER_OK; queues appear in `active.queues` as they start, each followed by a queueNotify(). */
  activate(active: ActiveQueues): void;
  /** The driver made buffers available in queue `index` (or the queue just started). */
  queueNotify(index: number): void;
}

/** `device` behind the per-queue contract, its queues run on the main thread over `memory`. */
export function onMainThread(device: MainThreadDevice, env: { memory: GuestMemory; watch: WatchFd }): VirtioDevice {
  return new MainThreadDataPlane(device, env.memory, env.watch);
}

class MainThreadDataPlane implements VirtioDevice {
  private active: (ActiveQueues & { stopped: boolean }) | undefined;
  private readonly callFds: number[] = [];
  private readonly unwatch: ((() => void) | undefined)[] = [];
  private readonly counters = { kicks: 0, calls: 0 };

  constructor(
    private readonly device: MainThreadDevice,
    private readonly memory: GuestMemory,
    private readonly watch: WatchFd,
  ) {}

  get type(): number {
    return this.device.type;
  }
  get name(): string {
    return this.device.name;
  }
  get features(): bigint {
    return this.device.features;
  }
  get queueSizes(): readonly number[] {
    return this.device.queueSizes;
  }
  get configSize(): number {
    return this.device.configSize;
  }

  readConfig(offset: number, data: Uint8Array): void {
    this.device.readConfig(offset, data);
  }

  writeConfig(offset: number, data: Uint8Array): void {
    this.device.writeConfig(offset, data);
  }

  activate(features: bigint, memory: MemoryTable, host: DeviceHost): void {
    if (memory.regions[0]?.fd !== this.memory.regions[0]?.fd) throw new Error(`${this.name}: activated over guest memory this thread has not mapped`);
    const active = {
      memory: this.memory,
      queues: [] as (SplitQueue | undefined)[],
      features,
      stopped: false,
      interrupt: {
        queue: (index: number) => {
          const fd = this.callFds[index];
          if (fd === undefined) return;
          this.counters.calls++;
          eventfdSignal(fd);
        },
        configChanged: () => host.configChanged(),
      },
      fail: (reason: string) => {
        if (active.stopped) return;
        active.stopped = true;
        host.fail(reason);
      },
    };
    this.active = active;
    this.device.activate(active);
  }

  startQueue(q: QueueResources): void {
    const active = this.active;
    if (!active || active.stopped) return;
    const max = this.queueSizes[q.index];
    if (max === undefined) throw new Error(`${this.name} has no queue ${q.index}`);
    active.queues[q.index] = SplitQueue.fromState(max, q.state, this.memory);
    this.callFds[q.index] = q.callFd;
    this.unwatch[q.index]?.();
    this.unwatch[q.index] = this.watch(q.kickFd, () => {
      if (!eventfdDrain(q.kickFd)) return;
      this.counters.kicks++;
      this.notify(q.index);
    });
    // Chains made available before the start (or while stopped) are taken now.
    this.notify(q.index);
  }

  private notify(index: number): void {
    const active = this.active;
    if (!active || active.stopped) return;
    try {
      this.device.queueNotify(index);
    } catch (e) {
      active.fail(`queue ${index} kick: ${describeError(e)}`);
    }
  }

  async stopQueue(index: number): Promise<QueueState | undefined> {
    this.unwatch[index]?.();
    this.unwatch[index] = undefined;
    const q = this.active?.queues[index];
    if (this.active) this.active.queues[index] = undefined;
    return q?.state();
  }

  reset(): void {
    if (this.active) this.active.stopped = true;
    this.active = undefined;
    this.device.reset();
  }

  stats(): Record<string, number> {
    return { ...this.counters, ...this.device.stats() };
  }

  close(): Promise<void> {
    for (const undo of this.unwatch) undo?.();
    if (this.active) this.active.stopped = true;
    return this.device.close();
  }
}

/**
 * Runs a device entry point that the host, not the guest's kick, calls (a back-end
 * delivering a packet, console input, an I/O completion): whatever it throws, the
 * guest caused it, so the device fails instead of the VMM.
 */
export function guarded<T>(active: ActiveQueues, what: string, fallback: T, body: () => T): T {
  if (active.stopped) return fallback;
  try {
    return body();
  } catch (e) {
    active.fail(`${what}: ${describeError(e)}`);
    return fallback;
  }
}

/**
 * Hands the chains the driver made available in queue `index` to `handle`, at
 * most `budget` of them, with driver notifications suppressed meanwhile; a handler
 * that returns false leaves its chain in the ring and stops. True when the budget
 * ran out with chains perhaps left (notifications stay off: the caller comes back).
 * A driver that broke the ring's rules (or any other error on the way) fails the
 * device instead of reaching the VMM.
 */
export function drainQueue(active: ActiveQueues, index: number, handle: (chain: DescriptorChain) => boolean | void, budget = Infinity): boolean {
  const q = active.queues[index];
  if (!q) return false;
  const mem = active.memory;
  return guarded(active, `queue ${index}`, false, () => {
    let taken = 0;
    for (;;) {
      q.disableNotifications(mem);
      for (let chain = q.pop(mem); chain; chain = q.pop(mem)) {
        if (handle(chain) === false) {
          q.unpop();
          q.enableNotifications(mem);
          return false;
        }
        if (active.stopped || active.queues[index] !== q) return false;
        if (++taken >= budget) return true;
      }
      if (!q.enableNotifications(mem)) return false;
    }
  });
}

/** Returns a chain to the driver and interrupts it if it asked to be told. */
export function completeChain(active: ActiveQueues, index: number, head: number, written: number): void {
  const q = active.queues[index];
  if (active.stopped || !q) return;
  q.pushUsed(active.memory, head, written);
  if (q.needsInterrupt(active.memory)) active.interrupt.queue(index);
}
