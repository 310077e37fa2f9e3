// The main thread's handle on one vCPU thread: starts the worker, answers the
// exits it hands over by dispatching them to the buses, and reports when it stops.
import os from 'node:os';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import type { Vcpu } from '../kvm/kvm.js';
import { exitReasonName } from '../kvm/ioctls.js';
import { tgkill } from '../host/libc.js';
import type { Bus, DeviceCounters } from '../devices/bus.js';
import { CoalescedRing, drainLocked } from './coalesced-ring.js';
import { AccessKind, Mailbox, MailboxState, SPIN_MICROS, MailboxField, spinWhile } from './mailbox.js';
import type { CoalescedRingShare, VcpuLocalDevice, VcpuWorkerData } from './vcpu-worker.js';

export interface VcpuStop {
  vcpu: number;
  /** KVM exit reason, or -1 when KVM_RUN itself failed. */
  reason: number;
  detail: number;
}

export interface Buses {
  pio: Bus;
  mmio: Bus;
}

/** The devices the vCPU thread answers itself, the VM fd their interrupts go through, and the coalesced ring it drains. */
export interface LocalDevices {
  vmFd: number;
  devices: VcpuLocalDevice[];
  ring?: CoalescedRingShare;
}

/** The signal that takes a vCPU thread out of KVM_RUN; the process ignores it otherwise. */
const LEAVE_RUN_SIGNAL = os.constants.signals.SIGUSR2;
/** The longest the main thread serves one vCPU's exits without letting other events run. */
const YIELD_EVERY_MS = 5;
let leaveRunHandlerInstalled = false;

export class VcpuThread {
  readonly mailbox = new Mailbox();
  private worker: Worker | undefined;
  /** Errors thrown by device code on the main thread, which must never take the VMM down. */
  private mainThreadErrors = 0;
  /** KVM's coalesced ring through this vCPU's kvm_run mapping, for the writes the vCPU thread left to this thread. */
  private readonly ring: { ring: CoalescedRing; lock: Int32Array } | undefined;

  constructor(
    readonly vcpu: Vcpu,
    private readonly buses: Buses,
    private readonly onDeviceError: (e: unknown) => void,
    private readonly local: LocalDevices = { vmFd: -1, devices: [] },
  ) {
    if (local.ring) this.ring = { ring: new CoalescedRing(vcpu.run.buffer, local.ring.offset), lock: new Int32Array(local.ring.lock) };
  }

  /** Writes taken from KVM's coalesced ring by this vCPU's thread, and by the main thread on its exits. */
  get coalescedWrites(): number {
    return Atomics.load(this.mailbox.header, MailboxField.coalesced) + (this.ring?.ring.drained ?? 0);
  }

  /** Errors device code threw, on the main thread and on the vCPU thread. */
  get deviceErrors(): number {
    return this.mainThreadErrors + Atomics.load(this.mailbox.header, MailboxField.localErrors);
  }

  /** Accesses the vCPU thread answered itself, by device. */
  localAccesses(): Map<string, DeviceCounters> {
    const counts = this.mailbox.localAccesses;
    return new Map(this.local.devices.map((d, i) => [d.name, { reads: counts[2 * i]!, writes: counts[2 * i + 1]!, queued: 0 }]));
  }

  /** Runs the vCPU until it stops; resolves with why. */
  async run(mmapSize: number): Promise<VcpuStop> {
    if (!leaveRunHandlerInstalled) {
      process.on('SIGUSR2', () => {});
      leaveRunHandlerInstalled = true;
    }
    const data: VcpuWorkerData = {
      fd: this.vcpu.fd,
      mmapSize,
      shared: this.mailbox.shared,
      vmFd: this.local.vmFd,
      local: this.local.devices,
      ring: this.local.ring,
    };
    this.worker = new Worker(new URL('./vcpu-worker.js', import.meta.url), { workerData: data });
    const failed = new Promise<VcpuStop>((resolve) => {
      this.worker!.once('error', (e) => {
        this.onDeviceError(e);
        resolve({ vcpu: this.vcpu.id, reason: -1, detail: 0 });
      });
    });
    const stopped = this.serve();
    const stop = await Promise.race([stopped, failed]);
    await this.worker.terminate();
    return stop;
  }

  private async serve(): Promise<VcpuStop> {
    const h = this.mailbox.header;
    let lastYield = performance.now();
    for (;;) {
      // A guest that exits back to back would otherwise keep this loop from ever
      // awaiting, starving stdin, signals and the other vCPUs' loops.
      if (performance.now() - lastYield > YIELD_EVERY_MS) {
        await yieldToEventLoop();
        lastYield = performance.now();
      }
      const state = Atomics.load(h, MailboxField.state);
      if (state === MailboxState.RUNNING) {
        if (spinWhile(h, MailboxField.state, MailboxState.RUNNING, SPIN_MICROS)) continue;
        const w = Atomics.waitAsync(h, MailboxField.state, MailboxState.RUNNING);
        if (w.async) await w.value;
        lastYield = performance.now();
        continue;
      }
      if (state === MailboxState.STOPPED) {
        return { vcpu: this.vcpu.id, reason: h[MailboxField.exitReason]!, detail: h[MailboxField.detail]! };
      }
      this.dispatch();
      Atomics.store(h, MailboxField.state, MailboxState.RUNNING);
      Atomics.notify(h, MailboxField.state);
    }
  }

  /** Runs the access in the mailbox against the bus it targets. */
  private dispatch(): void {
    const h = this.mailbox.header;
    const size = h[MailboxField.size]!;
    const count = h[MailboxField.count]!;
    const isWrite = h[MailboxField.isWrite] === 1;
    const pio = h[MailboxField.kind] === AccessKind.PIO;
    const bus = pio ? this.buses.pio : this.buses.mmio;
    const addr = pio ? h[MailboxField.addrLo]! : (h[MailboxField.addrLo]! >>> 0) + (h[MailboxField.addrHi]! >>> 0) * 2 ** 32;
    const onError = (e: unknown) => {
      this.mainThreadErrors++;
      this.onDeviceError(e);
    };
    // The vCPU thread applied what it could; writes for main-thread devices (the e1000's) come first.
    if (this.ring) drainLocked(this.ring.ring, this.ring.lock, this.buses.pio, this.buses.mmio, { onError });
    bus.dispatch(addr, size, isWrite, this.mailbox.data.subarray(0, size * count), onError);
  }

  /** Asks the vCPU to leave KVM_RUN and end its thread. */
  requestStop(): void {
    Atomics.store(this.mailbox.header, MailboxField.stop, 1);
    this.vcpu.requestImmediateExit();
    const tid = Atomics.load(this.mailbox.header, MailboxField.tid);
    if (tid > 0 && Atomics.load(this.mailbox.header, MailboxField.state) !== MailboxState.STOPPED) {
      try {
        tgkill(tid, LEAVE_RUN_SIGNAL);
      } catch {
        // The thread has already gone.
      }
    }
  }

  /** Exit counts by reason name. */
  exitCounts(): Record<string, number> {
    const out: Record<string, number> = {};
    this.mailbox.exits.forEach((n, reason) => {
      if (n > 0) out[exitReasonName(reason)] = n;
    });
    return out;
  }
}
