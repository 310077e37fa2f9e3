// What runs inside a device worker (device-worker-main.ts): a device's data
// plane, made from plain data and driven by the worker's loop. A WorkerDevice is
// made once per worker from the device's plain-data description; each queue the
// transport starts becomes one QueueDataPlane. The same classes run on whatever
// thread is given the plain data; nothing here knows about workers.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { FdPoller } from '../../net/backend.js';
import type { QueueResources } from '../device.js';
import type { QueueState } from '../queue.js';

export interface QueueDataPlane {
  /** Works through at most `budget` chains; true when more are waiting (the loop then comes back without a kick). */
  process(budget: number): boolean;
  /** Stops taking chains (the one in hand is done): where the queue is, to be started again, here or elsewhere. */
  stop(): QueueState;
}

export interface DataPlaneContext {
  memory: GuestMemory;
  queue: QueueResources;
  /** The features the driver accepted. */
  features: bigint;
  /** Interrupts the driver (signals the queue's call fd). */
  signal(): void;
}

/** What a worker gives the device it runs. */
export interface WorkerEnv {
  /** The device's counters (after the worker's own), shared with the main thread. */
  counters: Float64Array;
  /** The worker's own loop, for back-end fds; what a handler throws fails the device. */
  poller: FdPoller;
  /** The device cannot go on (DEVICE_NEEDS_RESET); the worker goes on. */
  fail(reason: string): void;
}

export interface WorkerDevice {
  startQueue(ctx: DataPlaneContext): QueueDataPlane;
  /** The driver reset the device (every queue was stopped first): forget the driver's state, keep the back-end. */
  reset(): void;
  /** The worker ends: let the back-end go. */
  close(): void;
}

/** Counters every worker keeps before the device's own. */
export const WORKER_COUNTERS = ['kicks', 'calls'] as const;
export const WorkerCounter = { kicks: 0, calls: 1 } as const;
