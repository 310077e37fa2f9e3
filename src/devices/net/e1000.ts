// Intel 82540EM (e1000) Gigabit Ethernet controller, fully emulated: the guest's
// stock e1000 driver programs it register by register, each access an MMIO exit.
// Registers, EEPROM (e1000-eeprom.ts), PHY (e1000-phy.ts), descriptor rings in
// guest memory, checksum and segmentation offloads (e1000-offload.ts) and INTx.
// The layout and semantics follow Intel's PCI/PCI-X Family of Gigabit Ethernet
// Controllers Software Developer's Manual (8254x).
//
// Every ring and buffer address comes from the guest and is checked against guest
// RAM before use; a ring that leaves RAM stops that direction and is counted, and
// the VMM carries on. A TDT write does a bounded amount of work (TX_BUDGET) and
// leaves the rest to later turns of the event loop. An error that escapes anyway,
// from any entry point (registers, the back-end's receive, a resumed transmit), is
// caught: the device takes its link down, raises LSC, counts it, and stays quiet
// until the driver resets it with CTRL.RST.
import { dataValue, setDataValue, type BusDevice, type IrqLine } from '../bus.js';
import { ConfigSpace } from '../pci/config-space.js';
import type { CoalescedZoneRegistrar, PciBar, PciDevice } from '../pci/device.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { VNET_HDR_LEN, withVnetHdr, NO_OFFLOADS, type NetBackend, type NetPort } from '../../net/backend.js';
import { DropCounter, prefixed } from '../../net/counters.js';
import { BROADCAST_MAC, ETH_HLEN, sameMac } from '../../net/packet.js';
import { E1000Eeprom } from './e1000-eeprom.js';
import { insertChecksums, insertLegacyChecksum, segment, type ChecksumRequest, type TxContext } from './e1000-offload.js';
import { E1000Phy } from './e1000-phy.js';

const INTEL = 0x8086;
const DEVICE_82540EM = 0x100e;
const MMIO_SIZE = 0x20000;
const IO_SIZE = 0x40;

/** Register offsets in BAR 0. */
export const MacReg = {
  CTRL: 0x0000,
  STATUS: 0x0008,
  EECD: 0x0010,
  EERD: 0x0014,
  CTRL_EXT: 0x0018,
  MDIC: 0x0020,
  ICR: 0x00c0,
  ITR: 0x00c4,
  ICS: 0x00c8,
  IMS: 0x00d0,
  IMC: 0x00d8,
  RCTL: 0x0100,
  TCTL: 0x0400,
  RDBAL: 0x2800,
  RDBAH: 0x2804,
  RDLEN: 0x2808,
  RDH: 0x2810,
  RDT: 0x2818,
  TDBAL: 0x3800,
  TDBAH: 0x3804,
  TDLEN: 0x3808,
  TDH: 0x3810,
  TDT: 0x3818,
  STATS_START: 0x4000,
  STATS_END: 0x4100,
  MTA: 0x5200,
  RA: 0x5400,
} as const;

const CTRL_SLU = 1 << 6;
const CTRL_RST = 1 << 26;
const CTRL_PHY_RST = 1 << 31;
/** Link up, full duplex, 1000 Mb/s (reported and auto-detected), master enabled. */
const STATUS_VALUE = 0x80000 | 0x300 | 0x400 | 0x80 | 0x2 | 0x1;
const STATUS_LU = 0x2;

export const Icr = { TXDW: 0x01, TXQE: 0x02, LSC: 0x04, RXDMT0: 0x10, RXO: 0x40, RXT0: 0x80 } as const;

const Rctl = { EN: 0x2, UPE: 0x8, MPE: 0x10, LPE: 0x20, BAM: 0x8000, BSEX: 0x02000000, SECRC: 0x04000000 } as const;
const RCTL_MO_SHIFT = 12;
const RCTL_RDMTS_SHIFT = 8;
const RCTL_BSIZE_SHIFT = 16;
const TCTL_EN = 0x2;
const RAH_AV = 0x80000000;

/** Descriptor bits. */
const Txd = { EOP: 0x01, IFCS: 0x02, IC: 0x04, TSE: 0x04, RS: 0x08, DEXT: 0x20 } as const;
const TXD_DTYP_DATA = 1;
const TXD_DTYP_CONTEXT = 0;
const TXD_STAT_DD = 0x01;
const TXD_POPTS_IXSM = 0x01;
const TXD_POPTS_TXSM = 0x02;
const TUCMD_TCP = 0x01;
const TUCMD_IP = 0x02;
const Rxd = { DD: 0x01, EOP: 0x02, IXSM: 0x04 } as const;
const RXD_ERR_RXE = 0x80;

const DESC_SIZE = 16;
const MIN_FRAME = 60;
const FCS_LEN = 4;
/** A packet the driver assembles for one TSO context: 64 KiB of payload and its headers. */
const MAX_TX_PACKET = 0x10000 + 256;
const MAX_STD_FRAME = 1522;
const MAX_JUMBO_FRAME = 16128;

interface TxBudget {
  descriptors: number;
  frames: number;
  bytes: number;
}

/**
 * The least TSO payload per segment; a context asking for less (the field is the
 * guest's, 1 makes a 64 KiB packet 65,536 frames) is raised to it and counted.
 * Linux's TCP never asks for less than 8 bytes (TCP_MIN_GSO_SIZE), Intel's later
 * controllers take no MSS under 64 and Linux segments in software below that, and
 * a 64-byte segment still crosses any link: at most 1,028 frames per packet.
 */
export const MIN_TSO_MSS = 64;
/**
 * What one TDT write, or one resumed chunk, may do before the rest waits for the
 * next turn of the event loop. 256 descriptors is Linux's default e1000 ring, so a
 * well-behaved driver's doorbell finishes at once; frames and bytes copied from the
 * guest bound TSO fan-out and big buffers.
 */
export const TX_BUDGET: Readonly<TxBudget> = { descriptors: 256, frames: 256, bytes: 1 << 20 };
export const E1000_DROPS = [
  'tx-ring-outside-ram',
  'tx-bad-ring',
  'tx-buffer-outside-ram',
  'tx-oversized',
  'tx-bad-tso',
  'tx-backend-error',
  'rx-ring-outside-ram',
  'rx-buffer-outside-ram',
  'rx-disabled',
  'rx-link-down',
  'rx-filtered',
  'rx-oversized',
] as const;
export type E1000Drop = (typeof E1000_DROPS)[number];

/** A transmit descriptor processed: its command bits, and the frames of the packet it ended, if any. */
interface TxStep {
  cmd: number;
  frames?: Iterator<Uint8Array>;
}

interface Ring {
  base: number;
  /** Descriptors in the ring (RDLEN / 16). */
  count: number;
}

/**
 * The registers whose writes need an answer before the guest goes on (the PHY's
 * MDIC, the interrupt registers, transmit enable and the transmit doorbell), the
 * same ones QEMU's e1000 leaves out of KVM's coalesced ring. Every other BAR 0
 * write may wait in the ring until the next exit: the driver reads a register, or
 * writes one of these, before it depends on one.
 */
const EXITING_WRITES = [MacReg.MDIC, MacReg.ICR, MacReg.ICS, MacReg.IMS, MacReg.IMC, MacReg.TCTL, MacReg.TDT];

/** The BAR 0 ranges between those registers. */
export const COALESCED_RANGES: readonly { offset: number; length: number }[] = (() => {
  const ranges: { offset: number; length: number }[] = [];
  let start = 0;
  for (const reg of [...EXITING_WRITES].sort((a, b) => a - b)) {
    if (reg > start) ranges.push({ offset: start, length: reg - start });
    start = reg + 4;
  }
  ranges.push({ offset: start, length: MMIO_SIZE - start });
  return ranges;
})();

export class E1000 implements PciDevice, NetPort {
  readonly config: ConfigSpace;
  readonly bars: readonly PciBar[];
  private readonly regs = new Uint32Array(MMIO_SIZE / 4);
  private readonly eeprom: E1000Eeprom;
  private readonly phy = new E1000Phy();
  private intx: IrqLine = { set: () => {} };
  private ioAddr = 0;
  private rxHeld = false;
  /** INTx is asserted: (ICR & IMS) != 0. */
  private asserted = false;
  /** ITR: no new assertion before this time (performance.now() ms), and the timer that asserts then. */
  private irqQuietUntil = 0;
  private irqTimer: NodeJS.Timeout | undefined;
  /** The transmit packet being assembled from data descriptors, and the context it uses. */
  private txPacket: Uint8Array[] = [];
  private txLength = 0;
  /** Why the packet being assembled will be dropped at its last descriptor. */
  private txDrop: E1000Drop | undefined;
  private txContext: TxContext = { ipcss: 0, ipcso: 0, ipcse: 0, tucss: 0, tucso: 0, tucse: 0, ipv4: true, tcp: true, hdrLen: 0, mss: 0 };
  /** The descriptor at TDH when the budget ran out before its packet's frames were all sent. */
  private txSending: TxStep | undefined;
  /** Undoes the coalesced zones registered for BAR 0 where it is mapped now. */
  private undoZones: (() => void)[] = [];
  /** The next transmit chunk, when one is scheduled. */
  private txResume: NodeJS.Immediate | undefined;
  private txBudget: TxBudget = { ...TX_BUDGET };
  /** An entry point threw: link down, no transmit or receive until CTRL.RST. */
  private broken = false;
  /** The last error an entry point caught, for logs. */
  lastError: string | undefined;
  readonly counters = {
    txPackets: 0,
    txBytes: 0,
    rxPackets: 0,
    rxBytes: 0,
    txSegmented: 0,
    rxNoBuffers: 0,
    interrupts: 0,
    /** Assertions ITR pushed back to the end of the guest's interval. */
    interruptsThrottled: 0,
    tdtWrites: 0,
    rdtWrites: 0,
    /** Transmit chunks deferred to a later turn of the event loop. */
    txYields: 0,
    tsoMssRaised: 0,
    deviceErrors: 0,
    /** BAR 0 ranges KVM refused to coalesce (their writes exit instead). */
    zoneErrors: 0,
  };
  readonly drops = new DropCounter(E1000_DROPS);

  constructor(
    private readonly memory: GuestMemory,
    private readonly backend: NetBackend,
    private readonly mac: Uint8Array,
    readonly name = 'e1000',
    private readonly zones?: CoalescedZoneRegistrar,
  ) {
    this.config = new ConfigSpace({
      vendor: INTEL,
      device: DEVICE_82540EM,
      classCode: 0x020000,
      revision: 3,
      subsystemVendor: INTEL,
      subsystem: 0x001e,
      interruptPin: 1,
    });
    this.eeprom = new E1000Eeprom(mac, { vendor: INTEL, device: DEVICE_82540EM, subsystemVendor: INTEL, subsystem: 0x001e });
    this.bars = [
      { index: 0, kind: 'memory', size: MMIO_SIZE, region: this.mmio },
      { index: 1, kind: 'io', size: IO_SIZE, region: this.io },
    ];
    this.reset();
    backend.setRxOffloads(NO_OFFLOADS);
  }

  plugged(intx: IrqLine): void {
    this.intx = intx;
  }

  /** Wherever BAR 0 decodes, writes to all but EXITING_WRITES go to KVM's coalesced ring. */
  barMapped(index: number, address: number | undefined): void {
    if (index !== 0 || !this.zones) return;
    const attempt = (body: () => void) => {
      try {
        body();
      } catch {
        this.counters.zoneErrors++;
      }
    };
    for (const undo of this.undoZones.splice(0)) attempt(undo);
    if (address === undefined) return;
    for (const r of COALESCED_RANGES) attempt(() => this.undoZones.push(this.zones!(address + r.offset, r.length)));
  }

  private reset(): void {
    this.regs.fill(0);
    this.regs[MacReg.STATUS / 4] = STATUS_VALUE;
    this.regs[MacReg.CTRL / 4] = 0x1; // full duplex
    this.regs[MacReg.RA / 4] = this.mac[0]! | (this.mac[1]! << 8) | (this.mac[2]! << 16) | (this.mac[3]! << 24);
    this.regs[MacReg.RA / 4 + 1] = (this.mac[4]! | (this.mac[5]! << 8) | RAH_AV) >>> 0;
    this.phy.reset();
    this.txPacket = [];
    this.txLength = 0;
    this.txDrop = undefined;
    this.stopTx();
    this.broken = false;
    this.stopIrqTimer();
    this.asserted = false;
    this.intx.set(false);
  }

  /**
   * Runs an entry point. Whatever it throws is a bug a guest found: the device goes
   * broken instead of the VMM, and the caller gets `fallback`.
   */
  private guarded<T>(what: string, fallback: T, body: () => T): T {
    try {
      return body();
    } catch (e) {
      this.fail(what, e);
      return fallback;
    }
  }

  private fail(what: string, e: unknown): void {
    this.counters.deviceErrors++;
    this.lastError = `${what}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`;
    if (this.broken) return;
    this.broken = true;
    this.stopTx();
    this.regs[MacReg.STATUS / 4]! &= ~STATUS_LU;
    this.phy.linkDown();
    try {
      this.raise(Icr.LSC);
    } catch {
      // The interrupt line failed too; the device is down all the same.
    }
  }

  // -- registers --------------------------------------------------------------

  private readonly mmio: BusDevice = {
    name: 'e1000-mmio',
    read: (offset, data) => this.guarded('MMIO read', undefined, () => setDataValue(data, this.readReg(offset & ~3) >>> (8 * (offset & 3)))),
    write: (offset, data) =>
      this.guarded('MMIO write', undefined, () => {
        const reg = offset & ~3;
        const shift = 8 * (offset & 3);
        const mask = data.length >= 4 ? 0xffffffff : ((1 << (8 * data.length)) - 1) << shift;
        // Narrow writes merge into the register; the driver itself only writes whole registers.
        const value = data.length >= 4 ? dataValue(data.subarray(0, 4)) : ((this.regs[reg / 4]! & ~mask) | ((dataValue(data) << shift) & mask)) >>> 0;
        this.writeReg(reg, value);
      }),
  };

  /** IOADDR (0) selects a register, IODATA (4) reads or writes it. */
  private readonly io: BusDevice = {
    name: 'e1000-io',
    read: (offset, data) =>
      this.guarded('I/O read', undefined, () =>
        setDataValue(data, offset === 0 ? this.ioAddr : offset === 4 ? this.readReg(this.ioAddr & (MMIO_SIZE - 4)) : 0),
      ),
    write: (offset, data) =>
      this.guarded('I/O write', undefined, () => {
        if (offset === 0) this.ioAddr = dataValue(data.subarray(0, 4));
        else if (offset === 4) this.writeReg(this.ioAddr & (MMIO_SIZE - 4), dataValue(data.subarray(0, 4)));
      }),
  };

  private readReg(reg: number): number {
    switch (reg) {
      case MacReg.EECD:
        return this.eeprom.readEecd();
      case MacReg.EERD:
        return this.eeprom.readEerd();
      case MacReg.ICR: {
        const v = this.regs[MacReg.ICR / 4]!;
        this.regs[MacReg.ICR / 4] = 0;
        this.updateIrq();
        return v;
      }
      case MacReg.IMC:
      case MacReg.ICS:
        return 0;
    }
    if (reg >= MacReg.STATS_START && reg < MacReg.STATS_END) {
      const v = this.regs[reg / 4]!;
      this.regs[reg / 4] = 0; // statistics clear on read
      return v;
    }
    return this.regs[reg / 4]!;
  }

  private writeReg(reg: number, value: number): void {
    value >>>= 0;
    switch (reg) {
      case MacReg.CTRL: {
        if (value & CTRL_RST) return this.reset();
        const linkUp = (value & CTRL_SLU) !== 0 && !(this.reg(MacReg.CTRL) & CTRL_SLU);
        this.regs[reg / 4] = (value & ~(CTRL_RST | CTRL_PHY_RST)) >>> 0;
        if (linkUp) this.raise(Icr.LSC); // the link comes up once, when the driver sets SLU
        return;
      }
      case MacReg.STATUS:
        return;
      case MacReg.EECD:
        return this.eeprom.writeEecd(value);
      case MacReg.EERD:
        return this.eeprom.writeEerd(value);
      case MacReg.MDIC:
        this.regs[reg / 4] = this.phy.mdic(value);
        return;
      case MacReg.ICR:
        this.regs[MacReg.ICR / 4]! &= ~value;
        return this.updateIrq();
      case MacReg.ICS:
        return this.raise(value);
      case MacReg.IMS:
        this.regs[MacReg.IMS / 4]! |= value;
        return this.updateIrq();
      case MacReg.IMC:
        this.regs[MacReg.IMS / 4]! &= ~value;
        return this.updateIrq();
      case MacReg.RDLEN:
      case MacReg.TDLEN:
        this.regs[reg / 4] = value & 0xfff80; // a multiple of 128 bytes
        return;
      case MacReg.RDH:
      case MacReg.RDT:
      case MacReg.TDH:
      case MacReg.TDT:
        this.regs[reg / 4] = value & 0xffff;
        if (reg === MacReg.TDT) {
          this.counters.tdtWrites++;
          this.txDoorbell();
        }
        if (reg === MacReg.RDT) {
          this.counters.rdtWrites++;
          this.rxAvailable();
        }
        return;
      case MacReg.RCTL:
        this.regs[reg / 4] = value;
        if (value & Rctl.EN) this.rxAvailable();
        return;
      case MacReg.TCTL:
        this.regs[reg / 4] = value;
        if (value & TCTL_EN) this.txDoorbell();
        return;
    }
    if (reg >= MacReg.STATS_START && reg < MacReg.STATS_END) return; // read-only
    this.regs[reg / 4] = value;
  }

  private reg(r: number): number {
    return this.regs[r / 4]!;
  }

  // -- interrupts ------------------------------------------------------------

  private raise(causes: number): void {
    this.regs[MacReg.ICR / 4]! |= causes;
    this.updateIrq();
  }

  /**
   * Interrupt throttling (ITR, in 256 ns units): after an assertion the line stays
   * low for that interval, and causes that come meanwhile are asserted together
   * when it ends, as the 8254x does. Node's timers have a 1 ms resolution, so a
   * throttled assertion waits at least that long; an idle card asserts at once.
   */
  private updateIrq(): void {
    const level = (this.reg(MacReg.ICR) & this.reg(MacReg.IMS)) !== 0;
    if (level && !this.asserted) {
      if (this.irqTimer) return;
      const now = performance.now();
      if (now < this.irqQuietUntil) {
        this.counters.interruptsThrottled++;
        this.irqTimer = setTimeout(() => this.throttleEnded(), this.irqQuietUntil - now);
        return;
      }
      this.counters.interrupts++;
      this.irqQuietUntil = now + ((this.reg(MacReg.ITR) & 0xffff) * 256) / 1e6;
    }
    this.asserted = level;
    this.intx.set(level);
  }

  private throttleEnded(): void {
    this.irqTimer = undefined;
    this.irqQuietUntil = 0;
    this.guarded('interrupt throttle timer', undefined, () => this.updateIrq());
  }

  private stopIrqTimer(): void {
    clearTimeout(this.irqTimer);
    this.irqTimer = undefined;
    this.irqQuietUntil = 0;
  }

  // -- rings -----------------------------------------------------------------

  private ring(baseLow: number, baseHigh: number, len: number): Ring {
    return { base: this.reg(baseHigh) * 2 ** 32 + this.reg(baseLow), count: this.reg(len) / DESC_SIZE };
  }

  /** The descriptor's guest address, if the ring index is valid and the descriptor lies in RAM. */
  private descriptor(ring: Ring, index: number): number | undefined {
    if (index >= ring.count) return undefined;
    const addr = ring.base + index * DESC_SIZE;
    return this.memory.contains(addr, DESC_SIZE) ? addr : undefined;
  }

  // -- transmit --------------------------------------------------------------

  /** TDT moved or transmit was enabled; a chunk already scheduled will see the new TDT. */
  private txDoorbell(): void {
    if (this.txResume === undefined) this.transmit();
  }

  /**
   * Sends what lies between TDH and TDT, as much as TX_BUDGET allows; the rest goes
   * in further chunks, one per turn of the event loop. A packet's last descriptor
   * completes (DD, TDH past it) only once all its frames are out.
   */
  private transmit(): void {
    if (this.broken || !(this.reg(MacReg.TCTL) & TCTL_EN)) return;
    const ring = this.ring(MacReg.TDBAL, MacReg.TDBAH, MacReg.TDLEN);
    let head = this.reg(MacReg.TDH);
    const tail = this.reg(MacReg.TDT);
    if (head === tail) return;
    // Outside the ring, head would never reach tail.
    if (head >= ring.count || tail >= ring.count) return this.drops.count('tx-bad-ring');
    this.txBudget = { ...TX_BUDGET };
    let done = 0;
    let cause = 0;
    let more = false;
    // A back-end that delivers a frame from inside send() can break the device meanwhile.
    while (head !== tail && !this.broken) {
      const { descriptors, frames, bytes } = this.txBudget;
      if (descriptors <= 0 || frames <= 0 || bytes <= 0) {
        more = true;
        break;
      }
      const desc = this.descriptor(ring, head);
      if (desc === undefined) {
        this.drops.count('tx-ring-outside-ram');
        break;
      }
      this.txBudget.descriptors--;
      const step = this.txSending ?? this.processTxDescriptor(desc);
      this.txSending = undefined;
      if (step.frames && !this.sendFrames(step.frames)) {
        this.txSending = step;
        more = true;
        break;
      }
      if (step.cmd & Txd.RS) {
        this.memory.writeU8(desc + 12, this.memory.readU8(desc + 12) | TXD_STAT_DD);
        cause |= Icr.TXDW;
      }
      head = (head + 1) % ring.count;
      done++;
    }
    this.regs[MacReg.TDH / 4] = head;
    if (done) this.raise(cause | (head === tail ? Icr.TXQE : 0));
    if (more && !this.broken) this.scheduleTx();
  }

  private scheduleTx(): void {
    this.counters.txYields++;
    this.txResume = setImmediate(() => {
      this.txResume = undefined;
      this.guarded('transmit', undefined, () => this.transmit());
    }).unref();
  }

  /** Drops the scheduled chunk and the frames still to send (reset, failure, close). */
  private stopTx(): void {
    clearImmediate(this.txResume);
    this.txResume = undefined;
    this.txSending = undefined;
  }

  /** Sends frames while the budget lasts; true when the packet is all out. */
  private sendFrames(frames: Iterator<Uint8Array>): boolean {
    for (; this.txBudget.frames > 0; this.txBudget.frames--) {
      const next = frames.next();
      if (next.done) return true;
      this.send(next.value);
    }
    return false;
  }

  /** A frame the back-end refuses (it threw) is dropped and counted; the queue goes on. */
  private send(frame: Uint8Array): void {
    try {
      this.backend.send(0, withVnetHdr(frame));
    } catch {
      this.drops.count('tx-backend-error');
      return;
    }
    this.counters.txPackets++;
    this.counters.txBytes += frame.length;
  }

  private processTxDescriptor(desc: number): TxStep {
    const mem = this.memory;
    const lenCmd = mem.readU32(desc + 8);
    const cmd = lenCmd >>> 24;
    if (!(cmd & Txd.DEXT)) {
      // Legacy: buffer, length, and an optional checksum at CSO from CSS.
      this.appendTx(Number(mem.readU64(desc)), lenCmd & 0xffff);
      if (!(cmd & Txd.EOP)) return { cmd };
      return { cmd, frames: this.finishTx(cmd & Txd.IC ? { css: mem.readU8(desc + 13), cso: mem.readU8(desc + 10) } : undefined) };
    }
    const dtyp = (lenCmd >>> 20) & 0xf;
    if (dtyp === TXD_DTYP_CONTEXT) {
      const tucmd = cmd;
      this.txContext = {
        ipcss: mem.readU8(desc),
        ipcso: mem.readU8(desc + 1),
        ipcse: mem.readU16(desc + 2),
        tucss: mem.readU8(desc + 4),
        tucso: mem.readU8(desc + 5),
        tucse: mem.readU16(desc + 6),
        ipv4: (tucmd & TUCMD_IP) !== 0,
        tcp: (tucmd & TUCMD_TCP) !== 0,
        hdrLen: mem.readU8(desc + 13),
        mss: mem.readU16(desc + 14),
      };
      return { cmd };
    }
    if (dtyp !== TXD_DTYP_DATA) return { cmd };
    this.appendTx(Number(mem.readU64(desc)), lenCmd & 0xfffff);
    if (!(cmd & Txd.EOP)) return { cmd };
    const popts = mem.readU8(desc + 13);
    return { cmd, frames: this.finishTx(undefined, { ip: (popts & TXD_POPTS_IXSM) !== 0, l4: (popts & TXD_POPTS_TXSM) !== 0 }, (cmd & Txd.TSE) !== 0) };
  }

  private appendTx(addr: number, len: number): void {
    if (len === 0 || this.txDrop) return;
    if (this.txLength + len > MAX_TX_PACKET) this.txDrop = 'tx-oversized';
    else if (!this.memory.contains(addr, len)) this.txDrop = 'tx-buffer-outside-ram';
    if (this.txDrop) return;
    this.txPacket.push(this.memory.read(addr, len));
    this.txLength += len;
    this.txBudget.bytes -= len;
  }

  /** The frames of the packet just assembled, or undefined when it is dropped. */
  private finishTx(legacy?: { css: number; cso: number }, sums?: ChecksumRequest, tso = false): Iterator<Uint8Array> | undefined {
    const parts = this.txPacket;
    const dropped = this.txDrop;
    this.txPacket = [];
    this.txLength = 0;
    this.txDrop = undefined;
    if (dropped) {
      this.drops.count(dropped);
      return undefined;
    }
    const packet = Buffer.concat(parts);
    if (packet.length < ETH_HLEN) return undefined;
    if (tso) {
      const frames = segment(packet, this.tsoContext(), sums ?? { ip: false, l4: false });
      if (frames) this.counters.txSegmented++;
      else this.drops.count('tx-bad-tso');
      return frames;
    }
    if (packet.length > MAX_JUMBO_FRAME) {
      this.drops.count('tx-oversized');
      return undefined;
    }
    if (legacy) insertLegacyChecksum(packet, legacy.css, legacy.cso);
    else if (sums) insertChecksums(packet, this.txContext, sums);
    return [packet][Symbol.iterator]();
  }

  /** The context segmentation uses: its MSS raised to MIN_TSO_MSS (and counted) when below. */
  private tsoContext(): TxContext {
    const ctx = this.txContext;
    if (ctx.mss === 0 || ctx.mss >= MIN_TSO_MSS) return ctx;
    this.counters.tsoMssRaised++;
    return { ...ctx, mss: MIN_TSO_MSS };
  }

  // -- receive ---------------------------------------------------------------

  private rxBufferSize(): number {
    const rctl = this.reg(MacReg.RCTL);
    const code = (rctl >>> RCTL_BSIZE_SHIFT) & 3;
    if (rctl & Rctl.BSEX) return [2048, 16384, 8192, 4096][code]!;
    return [2048, 1024, 512, 256][code]!;
  }

  /** RDT moved or receive was enabled: frames held back may go now. */
  private rxAvailable(): void {
    if (!this.rxHeld) return;
    this.rxHeld = false;
    this.backend.resume(0);
  }

  receive(_queue: number, packet: Uint8Array): boolean {
    return this.guarded('receive', true, () => this.place(packet));
  }

  private place(packet: Uint8Array): boolean {
    if (this.broken) {
      this.drops.count('rx-link-down');
      return true;
    }
    const rctl = this.reg(MacReg.RCTL);
    if (!(rctl & Rctl.EN)) {
      this.drops.count('rx-disabled');
      return true;
    }
    let frame = packet.subarray(VNET_HDR_LEN);
    if (frame.length < ETH_HLEN) return true;
    if (!this.accepts(frame, rctl)) {
      this.drops.count('rx-filtered');
      return true;
    }
    if (frame.length > (rctl & Rctl.LPE ? MAX_JUMBO_FRAME : MAX_STD_FRAME)) {
      this.drops.count('rx-oversized');
      return true;
    }
    // Short frames are padded as on the wire; the driver strips the 4-byte FCS the hardware leaves.
    const fcs = rctl & Rctl.SECRC ? 0 : FCS_LEN;
    const wire = new Uint8Array(Math.max(frame.length, MIN_FRAME) + fcs);
    wire.set(frame);
    frame = wire;
    const ring = this.ring(MacReg.RDBAL, MacReg.RDBAH, MacReg.RDLEN);
    const size = this.rxBufferSize();
    const needed = Math.ceil(frame.length / size);
    let head = this.reg(MacReg.RDH);
    const tail = this.reg(MacReg.RDT);
    const free = ring.count ? (tail - head + ring.count) % ring.count : 0;
    if (free < needed || head >= ring.count || tail >= ring.count) {
      this.counters.rxNoBuffers++;
      this.rxHeld = true;
      this.raise(Icr.RXO);
      return false;
    }
    for (let at = 0; at < frame.length; at += size) {
      const desc = this.descriptor(ring, head);
      if (desc === undefined) {
        this.drops.count('rx-ring-outside-ram');
        return true;
      }
      const chunk = frame.subarray(at, Math.min(at + size, frame.length));
      const addr = Number(this.memory.readU64(desc));
      let status = Rxd.DD | Rxd.IXSM | (at + size >= frame.length ? Rxd.EOP : 0);
      let errors = 0;
      if (this.memory.contains(addr, chunk.length)) this.memory.write(addr, chunk);
      else {
        this.drops.count('rx-buffer-outside-ram');
        errors = RXD_ERR_RXE;
        status |= Rxd.EOP;
      }
      this.memory.writeU16(desc + 8, chunk.length);
      this.memory.writeU16(desc + 10, 0);
      this.memory.writeU8(desc + 13, errors);
      this.memory.writeU16(desc + 14, 0);
      this.memory.writeU8(desc + 12, status);
      head = (head + 1) % ring.count;
      if (errors) break;
    }
    this.regs[MacReg.RDH / 4] = head;
    this.counters.rxPackets++;
    this.counters.rxBytes += frame.length - fcs;
    const left = (tail - head + ring.count) % ring.count;
    const threshold = ring.count >> (1 + ((rctl >>> RCTL_RDMTS_SHIFT) & 3)); // 1/2, 1/4, 1/8 of the ring
    this.raise(Icr.RXT0 | (left <= threshold ? Icr.RXDMT0 : 0));
    return true;
  }

  /** Unicast: a receive address entry or UPE; multicast: MPE or the hash table; broadcast: BAM. */
  private accepts(frame: Uint8Array, rctl: number): boolean {
    if (sameMac(frame, 0, BROADCAST_MAC)) return (rctl & Rctl.BAM) !== 0 || (rctl & Rctl.MPE) !== 0;
    if (frame[0]! & 1) {
      if (rctl & Rctl.MPE) return true;
      const shift = [4, 3, 2, 0][(rctl >>> RCTL_MO_SHIFT) & 3]!;
      const hash = ((frame[4]! | (frame[5]! << 8)) >>> shift) & 0xfff;
      return ((this.regs[MacReg.MTA / 4 + (hash >>> 5)]! >>> (hash & 31)) & 1) === 1;
    }
    if (rctl & Rctl.UPE) return true;
    for (let i = 0; i < 16; i++) {
      const high = this.regs[MacReg.RA / 4 + 2 * i + 1]!;
      if (!(high & RAH_AV)) continue;
      const low = this.regs[MacReg.RA / 4 + 2 * i]!;
      if (readLe32(frame, 0) === low && (frame[4]! | (frame[5]! << 8)) === (high & 0xffff)) return true;
    }
    return false;
  }

  stats(): Record<string, number> {
    return { ...this.counters, broken: this.broken ? 1 : 0, ...this.drops.stats(), ...prefixed('backend.', this.backend.stats()) };
  }

  async close(): Promise<void> {
    this.stopTx();
    this.stopIrqTimer();
    await this.backend.close();
  }
}

function readLe32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}
