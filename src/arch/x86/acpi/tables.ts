// The minimal ACPI tables a Linux guest needs: RSDP -> XSDT -> {FADT -> DSDT, MADT}.
// The FADT points at the PM1a event/control blocks that devices/legacy/acpi-pm.ts
// emulates; the DSDT's \_S5 package gives the sleep type that means "power off",
// and its PCI0 device is the root bridge: the windows BARs live in and how each
// slot's INTx pins reach IOAPIC inputs.
import type { GuestMemory } from '../../../memory/guest-memory.js';
import { intxGsi, PCI_SLOTS } from '../../../devices/pci/pci-bus.js';
import { ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR, PCI_IO_WINDOW, PCI_MMIO_WINDOW } from '../layout.js';
import * as aml from './aml.js';

export const OEM_ID = 'TSVSOR';
export const OEM_TABLE_ID = 'TSVISOR ';

/** The I/O ports of the fixed ACPI hardware tsvisor emulates. */
export const PM1A_EVT_BLK = 0x600;
export const PM1_EVT_LEN = 4;
export const PM1A_CNT_BLK = 0x604;
export const PM1_CNT_LEN = 2;
export const SCI_IRQ = 9;
/** SLP_TYP value the DSDT's \_S5 declares; a PM1a_CNT write of it with SLP_EN powers off. */
export const S5_SLEEP_TYPE = 5;
/** pvpanic's I/O port (the QEMU0001 device), where the guest reports a panic. */
export const PVPANIC_PORT = 0x505;

export function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return sum;
}

function setChecksum(table: Buffer, at: number, end = table.length): void {
  table[at] = 0;
  table[at] = (0x100 - checksum(table.subarray(0, end))) & 0xff;
}

/** A system description table: the 36-byte header, then `body`, checksummed. */
export function sdt(signature: string, revision: number, body: Buffer): Buffer {
  const t = Buffer.alloc(36 + body.length);
  t.write(signature, 0, 'ascii');
  t.writeUInt32LE(t.length, 4);
  t[8] = revision;
  t.write(OEM_ID, 10, 'ascii');
  t.write(OEM_TABLE_ID, 16, 'ascii');
  t.writeUInt32LE(1, 24);
  t.write('TSVR', 28, 'ascii');
  t.writeUInt32LE(1, 32);
  body.copy(t, 36);
  setChecksum(t, 9);
  return t;
}

export function rsdp(xsdtAddr: number): Buffer {
  const t = Buffer.alloc(36);
  t.write('RSD PTR ', 0, 'ascii');
  t.write(OEM_ID, 9, 'ascii');
  t[15] = 2; // ACPI 2.0+: use the XSDT
  t.writeUInt32LE(36, 20);
  t.writeBigUInt64LE(BigInt(xsdtAddr), 24);
  setChecksum(t, 8, 20);
  setChecksum(t, 32);
  return t;
}

export function xsdt(entries: readonly number[]): Buffer {
  const body = Buffer.alloc(entries.length * 8);
  entries.forEach((a, i) => body.writeBigUInt64LE(BigInt(a), i * 8));
  return sdt('XSDT', 1, body);
}

const GAS_SYSTEM_IO = 1;

const GAS_ACCESS_WORD = 2;

/** A Generic Address Structure for an I/O-port block accessed in 16-bit words. */
function gas(buf: Buffer, at: number, port: number, bitWidth: number): void {
  buf[at] = GAS_SYSTEM_IO;
  buf[at + 1] = bitWidth;
  buf[at + 2] = 0;
  buf[at + 3] = GAS_ACCESS_WORD;
  buf.writeBigUInt64LE(BigInt(port), at + 4);
}

const FADT_WBINVD = 1 << 0;
const FADT_PWR_BUTTON = 1 << 4; // no fixed power button
const FADT_SLP_BUTTON = 1 << 5; // no fixed sleep button
const BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2;
const BOOT_ARCH_ASPM_DISABLED = 1 << 4;

/** FADT revision 6. SMI_CMD is zero: the platform is always in ACPI mode. */
export function fadt(dsdtAddr: number): Buffer {
  const b = Buffer.alloc(276 - 36);
  const at = (off: number) => off - 36;
  b.writeUInt32LE(dsdtAddr, at(40));
  b.writeUInt16LE(SCI_IRQ, at(46));
  b.writeUInt32LE(PM1A_EVT_BLK, at(56));
  b.writeUInt32LE(PM1A_CNT_BLK, at(64));
  b[at(88)] = PM1_EVT_LEN;
  b[at(89)] = PM1_CNT_LEN;
  b.writeUInt16LE(BOOT_ARCH_VGA_NOT_PRESENT | BOOT_ARCH_ASPM_DISABLED, at(109));
  b.writeUInt32LE(FADT_WBINVD | FADT_PWR_BUTTON | FADT_SLP_BUTTON, at(112));
  b[at(131)] = 1; // FADT minor version: 6.1
  b.writeBigUInt64LE(BigInt(dsdtAddr), at(140));
  gas(b, at(148), PM1A_EVT_BLK, PM1_EVT_LEN * 8);
  gas(b, at(172), PM1A_CNT_BLK, PM1_CNT_LEN * 8);
  b.write('TSVISOR\0', at(268), 'ascii');
  return sdt('FACP', 6, b);
}

const MADT_PCAT_COMPAT = 1;
const MADT_LAPIC_ENABLED = 1;

export function madt(cpus: number): Buffer {
  const parts: Buffer[] = [];
  const header = Buffer.alloc(8);
  header.writeUInt32LE(LAPIC_ADDR, 0);
  header.writeUInt32LE(MADT_PCAT_COMPAT, 4);
  parts.push(header);
  for (let id = 0; id < cpus; id++) {
    const lapic = Buffer.alloc(8);
    lapic[0] = 0; // processor local APIC
    lapic[1] = 8;
    lapic[2] = id; // ACPI processor UID
    lapic[3] = id; // APIC ID
    lapic.writeUInt32LE(MADT_LAPIC_ENABLED, 4);
    parts.push(lapic);
  }
  const ioapic = Buffer.alloc(12);
  ioapic[0] = 1;
  ioapic[1] = 12;
  ioapic[2] = cpus; // I/O APIC ID, after the CPUs'
  ioapic.writeUInt32LE(IOAPIC_ADDR, 4);
  ioapic.writeUInt32LE(0, 8); // GSI base
  parts.push(ioapic);
  // The SCI is level triggered, active high, on GSI 9.
  const sciOverride = Buffer.alloc(10);
  sciOverride[0] = 2;
  sciOverride[1] = 10;
  sciOverride[3] = SCI_IRQ;
  sciOverride.writeUInt32LE(SCI_IRQ, 4);
  sciOverride.writeUInt16LE(0x000d, 8);
  parts.push(sciOverride);
  // LINT1 of every local APIC is the NMI input.
  const nmi = Buffer.alloc(6);
  nmi[0] = 4;
  nmi[1] = 6;
  nmi[2] = 0xff;
  nmi.writeUInt16LE(0x0005, 3);
  nmi[5] = 1;
  parts.push(nmi);
  return sdt('APIC', 5, Buffer.concat(parts));
}

export function dsdt(): Buffer {
  const body = [
    aml.name('\\_S5', aml.pkg([aml.integer(S5_SLEEP_TYPE), aml.integer(S5_SLEEP_TYPE), aml.integer(0), aml.integer(0)])),
    aml.scope('\\_SB', [
      aml.device('PEVT', [
        aml.name('_HID', aml.string('QEMU0001')), // the id Linux's pvpanic driver binds to
        aml.name('_CRS', aml.resourceTemplate([aml.ioPorts(PVPANIC_PORT, 1)])),
      ]),
      pciRootBridge(),
    ]),
  ];
  return sdt('DSDT', 2, Buffer.from(body.flat()));
}

/** Bus 0 behind a PNP0A03 host bridge; config mechanism #1 at 0xCF8. */
function pciRootBridge(): aml.Aml {
  const routes: aml.Aml[] = [];
  for (let slot = 1; slot < PCI_SLOTS; slot++) {
    // _PRT entries: slot address (function ffff), pin (0 = INTA#), no link device, GSI.
    for (let pin = 0; pin < 4; pin++)
      routes.push(aml.pkg([aml.integer(slot * 0x10000 + 0xffff), aml.integer(pin), aml.integer(0), aml.integer(intxGsi(slot, pin + 1))]));
  }
  return aml.device('PCI0', [
    aml.name('_HID', aml.eisaId('PNP0A03')),
    aml.name('_ADR', aml.integer(0)),
    aml.name('_UID', aml.integer(0)),
    aml.name('_SEG', aml.integer(0)),
    aml.name('_BBN', aml.integer(0)),
    aml.name(
      '_CRS',
      aml.resourceTemplate([
        aml.wordWindow(aml.AddressSpace.BUS_NUMBER, 0, 0),
        aml.ioPorts(0xcf8, 8),
        aml.wordWindow(aml.AddressSpace.IO, 0x0000, 0x0cf7, 0x03),
        aml.wordWindow(aml.AddressSpace.IO, PCI_IO_WINDOW.start, PCI_IO_WINDOW.end - 1, 0x03),
        aml.dwordMemoryWindow(PCI_MMIO_WINDOW.start, PCI_MMIO_WINDOW.end - 1),
      ]),
    ),
    aml.name('_PRT', aml.pkg(routes)),
  ]);
}

/** Writes all tables at ACPI_START; returns the RSDP's address. */
export function writeAcpiTables(mem: GuestMemory, cpus: number): number {
  let next = ACPI_START;
  const place = (t: Buffer): number => {
    const addr = next;
    next = Math.ceil((addr + t.length) / 16) * 16;
    if (next > ACPI_END) throw new Error('ACPI tables overflow their area');
    mem.write(addr, t);
    return addr;
  };
  const rsdpAddr = place(Buffer.alloc(36)); // filled in last, once the XSDT's address is known
  const dsdtAddr = place(dsdt());
  const fadtAddr = place(fadt(dsdtAddr));
  const madtAddr = place(madt(cpus));
  const xsdtAddr = place(xsdt([fadtAddr, madtAddr]));
  mem.write(rsdpAddr, rsdp(xsdtAddr));
  return rsdpAddr;
}
