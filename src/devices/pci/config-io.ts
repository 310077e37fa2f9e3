// PCI configuration mechanism #1 at ports 0xCF8 (address) and 0xCFC-0xCFF (data):
// the way a PC guest reaches the configuration space of every function on bus 0.
// Functions that are not there read as all-ones, as on real hardware.
//
// The address latch and the map of functions present live in a SharedArrayBuffer,
// so vCPU threads answer what needs no device themselves (the latch, and every
// access to an absent function: a kernel probing all 256 buses makes thousands)
// and hand only accesses to present functions to the owner, which has the bus.
// Linux keeps the address write and the data access together under a lock, so one
// latch shared by all vCPUs is what it expects.
import type { BusDevice } from '../bus.js';
import { dataValue, setDataValue } from '../bus.js';
import type { PciBus } from './pci-bus.js';

export const PCI_CONFIG_IO_PORT = 0xcf8;
export const PCI_CONFIG_IO_SIZE = 8;

const ENABLE = 0x80000000;
/** Int32 slots: the address latch, then a 256-bit map of the devfns present on bus 0. */
const ADDRESS = 0;
const PRESENT = 1;
const STATE_BYTES = 4 * (1 + 256 / 32);

export class PciConfigIo implements BusDevice {
  readonly name = 'pci-config-io';
  readonly shared: SharedArrayBuffer;
  private readonly s: Int32Array;

  /** The owner's instance has the bus; attach() gives another thread a view without one. */
  constructor(
    private readonly bus: PciBus | undefined,
    shared?: SharedArrayBuffer,
  ) {
    this.shared = shared ?? new SharedArrayBuffer(STATE_BYTES);
    if (this.shared.byteLength !== STATE_BYTES) throw new Error(`PCI config state must be ${STATE_BYTES} bytes`);
    this.s = new Int32Array(this.shared);
  }

  /** A vCPU thread's view of the owner's state (`owner.shared`). */
  static attach(shared: SharedArrayBuffer): PciConfigIo {
    return new PciConfigIo(undefined, shared);
  }

  /** Records which functions exist (all are plugged before any vCPU runs). */
  publishPresent(devfns: readonly number[]): void {
    for (let w = 0; w < 8; w++) Atomics.store(this.s, PRESENT + w, 0);
    for (const devfn of devfns) Atomics.or(this.s, PRESENT + (devfn >> 5), 1 << (devfn & 31));
  }

  private present(devfn: number): boolean {
    return (Atomics.load(this.s, PRESENT + (devfn >> 5)) & (1 << (devfn & 31))) !== 0;
  }

  /** The bus-0 function (devfn) and register the address latch selects, or undefined. */
  private target(): { devfn: number; register: number } | undefined {
    const address = Atomics.load(this.s, ADDRESS);
    if (!(address & ENABLE) || (address >>> 16) & 0xff) return undefined;
    const devfn = (address >>> 8) & 0xff;
    // The owner asks the bus, which answers absent functions itself; a view has only the map.
    if (!this.bus && !this.present(devfn)) return undefined;
    return { devfn, register: address & 0xfc };
  }

  /** Whether this access needs no device (so a view without the bus can answer it). */
  answersAlone(offset: number): boolean {
    return offset < 4 || this.target() === undefined;
  }

  read(offset: number, data: Uint8Array): void {
    if (offset < 4) {
      // Only whole-dword accesses reach the address latch; byte probes of 0xCFB see nothing.
      if (offset === 0 && data.length === 4) setDataValue(data, Atomics.load(this.s, ADDRESS) >>> 0);
      else data.fill(0xff);
      return;
    }
    const t = this.target();
    if (!t || !this.bus) return void data.fill(0xff);
    this.bus.configRead(t.devfn, t.register + (offset - 4), data);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset < 4) {
      if (offset === 0 && data.length === 4) Atomics.store(this.s, ADDRESS, dataValue(data) & 0x80fffffc);
      return;
    }
    const t = this.target();
    if (t && this.bus) this.bus.configWrite(t.devfn, t.register + (offset - 4), data);
  }
}
