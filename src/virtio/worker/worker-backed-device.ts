// The transport-facing half every virtio device with a device worker shares: the
// activation it was given, queues started and stopped in the worker, resets passed
// on, a failure (of a queue, the device or the worker) reported to the transport.
import type { MemoryTable } from '../../memory/guest-memory.js';
import type { DeviceHost, QueueResources } from '../device.js';
import type { QueueState } from '../queue.js';
import { WorkerSlot, type DeviceKind } from './device-worker.js';

export abstract class WorkerBackedDevice {
  abstract readonly name: string;
  abstract readonly queueSizes: readonly number[];
  protected readonly workers: WorkerSlot;
  private activation: { features: bigint; memory: MemoryTable; host: DeviceHost } | undefined;

  constructor(kind: DeviceKind, init: unknown, deviceCounters: number) {
    this.workers = new WorkerSlot(kind, init, deviceCounters, (reason, index) =>
      this.activation?.host.fail(index === undefined ? reason : `queue ${index}: ${reason}`),
    );
  }

  activate(features: bigint, memory: MemoryTable, host: DeviceHost): void {
    this.activation = { features, memory, host };
  }

  startQueue(q: QueueResources): void {
    const a = this.activation;
    if (!a || q.index >= this.queueSizes.length) throw new Error(`${this.name}: queue ${q.index} started without an activation`);
    this.workers.live().start(a.memory, a.features, q);
  }

  stopQueue(index: number): Promise<QueueState | undefined> {
    return this.workers.stop(index);
  }

  reset(): void {
    this.activation = undefined;
    this.workers.reset();
  }

  /** The worker stops its queues and ends (the requests it holds are finished first). */
  protected async closeWorker(): Promise<void> {
    this.activation = undefined;
    await this.workers.close();
  }
}
