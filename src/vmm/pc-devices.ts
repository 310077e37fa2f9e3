// The legacy PC devices every tsvisor x86 VM has, placed on its port bus. Kept apart
// from Machine so the same set can be driven without KVM (tests replay hostile
// port traffic against it).
import { PM1A_CNT_BLK, PM1A_EVT_BLK, PM1_CNT_LEN, PM1_EVT_LEN, PVPANIC_PORT } from '../arch/x86/acpi/tables.js';
import type { Bus, IrqLine } from '../devices/bus.js';
import { AcpiPmControl, AcpiPmEvent } from '../devices/legacy/acpi-pm.js';
import { I8042, I8042_DATA_PORT } from '../devices/legacy/i8042.js';
import { PvPanic } from '../devices/legacy/pvpanic.js';
import { Rtc, RTC_PORT } from '../devices/legacy/rtc.js';
import { Serial } from '../devices/legacy/serial.js';
import { PortSink } from '../devices/legacy/sink.js';
import { PciConfigIo, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_SIZE } from '../devices/pci/config-io.js';
import { ConfigSpace } from '../devices/pci/config-space.js';
import { PciBus } from '../devices/pci/pci-bus.js';
import { PCI_IO_WINDOW, PCI_MMIO_WINDOW } from '../arch/x86/layout.js';

export const COM1_PORT = 0x3f8;
export const COM1_PORTS = 8;
export const COM1_IRQ = 4;
const POST_PORT = 0x80;
/** Red Hat's generic PCIe host bridge id, which Linux binds no special quirks to. */
const HOST_BRIDGE_IDS = { vendor: 0x1b36, device: 0x0008, classCode: 0x060000 };

export interface PcWiring {
  /** BARs of PCI devices decode here. */
  mmio: Bus;
  /** Drives an interrupt controller input (PCI INTx lines). */
  setGsi(gsi: number, level: boolean): void;
  com1Irq: IrqLine;
  serialOutput: (bytes: Uint8Array) => void;
  /** The CPU reset line (i8042). */
  onReset: () => void;
  /** ACPI S5. */
  onPowerOff: () => void;
  /** pvpanic. */
  onPanic: () => void;
}

export interface PcDevices {
  serial: Serial;
  pci: PciBus;
  /** The configuration ports' owner; vCPU threads attach views of its state. */
  pciConfig: PciConfigIo;
}

export function installPcDevices(pio: Bus, wiring: PcWiring): PcDevices {
  const serial = new Serial('serial0', wiring.com1Irq, wiring.serialOutput);
  pio.insert(serial, COM1_PORT, COM1_PORTS);
  pio.insert(new I8042(wiring.onReset), I8042_DATA_PORT, 5);
  pio.insert(new Rtc(), RTC_PORT, 2);
  pio.insert(new AcpiPmEvent(), PM1A_EVT_BLK, PM1_EVT_LEN);
  pio.insert(new AcpiPmControl(wiring.onPowerOff), PM1A_CNT_BLK, PM1_CNT_LEN);
  pio.insert(new PvPanic(wiring.onPanic), PVPANIC_PORT, 1);
  pio.insert(new PortSink('post'), POST_PORT, 1);
  // Bus 0 with its host bridge: without one, Linux probes the config ports tens of thousands of times.
  const pci = new PciBus({ pio, mmio: wiring.mmio, memoryWindow: PCI_MMIO_WINDOW, ioWindow: PCI_IO_WINDOW, setGsi: wiring.setGsi });
  pci.add({ name: 'host-bridge', config: new ConfigSpace(HOST_BRIDGE_IDS), bars: [] }, 0);
  const pciConfig = new PciConfigIo(pci);
  pio.insert(pciConfig, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_SIZE);
  return { serial, pci, pciConfig };
}
