// The contract between a virtio transport and a virtio device, in the vhost shape.
//
// The transport (PCI today) owns the registers, feature negotiation and interrupt
// delivery. The device owns its configuration layout and its data plane. At
// DRIVER_OK the transport activates the device with the accepted features and the
// guest-memory table, then starts each ready queue from plain data: its rings and
// indices, a kick eventfd (the guest's notifications land there, through an
// ioeventfd or the transport's own notify handler) and a call eventfd (the device
// signals it when the driver wants an interrupt; the transport routes it to the
// guest, straight into KVM as an irqfd where it can). Stopping a queue hands its
// state back as plain data. Because nothing live crosses, the data plane can run
// on the main thread, in a worker thread, or (later) in another process.
import type { MemoryTable } from '../memory/guest-memory.js';
import type { QueueState } from './queue.js';

export const VirtioId = { NET: 1, BLOCK: 2, CONSOLE: 3, RNG: 4 } as const;

/** Feature bits the transport handles for every device. */
export const VIRTIO_F_RING_INDIRECT_DESC = 28n;
export const VIRTIO_F_RING_EVENT_IDX = 29n;
export const VIRTIO_F_VERSION_1 = 32n;

export const bit = (n: bigint | number): bigint => 1n << BigInt(n);

/** Everything one queue's data plane needs, as plain data (fds are valid in every thread of the process). */
export interface QueueResources {
  index: number;
  /** Untrusted: the driver wrote it. It becomes a live queue only through SplitQueue.fromState(). */
  state: QueueState;
  /** The driver kicks here. */
  kickFd: number;
  /** The device signals here when the driver asked for an interrupt. */
  callFd: number;
}

/** How a running device reaches its transport. */
export interface DeviceHost {
  /** The driver broke the rules (or the data plane died): DEVICE_NEEDS_RESET. */
  fail(reason: string): void;
  /** The device changed its configuration space. */
  configChanged(): void;
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
  /** DRIVER_OK: the driver accepted `features`; the queues are started next. */
  activate(features: bigint, memory: MemoryTable, host: DeviceHost): void;
  /** Starts one queue's data plane. */
  startQueue(q: QueueResources): void;
  /** Stops one queue once the chains it took are done; resolves with its state (undefined when it was not running). */
  stopQueue(index: number): Promise<QueueState | undefined>;
  /** The driver reset the device (every queue is stopped): drop driver state, keep the back-end. */
  reset(): void;
  /** Per-device counters for --stats. */
  stats(): Record<string, number>;
  /** The VMM is shutting down: finish in-flight work, release the back-end. */
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
