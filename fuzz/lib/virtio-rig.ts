// A main-thread virtio device (in-process.ts) driven without its transport, the
// way onMainThread() drives it behind VirtioPciDevice: activated with ready
// queues the driver placed in RAM and a feature set it accepted, kicked, reset
// and activated again. The device's own entry points (queueNotify, and whatever
// the target adds) are called bare, so anything they throw reaches the harness:
// the try/catch of onMainThread() is not there to hide it.
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { bit, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1 } from '../../src/virtio/device.js';
import type { ActiveQueues, MainThreadDevice } from '../../src/virtio/in-process.js';
import { SplitQueue } from '../../src/virtio/queue.js';
import type { ByteReader, Op } from './bytes.js';
import { guestMemory, scribble } from './guest.js';
import { HostileDriver, ringLayout } from './rings.js';

/** Operation kinds every device target has; a target's own kinds follow. */
export const RigOp = { RING: 0, KICK: 1, SCRIBBLE: 2, RESET: 3 } as const;
export const RIG_OPS = 4;

export class VirtioRig {
  driver: HostileDriver;
  active: ActiveQueues & { stopped: boolean };
  readonly failures: string[] = [];
  interrupts = 0;

  /** `mem`: guest RAM over plain buffers unless the target brings its own (and closes it). */
  constructor(
    readonly device: MainThreadDevice,
    r: ByteReader,
    readonly mem: GuestMemory = guestMemory(),
  ) {
    this.active = this.activate(r);
    this.driver = new HostileDriver(
      this.mem,
      this.active.queues.map((q) => q?.size ?? 1),
    );
  }

  private get queueCount(): number {
    return this.device.queueSizes.length;
  }

  /** DRIVER_OK: queue sizes and features from the input, rings at their homes. */
  private activate(r: ByteReader): ActiveQueues & { stopped: boolean } {
    const offered = this.device.features | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_INDIRECT_DESC) | bit(VIRTIO_F_RING_EVENT_IDX);
    const features = (r.u64() & offered) | bit(VIRTIO_F_VERSION_1);
    const queues = this.device.queueSizes.map((max, i) => {
      const size = Math.min(max, 1 << (r.u8() % 9)) || max;
      const home = ringLayout(i);
      const eventIdx = (features & bit(VIRTIO_F_RING_EVENT_IDX)) !== 0n;
      const state = { size, descTable: home.desc, availRing: home.avail, usedRing: home.used, eventIdx, nextAvail: 0, nextUsed: 0 };
      return r.u8() < 240 ? SplitQueue.fromState(max, state, this.mem) : undefined;
    });
    const active = {
      memory: this.mem,
      queues,
      features,
      interrupt: { queue: () => this.interrupts++, configChanged: () => this.interrupts++ },
      stopped: false,
      fail: (why: string) => {
        if (active.stopped) return;
        this.failures.push(why);
        active.stopped = true;
      },
    };
    this.device.activate(active);
    return active;
  }

  /** Handles the shared operation kinds; false for a kind the target must handle. */
  step(op: Op, kinds: number): boolean {
    const r = op.args;
    switch (op.kind % kinds) {
      case RigOp.RING:
        this.driver.apply(r.u8(), r.u8() % this.queueCount, r);
        return true;
      case RigOp.KICK:
        // The transport stops kicking a device that failed, until the driver resets it.
        if (!this.active.stopped) this.device.queueNotify(r.u8() % this.queueCount);
        return true;
      case RigOp.SCRIBBLE:
        scribble(this.mem, r);
        return true;
      case RigOp.RESET:
        this.active.stopped = true;
        this.device.reset();
        this.active = this.activate(r);
        this.driver = new HostileDriver(
          this.mem,
          this.active.queues.map((q) => q?.size ?? 1),
        );
        return true;
    }
    return false;
  }
}
