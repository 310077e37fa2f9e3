// virtio-net's data plane driven on this thread, behind the main-thread contract
// (in-process.ts) that unit tests and the fuzz rig drive: what the device worker
// does, by hand. At activation each ready queue is started on the data plane from
// its state; a kick is passes of process() until the queue is drained (bounded);
// a failure of the data plane fails the activation, as the worker reports it.
import type { NetBackend } from '../../src/net/backend.js';
import { readConfigBytes, VirtioId, describeError } from '../../src/virtio/device.js';
import type { ActiveQueues, MainThreadDevice } from '../../src/virtio/in-process.js';
import { MAX_CTRL_COMMAND, NetDataPlane, netCounters } from '../../src/virtio/net-queues.js';
import { netConfigSpace, netFeatures, netQueueSizes, type VirtioNetOptions } from '../../src/virtio/net.js';
import type { QueueDataPlane } from '../../src/virtio/worker/data-plane.js';

/** Chains per pass, and passes per kick, as the worker's loop takes them. */
const BUDGET = 64;
const PASSES = 64;
const NO_POLLER = { add: () => 0, remove: () => {} };

export class InProcessNet implements MainThreadDevice {
  readonly type = VirtioId.NET;
  readonly name = 'virtio-net';
  readonly features: bigint;
  readonly queueSizes: readonly number[];
  readonly configSize = 12;
  readonly plane: NetDataPlane;
  private readonly config: Uint8Array;
  private active: ActiveQueues | undefined;
  private planes: (QueueDataPlane | undefined)[] = [];

  /** Attaches `backend` to the data plane. */
  constructor(backend: NetBackend, options: VirtioNetOptions) {
    this.features = netFeatures(options.pairs, backend.offloads);
    this.queueSizes = netQueueSizes(options.pairs);
    const config = netConfigSpace(options.mac, options.pairs);
    this.config = new Uint8Array(config);
    const card = {
      mac: options.mac,
      pairs: options.pairs,
      maxCtrlCommand: options.maxCtrlCommand ?? MAX_CTRL_COMMAND,
      features: this.features,
      config,
    };
    this.plane = new NetDataPlane(backend, card, netCounters(options.pairs), (reason) => this.active?.fail(reason));
    backend.attach(this.plane, NO_POLLER);
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.config, offset, data);
  }

  writeConfig(): void {}

  activate(active: ActiveQueues): void {
    this.active = active;
    this.planes = active.queues.map((q, index) => {
      if (!q || active.stopped) return undefined;
      try {
        const queue = { index, state: q.state(), kickFd: -1, callFd: -1 };
        return this.plane.startQueue({ memory: active.memory, queue, features: active.features, signal: () => active.interrupt.queue(index) });
      } catch (e) {
        active.fail(`queue ${index} start: ${describeError(e)}`);
        return undefined;
      }
    });
  }

  queueNotify(index: number): void {
    const plane = this.planes[index];
    try {
      for (let i = 0; i < PASSES && plane?.process(BUDGET) && !this.active?.stopped; i++);
    } catch (e) {
      this.active?.fail(`queue ${index}: ${describeError(e)}`);
    }
  }

  /** A packet from the back-end, as it reaches the data plane. */
  receive(queue: number, packet: Uint8Array): boolean {
    return this.plane.receive(queue, packet);
  }

  reset(): void {
    for (const p of this.planes) p?.stop();
    this.planes = [];
    this.active = undefined;
    this.plane.reset();
  }

  stats(): Record<string, number> {
    return this.plane.stats();
  }

  async close(): Promise<void> {
    this.reset();
    this.plane.close();
  }
}
