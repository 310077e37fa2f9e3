// PCI bus 0 behind the host bridge: which function sits at which device/function
// number, where each BAR decodes, and how INTx pins reach interrupt lines.
//
// BARs get addresses when a function is plugged in (there is no firmware to do it),
// inside the windows the DSDT's PCI root bridge declares; the guest may move them
// (and sizes them the usual way, by writing all-ones). A BAR is on the port or MMIO
// bus only while the command register enables its kind of decoding and its address
// is sane; a BAR the guest places over another device is left unmapped.
import { BusError, type Bus, type BusDevice, type IrqLine } from '../bus.js';
import {
  PCI_BAR0,
  PCI_BAR_COUNT,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MEMORY,
  PCI_INTERRUPT_LINE,
  PCI_INTERRUPT_PIN,
  PCI_STATUS,
  PCI_STATUS_INTERRUPT,
} from './config-space.js';
import type { PciBar, PciDevice } from './device.js';

export interface AddressWindow {
  start: number;
  /** Exclusive. */
  end: number;
}

export interface PciBusWiring {
  pio: Bus;
  mmio: Bus;
  memoryWindow: AddressWindow;
  ioWindow: AddressWindow;
  /** Drives a GSI of the interrupt controller. */
  setGsi(gsi: number, level: boolean): void;
}

/** The GSI an INTx pin (1 = INTA#) of a slot is wired to; the DSDT's _PRT says the same. */
export function intxGsi(slot: number, pin: number): number {
  return PCI_INTX_GSI_BASE + ((slot + pin - 1) % PCI_INTX_GSIS);
}
export const PCI_INTX_GSI_BASE = 16;
export const PCI_INTX_GSIS = 8;
export const PCI_SLOTS = 32;

/** A BAR's placement: its programmed address and the bus range it occupies now. */
class BarState {
  address = 0;
  mapped: number | undefined;
  readonly window: BusDevice;

  constructor(
    readonly bar: PciBar,
    name: string,
  ) {
    this.window = { name, read: (o, d) => bar.region.read(o, d), write: (o, d) => bar.region.write(o, d) };
  }

  /** The BAR register's value: the address with the type bits (I/O space, or 32-bit memory). */
  get register(): number {
    return (this.address | (this.bar.kind === 'io' ? 1 : 0)) >>> 0;
  }
}

interface Slot {
  device: PciDevice;
  bars: (BarState | undefined)[];
  gsi: number;
  intxLevel: boolean;
}

export class PciBus {
  private readonly slots = new Map<number, Slot>();
  /** Functions asserting INTx on each GSI: lines are shared, so a GSI drops only when all have. */
  private readonly asserting = new Map<number, Set<number>>();
  private nextMemory: number;
  private nextIo: number;
  /** BAR placements refused because they overlapped another device. */
  conflicts = 0;

  constructor(private readonly wiring: PciBusWiring) {
    this.nextMemory = wiring.memoryWindow.start;
    this.nextIo = wiring.ioWindow.start;
  }

  /** Plugs a function in at `devfn` (or the next free slot); returns its devfn. */
  add(device: PciDevice, devfn?: number): number {
    devfn ??= this.freeDevfn();
    if (devfn < 0 || devfn > 0xff || this.slots.has(devfn)) throw new Error(`PCI slot ${devfn >> 3}.${devfn & 7} is taken or invalid`);
    const bars: (BarState | undefined)[] = new Array(PCI_BAR_COUNT).fill(undefined);
    for (const bar of device.bars) {
      if (bar.index < 0 || bar.index >= PCI_BAR_COUNT || bars[bar.index]) throw new Error(`${device.name}: bad BAR ${bar.index}`);
      if (bar.size < 16 || (bar.size & (bar.size - 1)) !== 0) throw new Error(`${device.name}: BAR ${bar.index} size must be a power of two`);
      const state = new BarState(bar, device.name);
      state.address = this.allocate(bar);
      bars[bar.index] = state;
    }
    const pin = device.config.u8(PCI_INTERRUPT_PIN);
    const gsi = pin ? intxGsi(devfn >> 3, pin) : 0;
    device.config.setU8(PCI_INTERRUPT_LINE, gsi);
    const slot: Slot = { device, bars, gsi, intxLevel: false };
    this.slots.set(devfn, slot);
    device.plugged?.(this.intxLine(devfn, slot));
    return devfn;
  }

  private freeDevfn(): number {
    for (let dev = 0; dev < PCI_SLOTS; dev++) if (!this.slots.has(dev << 3)) return dev << 3;
    throw new Error('no free PCI slot on bus 0');
  }

  private allocate(bar: PciBar): number {
    const io = bar.kind === 'io';
    const window = io ? this.wiring.ioWindow : this.wiring.memoryWindow;
    const next = io ? this.nextIo : this.nextMemory;
    const address = Math.ceil(next / bar.size) * bar.size;
    if (address + bar.size > window.end) throw new Error(`no room for a ${bar.size}-byte ${bar.kind} BAR in the PCI window`);
    if (io) this.nextIo = address + bar.size;
    else this.nextMemory = address + bar.size;
    return address;
  }

  private intxLine(devfn: number, slot: Slot): IrqLine {
    return {
      set: (level) => {
        slot.intxLevel = level;
        this.updateIntx(devfn, slot);
      },
    };
  }

  /** Applies a function's INTx level, its INTx-disable bit and the status bit that mirrors it. */
  private updateIntx(devfn: number, slot: Slot): void {
    if (!slot.gsi) return;
    const config = slot.device.config;
    const status = config.u16(PCI_STATUS);
    config.setU16(PCI_STATUS, slot.intxLevel ? status | PCI_STATUS_INTERRUPT : status & ~PCI_STATUS_INTERRUPT);
    const asserted = slot.intxLevel && !(config.command & PCI_COMMAND_INTX_DISABLE);
    let set = this.asserting.get(slot.gsi);
    if (!set) this.asserting.set(slot.gsi, (set = new Set()));
    const before = set.size > 0;
    if (asserted) set.add(devfn);
    else set.delete(devfn);
    if (set.size > 0 !== before) this.wiring.setGsi(slot.gsi, set.size > 0);
  }

  /** Reads `data.length` bytes of `devfn`'s configuration space at `offset` (all-ones if absent). */
  configRead(devfn: number, offset: number, data: Uint8Array): void {
    const slot = this.slots.get(devfn);
    if (!slot) return void data.fill(0xff);
    slot.device.config.read(offset, data);
    slot.device.configRead?.(offset, data);
    // BAR registers come from the bus's placement, not the config bytes.
    for (let i = 0; i < data.length; i++) {
      const reg = offset + i - PCI_BAR0;
      if (reg < 0 || reg >= 4 * PCI_BAR_COUNT) continue;
      const bar = slot.bars[reg >> 2];
      data[i] = bar ? (bar.register >>> (8 * (reg & 3))) & 0xff : 0;
    }
  }

  configWrite(devfn: number, offset: number, data: Uint8Array): void {
    const slot = this.slots.get(devfn);
    if (!slot) return;
    const config = slot.device.config;
    const commandBefore = config.command;
    config.write(offset, data);
    let barsChanged = false;
    for (let i = 0; i < data.length; i++) {
      const reg = offset + i - PCI_BAR0;
      if (reg < 0 || reg >= 4 * PCI_BAR_COUNT) continue;
      const bar = slot.bars[reg >> 2];
      if (!bar) continue;
      const shift = 8 * (reg & 3);
      const value = ((bar.address & ~(0xff << shift)) | (data[i]! << shift)) >>> 0;
      // Only the bits above the size are address bits: writing all-ones reads back the size.
      bar.address = (value & ~(bar.bar.size - 1)) >>> 0;
      barsChanged = true;
    }
    const touchedCommand = offset < PCI_COMMAND + 2 && offset + data.length > PCI_COMMAND;
    if (touchedCommand && (config.command ^ commandBefore) & PCI_COMMAND_INTX_DISABLE) this.updateIntx(devfn, slot);
    if (barsChanged || touchedCommand) this.remap(slot);
    slot.device.configWritten?.(offset, data.length);
  }

  /** Puts each BAR where its register and the command register say, or takes it off its bus. */
  private remap(slot: Slot): void {
    const command = slot.device.config.command;
    slot.bars.forEach((bar, index) => {
      if (!bar) return;
      const io = bar.bar.kind === 'io';
      const limit = io ? 0x10000 : 2 ** 32;
      const decodes = command & (io ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY);
      const want = decodes && bar.address !== 0 && bar.address + bar.bar.size <= limit ? bar.address : undefined;
      if (want === bar.mapped) return;
      const bus = io ? this.wiring.pio : this.wiring.mmio;
      if (bar.mapped !== undefined) bus.remove(bar.window);
      bar.mapped = undefined;
      if (want !== undefined) {
        try {
          bus.insert(bar.window, want, bar.bar.size);
          bar.mapped = want;
        } catch (e) {
          if (!(e instanceof BusError)) throw e;
          this.conflicts++;
        }
      }
      slot.device.barMapped?.(index, bar.mapped);
    });
  }

  /** The functions on the bus, by devfn: for listings and statistics. */
  devices(): [number, PciDevice][] {
    return [...this.slots].map(([devfn, s]) => [devfn, s.device]);
  }
}
