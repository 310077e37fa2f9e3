// Where tsvisor puts things in an x86 guest's physical address space.
import { gpa, type RegionSpec } from '../../memory/guest-memory.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export const GDT_START = 0x500;
export const IDT_START = 0x520;
export const ZERO_PAGE_START = 0x7000;
export const BOOT_STACK_POINTER = 0x8ff0;
export const PML4_START = 0x9000;
export const PDPTE_START = 0xa000;
export const PDE_START = 0xb000;
export const CMDLINE_START = 0x20000;
export const CMDLINE_MAX_SIZE = 0x10000;
/** Extended BIOS data area: the end of usable low memory. */
export const EBDA_START = 0x9fc00;
/** The BIOS area where Linux scans for the RSDP; tsvisor puts all ACPI tables here. */
export const ACPI_START = 0xe0000;
export const ACPI_END = 0x100000;
/** Protected-mode kernel load address. */
export const HIMEM_START = 0x100000;

/** RAM stops here below 4 GiB; the rest of the 32-bit space is for MMIO. */
export const MMIO_HOLE_START = 3 * GiB;
export const FOUR_GIB = 4 * GiB;
/** Where PCI BARs go: the 32-bit MMIO hole below the IOAPIC, and the ports above the legacy ones. */
export const PCI_MMIO_WINDOW = { start: 0xc0000000, end: 0xfc000000 };
export const PCI_IO_WINDOW = { start: 0x1000, end: 0x10000 };
export const IOAPIC_ADDR = 0xfec00000;
export const LAPIC_ADDR = 0xfee00000;
export const TSS_ADDR = 0xfffbd000;
export const IDENTITY_MAP_ADDR = 0xfffbc000;

export const MIN_MEMORY = 64 * MiB;

/** RAM regions for a guest of `memSize` bytes: low RAM up to the hole, the rest above 4 GiB. */
export function ramRegions(memSize: number): RegionSpec[] {
  if (memSize <= MMIO_HOLE_START) return [{ start: gpa(0), size: memSize }];
  return [
    { start: gpa(0), size: MMIO_HOLE_START },
    { start: gpa(FOUR_GIB), size: memSize - MMIO_HOLE_START },
  ];
}
