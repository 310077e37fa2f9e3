// What runs inside a device worker: one queue's data plane, made from plain data
// and driven by the worker's loop (device-worker-main.ts). The same class runs on
// whatever thread is given the plain data; nothing here knows about workers.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { QueueResources } from '../device.js';
import type { QueueState } from '../queue.js';

export interface QueueDataPlane {
  /** Works through at most `budget` chains; true when more are waiting (the loop then comes back without a kick). */
  process(budget: number): boolean;
  /** Where the queue is: called once it stopped taking chains. */
  state(): QueueState;
}

export interface DataPlaneContext {
  memory: GuestMemory;
  queue: QueueResources;
  features: bigint;
  /** The device's counters (after the worker's own), shared with the main thread. */
  counters: Float64Array;
  /** Interrupts the driver (signals the queue's call fd). */
  signal(): void;
}

/** Counters every worker keeps before the device's own. */
export const WORKER_COUNTERS = ['kicks', 'calls'] as const;
export const WorkerCounter = { kicks: 0, calls: 1 } as const;
