// What a virtio device (block, rng, console, ...) offers its transport. A device
// knows its queues, features and configuration layout; it does not know whether it
// sits on PCI or MMIO, or how its interrupts reach the guest.
import type { GuestMemory } from '../memory/guest-memory.js';
import type { DescriptorChain } from './chain.js';
import type { SplitQueue } from './queue.js';

export const VirtioId = { NET: 1, BLOCK: 2, CONSOLE: 3, RNG: 4 } as const;

/** Feature bits the transport handles for every device. */
export const VIRTIO_F_RING_INDIRECT_DESC = 28n;
export const VIRTIO_F_RING_EVENT_IDX = 29n;
export const VIRTIO_F_VERSION_1 = 32n;

export const bit = (n: bigint | number): bigint => 1n << BigInt(n);

/** How a device tells the driver something happened. */
export interface VirtioInterrupt {
  /** The device put buffers in queue `index`'s used ring. */
  queue(index: number): void;
  /** The device changed its configuration space. */
  configChanged(): void;
}

export interface ActiveQueues {
  memory: GuestMemory;
  /** Live queues by index; undefined where the driver did not enable one. */
  queues: (SplitQueue | undefined)[];
  interrupt: VirtioInterrupt;
  /** The features the driver accepted. */
  features: bigint;
  /**
   * Set by the transport when this activation ended (the driver reset the device, or
   * it failed): its queues may since have been reprogrammed, so nothing may touch them.
   */
  readonly stopped: boolean;
  /** Called when the driver broke the rules and the device stopped: DEVICE_NEEDS_RESET. */
  fail(reason: string): void;
}

export interface VirtioDevice {
  readonly type: number;
  /** For statistics and messages. */
  readonly name: string;
  /** Device-specific feature bits (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX). */
  readonly features: bigint;
  /** The largest size of each queue. */
  readonly queueSizes: readonly number[];
  readonly configSize: number;
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  /** The driver set DRIVER_OK: the queues are checked and ready. */
  activate(active: ActiveQueues): void;
  /** The driver made buffers available in queue `index`. */
  queueNotify(index: number): void;
  /** The driver reset the device: drop queue state, keep the backend. */
  reset(): void;
  /** Per-device counters for --stats. */
  stats(): Record<string, number>;
  /** The VMM is shutting down: finish in-flight work, release the backend. */
  close(): Promise<void>;
}

/** Reads `data.length` bytes at `offset` of a config byte array; bytes past the end read as zero. */
export function readConfigBytes(config: Uint8Array, offset: number, data: Uint8Array): void {
  for (let i = 0; i < data.length; i++) data[i] = config[offset + i] ?? 0;
}

/** What went wrong, in one line, for DEVICE_NEEDS_RESET's reason. */
export function describeError(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
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
 * Hands every chain the driver made available in queue `index` to `handle`, with
 * driver notifications suppressed meanwhile; a handler that returns false leaves
 * its chain in the ring and stops. A driver that broke the ring's rules (or any
 * other error on the way) fails the device instead of reaching the VMM.
 */
export function drainQueue(active: ActiveQueues, index: number, handle: (chain: DescriptorChain) => boolean | void): void {
  const q = active.queues[index];
  if (!q) return;
  const mem = active.memory;
  guarded(active, `queue ${index}`, undefined, () => {
    for (;;) {
      q.disableNotifications(mem);
      for (let chain = q.pop(mem); chain; chain = q.pop(mem)) {
        if (handle(chain) === false) {
          q.unpop();
          q.enableNotifications(mem);
          return;
        }
        if (active.stopped) return;
      }
      if (!q.enableNotifications(mem)) return;
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
