// PCI configuration mechanism #1 at ports 0xCF8 (address) and 0xCFC-0xCFF (data):
// the way a PC guest reaches the configuration space of every function on bus 0.
// Functions that are not there read as all-ones, as on real hardware.
import type { BusDevice } from '../bus.js';
import { dataValue, setDataValue } from '../bus.js';
import type { ConfigSpace } from './config-space.js';

export const PCI_CONFIG_IO_PORT = 0xcf8;
export const PCI_CONFIG_IO_SIZE = 8;

const ENABLE = 0x80000000;

export class PciConfigIo implements BusDevice {
  readonly name = 'pci-config-io';
  private address = 0;
  /** Bus-0 functions by devfn (device << 3 | function). */
  private readonly functions = new Map<number, ConfigSpace>();

  attach(devfn: number, config: ConfigSpace): void {
    if (devfn < 0 || devfn > 0xff || this.functions.has(devfn)) throw new Error(`PCI slot ${devfn >> 3}.${devfn & 7} is taken or invalid`);
    this.functions.set(devfn, config);
  }

  /** The function and register the address latch selects, or undefined. */
  private target(): { config: ConfigSpace; register: number } | undefined {
    if (!(this.address & ENABLE)) return undefined;
    const bus = (this.address >>> 16) & 0xff;
    const devfn = (this.address >>> 8) & 0xff;
    const config = bus === 0 ? this.functions.get(devfn) : undefined;
    return config && { config, register: this.address & 0xfc };
  }

  read(offset: number, data: Uint8Array): void {
    if (offset < 4) {
      // Only whole-dword accesses reach the address latch; byte probes of 0xCFB see nothing.
      if (offset === 0 && data.length === 4) setDataValue(data, this.address >>> 0);
      else data.fill(0xff);
      return;
    }
    const t = this.target();
    if (!t) return void data.fill(0xff);
    t.config.read(t.register + (offset - 4), data);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset < 4) {
      if (offset === 0 && data.length === 4) this.address = dataValue(data) & 0x80fffffc;
      return;
    }
    const t = this.target();
    if (t) t.config.write(t.register + (offset - 4), data);
  }
}
