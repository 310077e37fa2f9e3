// The BIOS e820 memory map handed to Linux in boot_params.
import type { RegionSpec } from '../../memory/guest-memory.js';
import { ACPI_END, ACPI_START, EBDA_START, HIMEM_START } from './layout.js';

export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_MAX_ENTRIES = 128;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

export function e820Map(ram: readonly RegionSpec[]): E820Entry[] {
  const map: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: ACPI_START, size: ACPI_END - ACPI_START, type: E820_RESERVED },
  ];
  for (const r of ram) {
    const start = Math.max(r.start, HIMEM_START);
    const end = r.start + r.size;
    if (end > start) map.push({ addr: start, size: end - start, type: E820_RAM });
  }
  if (map.length > E820_MAX_ENTRIES) throw new Error('e820 map has too many entries');
  return map;
}

/** Encodes entries as boot_params.e820_table wants them: addr u64, size u64, type u32. */
export function encodeE820(entries: readonly E820Entry[]): Buffer {
  const buf = Buffer.alloc(entries.length * 20);
  entries.forEach((e, i) => {
    buf.writeBigUInt64LE(BigInt(e.addr), i * 20);
    buf.writeBigUInt64LE(BigInt(e.size), i * 20 + 8);
    buf.writeUInt32LE(e.type, i * 20 + 16);
  });
  return buf;
}
