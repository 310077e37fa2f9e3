// Body of one vCPU thread. It owns its kvm_run mapping and views of the devices
// whose state is shared memory (the UART, the PCI configuration ports): it issues
// KVM_RUN, counts exits, applies the writes KVM coalesced for those devices,
// answers port accesses they can answer alone, and hands every other I/O and MMIO
// exit (and any exit while writes for main-thread devices wait in the ring) to the
// main thread through its Mailbox (see mailbox.ts), blocking until the device has
// answered.
import { workerData } from 'node:worker_threads';
import { Bus } from '../devices/bus.js';
import { Serial } from '../devices/legacy/serial.js';
import { PciConfigIo } from '../devices/pci/config-io.js';
import { ExitReason, Ioctl, IoDirection, RunOffset } from '../kvm/ioctls.js';
import { irqLine } from '../kvm/kvm.js';
import { EAGAIN, EINTR, gettid, ioctlRaw, mmapShared } from '../host/libc.js';
import { CoalescedRing, drainLocked, type DrainOptions } from './coalesced-ring.js';
import { AccessKind, EXIT_COUNTERS, Mailbox, MailboxState, MAX_LOCAL_DEVICES, SPIN_MICROS, MailboxField, spinWhile } from './mailbox.js';

/** A device the vCPU thread answers itself (all of it, or what needs no other state): its state is shared memory. */
export type VcpuLocalDevice = { name: string; port: number; length: number; state: SharedArrayBuffer } & (
  | {
      kind: 'serial';
      /** The interrupt line it raises with KVM_IRQ_LINE on vmFd. */
      gsi: number;
    }
  | { kind: 'pci-config' }
);

/** KVM's coalesced ring, inside every vCPU's kvm_run mapping at `offset`; `lock` (an Int32) keeps two threads (vCPU or main) from draining it at once. */
export interface CoalescedRingShare {
  offset: number;
  lock: SharedArrayBuffer;
}

export interface VcpuWorkerData {
  fd: number;
  mmapSize: number;
  shared: SharedArrayBuffer;
  vmFd: number;
  local: VcpuLocalDevice[];
  ring?: CoalescedRingShare;
}

/** The port bus of the thread's own devices; `owner` says which device answers an access alone, if any. */
function localBus(vmFd: number, devices: VcpuLocalDevice[]): { bus: Bus; owner: (port: number, len: number) => number } {
  if (devices.length > MAX_LOCAL_DEVICES) throw new Error(`at most ${MAX_LOCAL_DEVICES} devices on a vCPU thread`);
  const bus = new Bus('pio-local');
  const alone = devices.map((d) => {
    if (d.kind === 'serial') {
      bus.insert(Serial.attach(d.name, d.state, { set: (level) => irqLine(vmFd, d.gsi, level) }), d.port, d.length);
      return () => true;
    }
    const view = PciConfigIo.attach(d.state);
    bus.insert(view, d.port, d.length);
    return (offset: number) => view.answersAlone(offset);
  });
  const owner = (port: number, len: number) => devices.findIndex((d, i) => port >= d.port && port + len <= d.port + d.length && alone[i]!(port - d.port));
  return { bus, owner };
}

function runVcpu({ fd, mmapSize, shared, vmFd, local, ring: share }: VcpuWorkerData): void {
  const box = new Mailbox(shared);
  const own = localBus(vmFd, local);
  const h = box.header;
  const runMap = mmapShared(fd, mmapSize);
  const run = new DataView(runMap.buffer);
  const runBytes = new Uint8Array(runMap.buffer);
  Atomics.store(h, MailboxField.tid, gettid());
  const ring = share ? new CoalescedRing(runMap.buffer, share.offset) : undefined;
  const ringLock = share ? new Int32Array(share.lock) : undefined;
  const noMmio = new Bus('mmio-local');

  const ringOptions: DrainOptions = {
    take: (pio, addr, len) => pio && own.owner(addr, len) >= 0,
    onError: () => Atomics.add(h, MailboxField.localErrors, 1),
  };
  /**
   * Applies the writes KVM queued for this thread's own devices (in guest order,
   * before this exit's access); false when writes for main-thread devices are left,
   * which the main thread must apply before this exit's access.
   */
  const drainRing = (): boolean => {
    if (!ring || !ringLock) return true;
    const before = ring.drained;
    const empty = drainLocked(ring, ringLock, own.bus, noMmio, ringOptions);
    if (ring.drained !== before) Atomics.add(h, MailboxField.coalesced, ring.drained - before);
    return empty;
  };

  const stop = (reason: number, detail: number) => {
    h[MailboxField.exitReason] = reason;
    h[MailboxField.detail] = detail;
    Atomics.store(h, MailboxField.state, MailboxState.STOPPED);
    Atomics.notify(h, MailboxField.state);
  };

  /** Hands the access in the mailbox to the main thread and waits for its answer. */
  const handOff = () => {
    Atomics.store(h, MailboxField.state, MailboxState.PENDING);
    Atomics.notify(h, MailboxField.state);
    if (spinWhile(h, MailboxField.state, MailboxState.PENDING, SPIN_MICROS)) return;
    while (Atomics.load(h, MailboxField.state) === MailboxState.PENDING) Atomics.wait(h, MailboxField.state, MailboxState.PENDING);
  };

  for (;;) {
    if (Atomics.load(h, MailboxField.stop)) return stop(ExitReason.INTR, 0);
    const ret = ioctlRaw(fd, Ioctl.RUN, 0);
    if (ret < 0) {
      if (-ret === EINTR || -ret === EAGAIN) {
        runBytes[RunOffset.immediateExit] = 0;
        continue;
      }
      return stop(-1, -ret);
    }
    const reason = run.getUint32(RunOffset.exitReason, true);
    box.exits[Math.min(reason, EXIT_COUNTERS - 1)]!++;
    const ringEmpty = reason === ExitReason.IO || reason === ExitReason.MMIO ? drainRing() : true;
    switch (reason) {
      case ExitReason.IO: {
        const size = run.getUint8(RunOffset.ioSize);
        const count = run.getUint32(RunOffset.ioCount, true);
        const isWrite = run.getUint8(RunOffset.ioDirection) === IoDirection.OUT;
        const dataOffset = Number(run.getBigUint64(RunOffset.ioDataOffset, true));
        const bytes = size * count;
        if (bytes > box.data.length || dataOffset + bytes > runBytes.length) return stop(reason, -1);
        const port = run.getUint16(RunOffset.ioPort, true);
        const device = ringEmpty ? own.owner(port, size) : -1;
        if (device >= 0) {
          box.localAccesses[2 * device + (isWrite ? 1 : 0)]! += count;
          // Guest input must not end the vCPU thread: what the device throws is counted.
          own.bus.dispatch(port, size, isWrite, runBytes.subarray(dataOffset, dataOffset + bytes), () => Atomics.add(h, MailboxField.localErrors, 1));
          break;
        }
        h[MailboxField.kind] = AccessKind.PIO;
        h[MailboxField.addrLo] = port;
        h[MailboxField.addrHi] = 0;
        h[MailboxField.size] = size;
        h[MailboxField.count] = count;
        h[MailboxField.isWrite] = isWrite ? 1 : 0;
        if (isWrite) box.data.set(runBytes.subarray(dataOffset, dataOffset + bytes));
        handOff();
        if (!isWrite) runBytes.set(box.data.subarray(0, bytes), dataOffset);
        break;
      }
      case ExitReason.MMIO: {
        const len = run.getUint32(RunOffset.mmioLen, true);
        const isWrite = run.getUint8(RunOffset.mmioIsWrite) !== 0;
        const addr = run.getBigUint64(RunOffset.mmioPhysAddr, true);
        if (len > 8) return stop(reason, -1);
        h[MailboxField.kind] = AccessKind.MMIO;
        h[MailboxField.addrLo] = Number(addr & 0xffffffffn) | 0;
        h[MailboxField.addrHi] = Number(addr >> 32n) | 0;
        h[MailboxField.size] = len;
        h[MailboxField.count] = 1;
        h[MailboxField.isWrite] = isWrite ? 1 : 0;
        if (isWrite) box.data.set(runBytes.subarray(RunOffset.mmioData, RunOffset.mmioData + len));
        handOff();
        if (!isWrite) runBytes.set(box.data.subarray(0, len), RunOffset.mmioData);
        break;
      }
      case ExitReason.INTR:
      case ExitReason.IRQ_WINDOW_OPEN:
        break;
      default: {
        // Terminal: HLT without an in-kernel irqchip, shutdown (triple fault),
        // failed entry, internal error, system event. Keep the first word of detail.
        return stop(reason, run.getInt32(RunOffset.union, true));
      }
    }
  }
}

runVcpu(workerData as VcpuWorkerData);
