// pvpanic at port 0x505 (ACPI id QEMU0001): the guest's panic notifier writes
// PANICKED here, so a panic ends the VM with its own exit code instead of hanging.
import type { BusDevice } from '../bus.js';

const PANICKED = 1 << 0;
const CRASH_LOADED = 1 << 1;

export class PvPanic implements BusDevice {
  readonly name = 'pvpanic';

  constructor(private readonly onPanic: () => void) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = PANICKED | CRASH_LOADED; // the events this device reports
  }

  write(_offset: number, data: Uint8Array): void {
    if (data[0]! & PANICKED) this.onPanic();
  }
}
