// Ports that exist on a PC but carry nothing a VM needs (the POST diagnostic port
// 0x80 that Linux writes for I/O delays): writes are absorbed, reads give 0.
// Claiming them keeps them out of the unclaimed-access count.
import type { BusDevice } from '../bus.js';

export class PortSink implements BusDevice {
  constructor(readonly name: string) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  write(): void {}
}
