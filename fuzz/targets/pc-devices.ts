// The legacy PC devices under any port traffic, as a hostile guest's `out`s and
// `in`s, weighted to the ports that have devices (UART, i8042, RTC, ACPI PM,
// pvpanic, POST, PCI configuration), with host input for the UART between.
import { operations, opsArbitrary } from '../lib/bytes.js';
import { busAccess, pcRig } from '../lib/pc.js';
import { WIDTHS, type FuzzTarget } from '../lib/target.js';

const DEVICE_PORTS = [0x3f8, 0x60, 0x64, 0x70, 0x71, 0x600, 0x602, 0x604, 0x505, 0x80, 0xcf8, 0xcfc, 0xcfe];
const Op = { DEVICE_PORT: 0, ANY_PORT: 1, SERIAL_INPUT: 2 } as const;
const KINDS = 3;

export const pcDevices: FuzzTarget = {
  name: 'pc-devices',
  description: 'legacy port traffic against the UART, i8042, RTC, ACPI PM, pvpanic and PCI config ports',
  arbitrary: opsArbitrary(KINDS, { weights: [8, 1, 1], maxOps: 80 }),
  run(_ctx, data) {
    const rig = pcRig();
    for (const { kind, args: r } of operations(data, 1024)) {
      const op = kind % KINDS;
      if (op === Op.SERIAL_INPUT) rig.serial.enqueueInput(r.rest(256));
      else busAccess(rig.pio, op === Op.DEVICE_PORT ? r.pick(DEVICE_PORTS) + (r.u8() & 7) : r.u16(), r.pick(WIDTHS.slice(0, 3)), r);
    }
  },
};
