// virtio over PCI, modern interface only (virtio 1.x, "Virtio Over PCI Bus"): the
// vendor capabilities that point into BAR 0, the common configuration registers
// (feature negotiation, device status, queue setup), the ISR, the notification
// area and MSI-X. Any VirtioDevice plugs in; the device never sees PCI.
//
// Each queue has a kick eventfd and a call eventfd for its whole life, handed to
// the device's data plane when the queue starts (device.ts). A kick reaches the
// kick fd either straight from KVM (an ioeventfd on the queue's notify address,
// no exit) or from this transport's notify handler (an exit, counted). A call fd
// is bound into KVM as an irqfd while its MSI-X vector is enabled and unmasked, so
// the data plane interrupts the guest without any VMM thread in between; when the
// vector is masked, MSI-X is off (INTx) or irqfd is off, the transport watches the
// call fd itself and raises the interrupt (pending bit, ISR, INTx), as QEMU does
// for vhost.
import type { BusDevice, IrqLine } from '../devices/bus.js';
import { ConfigSpace, PCI_CAP_ID_VNDR } from '../devices/pci/config-space.js';
import type { PciBar, PciDevice } from '../devices/pci/device.js';
import { Msix, type MsiSink } from '../devices/pci/msix.js';
import { closeFd, eventfd, eventfdDrain, eventfdSignal } from '../host/libc.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import {
  bit,
  describeError,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  type QueueResources,
  type VirtioDevice,
} from './device.js';
import type { WatchFd } from './in-process.js';
import { SplitQueue } from './queue.js';

export const VIRTIO_PCI_VENDOR = 0x1af4;
const MODERN_DEVICE_ID_BASE = 0x1040;
const NO_VECTOR = 0xffff;

export const Status = { ACKNOWLEDGE: 1, DRIVER: 2, DRIVER_OK: 4, FEATURES_OK: 8, NEEDS_RESET: 0x40, FAILED: 0x80 } as const;

const CapType = { COMMON: 1, NOTIFY: 2, ISR: 3, DEVICE: 4, PCI_CFG: 5 } as const;
/** Where, inside the PCI_CFG capability, the driver picks the BAR, offset and length, and the data window. */
const PCI_CFG_BAR = 4;
const PCI_CFG_OFFSET = 8;
const PCI_CFG_LENGTH = 12;
const PCI_CFG_DATA = 16;

/** BAR 0 layout: one page per structure. */
const COMMON_OFFSET = 0x0000;
const COMMON_SIZE = 0x38;
const ISR_OFFSET = 0x1000;
const DEVICE_OFFSET = 0x2000;
const NOTIFY_OFFSET = 0x3000;
const NOTIFY_MULTIPLIER = 4;
const MSIX_TABLE_OFFSET = 0x4000;
const MSIX_PBA_OFFSET = 0x6000;
const BAR0_SIZE = 0x8000;

/** PCI class codes Linux shows for each device type (as QEMU's devices do). */
const CLASS_BY_TYPE: Record<number, number> = { 1: 0x020000, 2: 0x010000, 3: 0x078000, 4: 0x00ff00 };

/** Common configuration register offsets. */
const CommonCfg = {
  DEVICE_FEATURE_SELECT: 0x00,
  DEVICE_FEATURE: 0x04,
  DRIVER_FEATURE_SELECT: 0x08,
  DRIVER_FEATURE: 0x0c,
  MSIX_CONFIG: 0x10,
  NUM_QUEUES: 0x12,
  DEVICE_STATUS: 0x14,
  CONFIG_GENERATION: 0x15,
  QUEUE_SELECT: 0x16,
  QUEUE_SIZE: 0x18,
  QUEUE_MSIX_VECTOR: 0x1a,
  QUEUE_ENABLE: 0x1c,
  QUEUE_NOTIFY_OFF: 0x1e,
  QUEUE_DESC: 0x20,
  QUEUE_DRIVER: 0x28,
  QUEUE_DEVICE: 0x30,
} as const;

/** Makes KVM signal `fd` on a guest write to [addr, addr+len) instead of exiting; returns the undo. */
export type IoEventRegistrar = (addr: number, len: number, fd: number) => () => void;

export interface VirtioPciEnv {
  memory: GuestMemory;
  msi: MsiSink;
  /** Watches call fds the transport delivers itself. */
  watch: WatchFd;
  /** Absent: every kick is an exit. */
  ioevents?: IoEventRegistrar;
}

export interface TransportCounters {
  /** Queue kicks that exited to the VMM (the others reach the kick fd through an ioeventfd). */
  notifyExits: number;
  /** Interrupts this transport raised (config changes, and calls while a vector could not take an irqfd). */
  interruptsMsix: number;
  interruptsIntx: number;
  needsReset: number;
}

/** How a running queue's call fd reaches the guest: bound into KVM for `vector`, or watched here. */
type CallRoute = { kind: 'irqfd'; vector: number } | { kind: 'watched'; undo: () => void };

export class VirtioPciDevice implements PciDevice {
  readonly name: string;
  readonly config: ConfigSpace;
  readonly bars: readonly PciBar[];
  readonly counters: TransportCounters = { notifyExits: 0, interruptsMsix: 0, interruptsIntx: 0, needsReset: 0 };
  /** Why the device last set DEVICE_NEEDS_RESET. */
  lastFailure: string | undefined;
  /** What the driver programmed into each queue's registers; live queues are made from it at DRIVER_OK. */
  private queues: QueueRegisters[];
  private readonly queueVectors: number[];
  private readonly msix: Msix;
  private readonly offered: bigint;
  private intx: IrqLine = { set: () => {} };
  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  private driverFeatures = 0n;
  private configVector = NO_VECTOR;
  private status = 0;
  private configGeneration = 0;
  private queueSelect = 0;
  private isr = 0;
  private undoIoevents: (() => void)[] = [];
  private readonly kickFds: number[];
  private readonly callFds: number[];
  /** Per queue: running in the device's data plane, and how its call fd is routed. */
  private readonly running: boolean[];
  private readonly callRoutes: (CallRoute | undefined)[];
  /** Bumped per activation: a late report from an earlier one is ignored. */
  private epoch = 0;
  /** Settles when every queue stop asked for so far has finished. */
  private stopping: Promise<void> = Promise.resolve();
  private stopsInFlight = 0;
  /** The driver wrote 0 to the status; it reads back 0 once the queues have stopped. */
  private resetPending = false;
  /** Config-space offset of the PCI_CFG capability. */
  private readonly pciCfgCap: number;

  constructor(
    readonly device: VirtioDevice,
    private readonly env: VirtioPciEnv,
  ) {
    this.name = device.name;
    this.offered = device.features | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_INDIRECT_DESC) | bit(VIRTIO_F_RING_EVENT_IDX);
    this.queues = device.queueSizes.map((maxSize) => queueRegisters(maxSize));
    this.queueVectors = this.queues.map(() => NO_VECTOR);
    this.kickFds = this.queues.map(() => eventfd());
    this.callFds = this.queues.map(() => eventfd());
    this.running = this.queues.map(() => false);
    this.callRoutes = this.queues.map(() => undefined);
    this.config = new ConfigSpace({
      vendor: VIRTIO_PCI_VENDOR,
      device: MODERN_DEVICE_ID_BASE + device.type,
      classCode: CLASS_BY_TYPE[device.type] ?? 0xff0000,
      revision: 1,
      subsystemVendor: VIRTIO_PCI_VENDOR,
      subsystem: MODERN_DEVICE_ID_BASE + device.type,
      interruptPin: 1,
    });
    // One vector for configuration changes, one per queue.
    this.msix = new Msix(this.queues.length + 1, env.msi);
    this.msix.onChange = () => this.routeCalls();
    if (this.msix.tableSize > MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) throw new Error(`${device.name}: too many queues`);
    this.addVirtioCap(CapType.COMMON, COMMON_OFFSET, COMMON_SIZE);
    this.addVirtioCap(CapType.ISR, ISR_OFFSET, 1);
    if (device.configSize) this.addVirtioCap(CapType.DEVICE, DEVICE_OFFSET, device.configSize);
    this.addVirtioCap(CapType.NOTIFY, NOTIFY_OFFSET, NOTIFY_MULTIPLIER * this.queues.length, NOTIFY_MULTIPLIER);
    this.pciCfgCap = this.addVirtioCap(CapType.PCI_CFG, 0, 0, undefined, 4);
    this.config.setWritable(this.pciCfgCap + PCI_CFG_BAR, [0xff]);
    this.config.setWritable(this.pciCfgCap + PCI_CFG_OFFSET, new Uint8Array(12).fill(0xff)); // offset, length, data
    this.msix.addCapability(this.config, 0, MSIX_TABLE_OFFSET, 0, MSIX_PBA_OFFSET);
    this.bars = [{ index: 0, kind: 'memory', size: BAR0_SIZE, region: this.bar0 }];
  }

  /** struct virtio_pci_cap, plus a 4-byte trailer (notify_off_multiplier, or pci_cfg_data); returns its offset. */
  private addVirtioCap(type: number, offset: number, length: number, multiplier?: number, trailer = multiplier === undefined ? 0 : 4): number {
    const body = new Uint8Array(14 + trailer);
    const v = new DataView(body.buffer);
    body[0] = body.length + 2; // cap_len counts the ID and next bytes
    body[1] = type;
    body[2] = 0; // BAR 0
    v.setUint32(6, offset, true);
    v.setUint32(10, length, true);
    if (multiplier !== undefined) v.setUint32(14, multiplier, true);
    return this.config.addCapability(PCI_CAP_ID_VNDR, body);
  }

  /**
   * The PCI_CFG capability is a window into BAR 0 through configuration space: the
   * driver sets bar/offset/length, then reads or writes pci_cfg_data.
   */
  private pciCfgWindow(): { offset: number; length: number } | undefined {
    const cap = this.pciCfgCap;
    const length = this.config.u32(cap + PCI_CFG_LENGTH);
    const offset = this.config.u32(cap + PCI_CFG_OFFSET);
    if (this.config.u8(cap + PCI_CFG_BAR) !== 0 || ![1, 2, 4].includes(length) || offset % length !== 0 || offset + length > BAR0_SIZE) return undefined;
    return { offset, length };
  }

  configRead(offset: number, data: Uint8Array): void {
    const at = this.pciCfgCap + PCI_CFG_DATA;
    if (offset >= at + 4 || offset + data.length <= at) return;
    const w = this.pciCfgWindow();
    const window = new Uint8Array(4);
    if (w) this.bar0.read(w.offset, window.subarray(0, w.length));
    for (let i = 0; i < data.length; i++) if (offset + i >= at && offset + i < at + 4) data[i] = window[offset + i - at]!;
  }

  plugged(intx: IrqLine): void {
    this.intx = intx;
  }

  configWritten(offset: number, length: number): void {
    this.msix.configWritten(offset, length);
    const at = this.pciCfgCap + PCI_CFG_DATA;
    const w = this.pciCfgWindow();
    if (w && offset <= at && offset + length >= at + w.length) this.bar0.write(w.offset, this.config.bytes.slice(at, at + w.length));
  }

  /** With the BAR placed, queue kicks can bypass the VMM through ioeventfds. */
  barMapped(index: number, address: number | undefined): void {
    if (index !== 0 || !this.env.ioevents) return;
    for (const undo of this.undoIoevents) undo();
    this.undoIoevents = [];
    if (address === undefined) return;
    this.kickFds.forEach((fd, q) => this.undoIoevents.push(this.env.ioevents!(address + NOTIFY_OFFSET + q * NOTIFY_MULTIPLIER, 2, fd)));
  }

  /** A notify write that exited: passed on to the kick fd, as KVM would have. */
  private kick(q: number): void {
    this.counters.notifyExits++;
    const fd = this.kickFds[q];
    if (fd !== undefined) eventfdSignal(fd);
  }

  // -- BAR 0 -----------------------------------------------------------------

  private readonly bar0: BusDevice = {
    name: 'virtio-pci-bar0',
    read: (offset, data) =>
      this.guardAccess(
        () => this.readBar0(offset, data),
        () => data.fill(0xff),
      ),
    write: (offset, data) => this.guardAccess(() => this.writeBar0(offset, data)),
  };

  /** A register access that throws is the device's fault, triggered by the guest: the device fails, the VM goes on. */
  private guardAccess(access: () => void, onError?: () => void): void {
    try {
      access();
    } catch (e) {
      onError?.();
      this.fail(`register access: ${describeError(e)}`);
    }
  }

  private readBar0(offset: number, data: Uint8Array): void {
    if (offset < COMMON_OFFSET + 0x1000) return this.readCommon(offset - COMMON_OFFSET, data);
    if (offset < ISR_OFFSET + 0x1000) return this.readIsr(offset - ISR_OFFSET, data);
    if (offset < DEVICE_OFFSET + 0x1000) return this.device.readConfig(offset - DEVICE_OFFSET, data);
    if (offset >= MSIX_TABLE_OFFSET && offset < MSIX_PBA_OFFSET) return this.msix.tableRegion.read(offset - MSIX_TABLE_OFFSET, data);
    if (offset >= MSIX_PBA_OFFSET) return this.msix.pbaRegion.read(offset - MSIX_PBA_OFFSET, data);
    data.fill(0);
  }

  private writeBar0(offset: number, data: Uint8Array): void {
    if (offset < COMMON_OFFSET + 0x1000) return this.writeCommon(offset - COMMON_OFFSET, data);
    if (offset < ISR_OFFSET + 0x1000) return;
    if (offset < DEVICE_OFFSET + 0x1000) return this.device.writeConfig(offset - DEVICE_OFFSET, data);
    if (offset < NOTIFY_OFFSET + 0x1000) return this.kick(Math.floor((offset - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER));
    if (offset < MSIX_PBA_OFFSET) return this.msix.tableRegion.write(offset - MSIX_TABLE_OFFSET, data);
  }

  /** Reading the ISR returns and clears it, and drops INTx. */
  private readIsr(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset !== 0) return;
    data[0] = this.isr;
    this.isr = 0;
    this.intx.set(false);
  }

  private get selected(): QueueRegisters | undefined {
    return this.queues[this.queueSelect];
  }

  /** The common configuration structure as the driver would read it now. */
  private commonSnapshot(): DataView {
    const v = new DataView(new ArrayBuffer(COMMON_SIZE));
    const q = this.selected;
    const featureWord = (features: bigint, select: number): number => (select < 2 ? Number((features >> BigInt(32 * select)) & 0xffffffffn) : 0);
    v.setUint32(CommonCfg.DEVICE_FEATURE_SELECT, this.deviceFeatureSelect, true);
    v.setUint32(CommonCfg.DEVICE_FEATURE, featureWord(this.offered, this.deviceFeatureSelect), true);
    v.setUint32(CommonCfg.DRIVER_FEATURE_SELECT, this.driverFeatureSelect, true);
    v.setUint32(CommonCfg.DRIVER_FEATURE, featureWord(this.driverFeatures, this.driverFeatureSelect), true);
    v.setUint16(CommonCfg.MSIX_CONFIG, this.configVector, true);
    v.setUint16(CommonCfg.NUM_QUEUES, this.queues.length, true);
    v.setUint8(CommonCfg.DEVICE_STATUS, this.resetPending ? this.status || Status.ACKNOWLEDGE : this.status);
    v.setUint8(CommonCfg.CONFIG_GENERATION, this.configGeneration & 0xff);
    v.setUint16(CommonCfg.QUEUE_SELECT, this.queueSelect, true);
    if (q) {
      v.setUint16(CommonCfg.QUEUE_SIZE, q.size, true);
      v.setUint16(CommonCfg.QUEUE_MSIX_VECTOR, this.queueVectors[this.queueSelect]!, true);
      v.setUint16(CommonCfg.QUEUE_ENABLE, q.ready ? 1 : 0, true);
      v.setUint16(CommonCfg.QUEUE_NOTIFY_OFF, this.queueSelect, true);
      v.setBigUint64(CommonCfg.QUEUE_DESC, BigInt(q.descTable), true);
      v.setBigUint64(CommonCfg.QUEUE_DRIVER, BigInt(q.availRing), true);
      v.setBigUint64(CommonCfg.QUEUE_DEVICE, BigInt(q.usedRing), true);
    }
    return v;
  }

  private readCommon(offset: number, data: Uint8Array): void {
    const v = this.commonSnapshot();
    for (let i = 0; i < data.length; i++) data[i] = offset + i < COMMON_SIZE ? v.getUint8(offset + i) : 0;
  }

  /**
   * Writes of any width: the bytes are laid over the current register values, then
   * each register the write touched takes its new value.
   */
  private writeCommon(offset: number, data: Uint8Array): void {
    // Until the reset has finished (the status reads 0) the driver has nothing to program.
    if (offset >= COMMON_SIZE || this.resetPending) return;
    const v = this.commonSnapshot();
    const end = Math.min(offset + data.length, COMMON_SIZE);
    for (let i = offset; i < end; i++) v.setUint8(i, data[i - offset]!);
    const touches = (reg: number, size: number): boolean => offset < reg + size && end > reg;
    const q = this.selected;
    const queueWritable = q !== undefined && !q.ready && !(this.status & Status.DRIVER_OK);
    if (touches(CommonCfg.DEVICE_FEATURE_SELECT, 4)) this.deviceFeatureSelect = v.getUint32(CommonCfg.DEVICE_FEATURE_SELECT, true);
    if (touches(CommonCfg.DRIVER_FEATURE_SELECT, 4)) this.driverFeatureSelect = v.getUint32(CommonCfg.DRIVER_FEATURE_SELECT, true);
    if (touches(CommonCfg.DRIVER_FEATURE, 4) && this.driverFeatureSelect < 2 && !(this.status & Status.FEATURES_OK)) {
      const shift = BigInt(32 * this.driverFeatureSelect);
      const word = BigInt(v.getUint32(CommonCfg.DRIVER_FEATURE, true));
      this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (word << shift);
    }
    if (touches(CommonCfg.MSIX_CONFIG, 2)) this.configVector = this.checkVector(v.getUint16(CommonCfg.MSIX_CONFIG, true));
    if (touches(CommonCfg.QUEUE_SELECT, 2)) this.queueSelect = v.getUint16(CommonCfg.QUEUE_SELECT, true);
    else if (q) {
      if (touches(CommonCfg.QUEUE_MSIX_VECTOR, 2)) {
        this.queueVectors[this.queueSelect] = this.checkVector(v.getUint16(CommonCfg.QUEUE_MSIX_VECTOR, true));
        this.routeCalls();
      }
      if (queueWritable) {
        if (touches(CommonCfg.QUEUE_SIZE, 2)) q.size = v.getUint16(CommonCfg.QUEUE_SIZE, true);
        if (touches(CommonCfg.QUEUE_DESC, 8)) q.descTable = Number(v.getBigUint64(CommonCfg.QUEUE_DESC, true));
        if (touches(CommonCfg.QUEUE_DRIVER, 8)) q.availRing = Number(v.getBigUint64(CommonCfg.QUEUE_DRIVER, true));
        if (touches(CommonCfg.QUEUE_DEVICE, 8)) q.usedRing = Number(v.getBigUint64(CommonCfg.QUEUE_DEVICE, true));
        if (touches(CommonCfg.QUEUE_ENABLE, 2) && v.getUint16(CommonCfg.QUEUE_ENABLE, true) === 1) q.ready = true;
      }
    }
    if (touches(CommonCfg.DEVICE_STATUS, 1)) this.writeStatus(v.getUint8(CommonCfg.DEVICE_STATUS));
  }

  /** A vector the device does not have reads back as NO_VECTOR, which tells the driver the mapping failed. */
  private checkVector(vector: number): number {
    return vector < this.msix.vectors ? vector : NO_VECTOR;
  }

  /**
   * The status only grows until a reset (virtio 1.x, 2.1.2 and 3.1.1): a driver that
   * clears a bit, or sets DRIVER_OK before the device took its features, broke the
   * rules, and the device fails rather than run queues it never checked.
   */
  private writeStatus(value: number): void {
    if (value === 0) return this.reset();
    const cleared = this.status & ~value & ~Status.NEEDS_RESET;
    if (cleared) return this.fail(`the driver cleared status bits 0x${cleared.toString(16)} without a reset`);
    const rising = value & ~this.status;
    let next = value | (this.status & Status.NEEDS_RESET);
    if (rising & Status.FEATURES_OK && !this.featuresAcceptable()) next &= ~Status.FEATURES_OK;
    this.status = next;
    if (!(rising & Status.DRIVER_OK) || next & Status.NEEDS_RESET) return;
    if (!(next & Status.FEATURES_OK)) return this.fail('the driver set DRIVER_OK without FEATURES_OK');
    this.activate();
  }

  /** The driver may accept only what was offered, and must speak virtio 1.x. */
  private featuresAcceptable(): boolean {
    return (this.driverFeatures & ~this.offered) === 0n && (this.driverFeatures & bit(VIRTIO_F_VERSION_1)) !== 0n;
  }

  /** DRIVER_OK: the device is activated and each ready queue started, from plain data. */
  private activate(): void {
    const eventIdx = (this.driverFeatures & bit(VIRTIO_F_RING_EVENT_IDX)) !== 0n;
    const starts: QueueResources[] = [];
    try {
      this.queues.forEach((r, index) => {
        if (!r.ready) return;
        const state = { size: r.size, descTable: r.descTable, availRing: r.availRing, usedRing: r.usedRing, eventIdx, nextAvail: 0, nextUsed: 0 };
        // Checked here too, so a bad ring fails at DRIVER_OK whichever thread runs the queue.
        SplitQueue.fromState(r.maxSize, state, this.env.memory);
        starts.push({ index, state, kickFd: this.kickFds[index]!, callFd: this.callFds[index]! });
      });
    } catch (e) {
      return this.fail(describeError(e));
    }
    const epoch = ++this.epoch;
    try {
      this.device.activate(this.driverFeatures, this.env.memory.table(), {
        fail: (reason) => {
          if (epoch === this.epoch) this.fail(reason);
        },
        configChanged: () => {
          if (epoch === this.epoch) this.configChanged();
        },
      });
      for (const q of starts) {
        this.running[q.index] = true;
        this.device.startQueue(q);
      }
    } catch (e) {
      this.fail(`activate: ${describeError(e)}`);
    }
    this.routeCalls();
  }

  /** Stops every running queue; `stopping` settles when the device has let them all go. */
  private stopQueues(): void {
    const indices = this.running.flatMap((r, i) => (r ? [i] : []));
    if (!indices.length) return;
    this.running.fill(false);
    this.epoch++;
    this.routeCalls();
    this.stopsInFlight++;
    const stops = indices.map((i) => this.device.stopQueue(i).catch((e) => this.recordFailure(`stopping queue ${i}: ${describeError(e)}`)));
    this.stopping = Promise.all([this.stopping, ...stops]).then(() => {
      this.stopsInFlight--;
    });
  }

  /**
   * Routes each queue's call fd: into KVM while its vector is enabled and unmasked
   * and the sink takes irqfds; otherwise watched here. Called whenever any of that changes.
   */
  private routeCalls(): void {
    const sink = this.env.msi;
    this.callFds.forEach((fd, q) => {
      const vector = this.queueVectors[q]!;
      const direct = this.running[q] && sink.bindIrqfd !== undefined && this.msix.enabled && vector < this.msix.vectors && !this.msix.masked(vector);
      const route = this.callRoutes[q];
      if (direct && route?.kind === 'irqfd' && route.vector === vector) {
        this.msix.syncRoute(vector);
        return;
      }
      if (this.running[q] ? !direct && route?.kind === 'watched' : route === undefined) return;
      if (route?.kind === 'irqfd') sink.unbindIrqfd!(route.vector, fd);
      else route?.undo();
      this.callRoutes[q] = undefined;
      if (!this.running[q]) return;
      if (direct) {
        this.msix.syncRoute(vector);
        // KVM injects at once if the fd was signalled before the bind.
        sink.bindIrqfd!(vector, fd);
        this.callRoutes[q] = { kind: 'irqfd', vector };
      } else {
        this.callRoutes[q] = {
          kind: 'watched',
          undo: this.env.watch(fd, () => {
            if (eventfdDrain(fd)) this.interrupt(this.queueVectors[q] ?? NO_VECTOR, 1);
          }),
        };
      }
    });
  }

  /** The driver broke the rules: stop the device and tell the driver it needs a reset. */
  private fail(reason: string): void {
    if (this.status & Status.NEEDS_RESET) return;
    this.stopQueues();
    this.recordFailure(reason);
    this.status |= Status.NEEDS_RESET;
    this.configChanged();
  }

  private recordFailure(reason: string): void {
    this.lastFailure = reason;
    this.counters.needsReset++;
  }

  private configChanged(): void {
    this.configGeneration++;
    this.interrupt(this.configVector, 2);
  }

  private interrupt(vector: number, isrBit: number): void {
    if (this.msix.enabled) {
      if (vector !== NO_VECTOR && this.msix.raise(vector)) this.counters.interruptsMsix++;
      return;
    }
    this.isr |= isrBit;
    this.counters.interruptsIntx++;
    this.intx.set(true);
  }

  /**
   * The driver wrote 0 to the status. The queues stop first (a data plane in another
   * thread finishes the chains it holds); until then the status does not read 0,
   * which is what a driver waits for (virtio 1.x, 4.1.4.3.2).
   */
  private reset(): void {
    this.stopQueues();
    this.resetPending = true;
    const finish = () => {
      this.resetPending = false;
      try {
        this.device.reset();
      } catch (e) {
        this.recordFailure(`reset: ${describeError(e)}`);
      }
      this.queues = this.queues.map((q) => queueRegisters(q.maxSize));
      this.queueVectors.fill(NO_VECTOR);
      this.configVector = NO_VECTOR;
      this.status = 0;
      this.driverFeatures = 0n;
      this.deviceFeatureSelect = this.driverFeatureSelect = this.queueSelect = 0;
      this.isr = 0;
      this.intx.set(false);
      // MSI-X enable and the vector table are PCI state: a virtio reset leaves them.
    };
    if (this.stopsInFlight === 0) finish();
    else void this.stopping.then(finish);
  }

  /** Shutdown: stops the queues, lets the device finish and release its back-end, then frees the fds. */
  async close(): Promise<void> {
    this.stopQueues();
    await this.stopping;
    await this.device.close();
    for (const undo of this.undoIoevents) undo();
    this.undoIoevents = [];
    for (const fd of [...this.kickFds, ...this.callFds]) closeFd(fd);
  }

  stats(): Record<string, number> {
    return { ...this.counters, msixDeferred: this.msix.deferred, ...this.device.stats() };
  }
}

/** One queue's registers in the common configuration structure. */
interface QueueRegisters {
  /** The largest size the device allows (QUEUE_SIZE reads it until the driver writes a smaller one). */
  readonly maxSize: number;
  size: number;
  ready: boolean;
  descTable: number;
  availRing: number;
  usedRing: number;
}

/** A queue's registers after a reset. */
function queueRegisters(maxSize: number): QueueRegisters {
  return { maxSize, size: maxSize, ready: false, descTable: 0, availRing: 0, usedRing: 0 };
}
