// PCI configuration mechanism #1 at ports 0xCF8 (address) and 0xCFC-0xCFF (data):
// the way a PC guest reaches the configuration space of every function on bus 0.
// Functions that are not there read as all-ones, as on real hardware.
import type { BusDevice } from '../bus.js';
import { dataValue, setDataValue } from '../bus.js';
import type { PciBus } from './pci-bus.js';

export const PCI_CONFIG_IO_PORT = 0xcf8;
export const PCI_CONFIG_IO_SIZE = 8;

const ENABLE = 0x80000000;

export class PciConfigIo implements BusDevice {
  readonly name = 'pci-config-io';
  private address = 0;

  constructor(private readonly bus: PciBus) {}

  /** The bus-0 function (devfn) and register the address latch selects, or undefined. */
  private target(): { devfn: number; register: number } | undefined {
    if (!(this.address & ENABLE) || (this.address >>> 16) & 0xff) return undefined;
    return { devfn: (this.address >>> 8) & 0xff, register: this.address & 0xfc };
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
    this.bus.configRead(t.devfn, t.register + (offset - 4), data);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset < 4) {
      if (offset === 0 && data.length === 4) this.address = dataValue(data) & 0x80fffffc;
      return;
    }
    const t = this.target();
    if (t) this.bus.configWrite(t.devfn, t.register + (offset - 4), data);
  }
}
