// The ACPI fixed hardware the FADT describes: the PM1a event block (status and
// enable registers) and the PM1a control block, where the guest's `poweroff`
// writes SLP_TYP=S5 with SLP_EN.
import type { BusDevice } from '../bus.js';
import { dataValue, setDataValue } from '../bus.js';
import { S5_SLEEP_TYPE } from '../../arch/x86/acpi/tables.js';

const SCI_EN = 1 << 0;
const SLP_TYP_SHIFT = 10;
const SLP_TYP_MASK = 0x7 << SLP_TYP_SHIFT;
const SLP_EN = 1 << 13;

/** PM1a_EVT_BLK: bytes 0-1 status (write 1 to clear), bytes 2-3 enable. */
export class AcpiPmEvent implements BusDevice {
  readonly name = 'acpi-pm1-evt';
  private regs = new Uint8Array(4);

  read(offset: number, data: Uint8Array): void {
    data.forEach((_, i) => (data[i] = this.regs[offset + i] ?? 0));
  }

  write(offset: number, data: Uint8Array): void {
    data.forEach((b, i) => {
      const at = offset + i;
      if (at < 2) this.regs[at] &= ~b;
      else if (at < 4) this.regs[at] = b;
    });
  }
}

/** PM1a_CNT_BLK: SCI_EN always set (no SMI_CMD, the system is always in ACPI mode). */
export class AcpiPmControl implements BusDevice {
  readonly name = 'acpi-pm1-cnt';
  private control = SCI_EN;

  constructor(private readonly onPowerOff: () => void) {}

  read(offset: number, data: Uint8Array): void {
    setDataValue(data, this.control >> (offset * 8));
  }

  write(offset: number, data: Uint8Array): void {
    const v = (dataValue(data) << (offset * 8)) & 0xffff;
    const mask = ((1 << (data.length * 8)) - 1) << (offset * 8);
    this.control = ((this.control & ~mask) | v | SCI_EN) & ~SLP_EN;
    if (v & SLP_EN && (v & SLP_TYP_MASK) >> SLP_TYP_SHIFT === S5_SLEEP_TYPE) this.onPowerOff();
  }
}
