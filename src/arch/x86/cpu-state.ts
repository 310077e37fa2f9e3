// The state a vCPU needs to enter a Linux kernel's 64-bit entry point directly:
// a flat GDT, identity-mapped page tables for the first GiB, long mode in the
// control registers, the MSRs Linux expects, and LINT0/LINT1 wired as on a PC.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { Regs, Segment, Sregs, MsrEntry } from '../../kvm/structs.js';
import { emptyRegs } from '../../kvm/structs.js';
import { BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START } from './layout.js';

/** GDT descriptor from flags (G/DB/L/AVL in bits 15..12, access byte in 7..0), base and limit. */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base);
  const l = BigInt(limit);
  const f = BigInt(flags);
  return ((b & 0xff000000n) << 32n) | ((f & 0xf0ffn) << 40n) | ((l & 0xf0000n) << 32n) | ((b & 0xffffffn) << 16n) | (l & 0xffffn);
}

export const BOOT_GDT = [
  gdtEntry(0, 0, 0), // null
  gdtEntry(0xa09b, 0, 0xfffff), // 0x08: 64-bit code
  gdtEntry(0xc093, 0, 0xfffff), // 0x10: data
  gdtEntry(0x808b, 0, 0xfffff), // 0x18: TSS
];

/** The KVM view of a GDT descriptor with the given selector. */
export function segmentFromGdt(entry: bigint, index: number): Segment {
  const e = entry;
  const limit = Number(((e >> 32n) & 0xf0000n) | (e & 0xffffn));
  const g = Number((e >> 55n) & 1n);
  return {
    base: ((e >> 16n) & 0xffffffn) | (((e >> 56n) & 0xffn) << 24n),
    limit: g ? limit * 4096 + 4095 : limit,
    selector: index * 8,
    type: Number((e >> 40n) & 0xfn),
    present: Number((e >> 47n) & 1n),
    dpl: Number((e >> 45n) & 3n),
    db: Number((e >> 54n) & 1n),
    s: Number((e >> 44n) & 1n),
    l: Number((e >> 53n) & 1n),
    g,
    avl: Number((e >> 52n) & 1n),
    unusable: 0,
  };
}

const CR0_PE = 1n;
const CR0_ET = 1n << 4n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;
const PAGE_PRESENT_RW = 0x3;
const PAGE_2M = 0x80;

/** GDT, empty IDT and page tables identity-mapping the first GiB with 2 MiB pages. */
export function writeBootTables(mem: GuestMemory): void {
  BOOT_GDT.forEach((e, i) => mem.writeU64(GDT_START + i * 8, e));
  mem.writeU64(IDT_START, 0n);
  mem.fill(PML4_START, 3 * 4096);
  mem.writeU64(PML4_START, BigInt(PDPTE_START | PAGE_PRESENT_RW));
  mem.writeU64(PDPTE_START, BigInt(PDE_START | PAGE_PRESENT_RW));
  for (let i = 0; i < 512; i++) mem.writeU64(PDE_START + i * 8, (BigInt(i) << 21n) | BigInt(PAGE_PRESENT_RW | PAGE_2M));
}

export function longModeSregs(base: Sregs): Sregs {
  const code = segmentFromGdt(BOOT_GDT[1]!, 1);
  const data = segmentFromGdt(BOOT_GDT[2]!, 2);
  const tss = segmentFromGdt(BOOT_GDT[3]!, 3);
  return {
    ...base,
    cs: code,
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    tr: tss,
    gdt: { base: BigInt(GDT_START), limit: BOOT_GDT.length * 8 - 1 },
    idt: { base: BigInt(IDT_START), limit: 7 },
    cr0: base.cr0 | CR0_PE | CR0_ET | CR0_PG,
    cr3: BigInt(PML4_START),
    cr4: base.cr4 | CR4_PAE,
    efer: base.efer | EFER_LME | EFER_LMA,
  };
}

export function bootRegs(entry: number): Regs {
  const regs = emptyRegs();
  regs.rflags = 0x2n;
  regs.rip = BigInt(entry);
  regs.rsp = BigInt(BOOT_STACK_POINTER);
  regs.rbp = BigInt(BOOT_STACK_POINTER);
  regs.rsi = BigInt(ZERO_PAGE_START);
  return regs;
}

export const MSR = {
  TSC: 0x10,
  SYSENTER_CS: 0x174,
  SYSENTER_ESP: 0x175,
  SYSENTER_EIP: 0x176,
  MISC_ENABLE: 0x1a0,
  MTRR_DEF_TYPE: 0x2ff,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SYSCALL_MASK: 0xc0000084,
  KERNEL_GS_BASE: 0xc0000102,
} as const;

const MISC_ENABLE_FAST_STRING = 1n;
const MTRR_ENABLE = 1n << 11n;
const MTRR_TYPE_WRBACK = 6n;

export function bootMsrs(): MsrEntry[] {
  return [
    { index: MSR.SYSENTER_CS, data: 0n },
    { index: MSR.SYSENTER_ESP, data: 0n },
    { index: MSR.SYSENTER_EIP, data: 0n },
    { index: MSR.STAR, data: 0n },
    { index: MSR.CSTAR, data: 0n },
    { index: MSR.KERNEL_GS_BASE, data: 0n },
    { index: MSR.SYSCALL_MASK, data: 0n },
    { index: MSR.LSTAR, data: 0n },
    { index: MSR.TSC, data: 0n },
    { index: MSR.MISC_ENABLE, data: MISC_ENABLE_FAST_STRING },
    // Without MTRRs enabled, a guest treats all RAM as uncacheable.
    { index: MSR.MTRR_DEF_TYPE, data: MTRR_ENABLE | MTRR_TYPE_WRBACK },
  ];
}

const APIC_LVT0 = 0x350;
const APIC_LVT1 = 0x360;
const DELIVERY_EXTINT = 7;
const DELIVERY_NMI = 4;

/** LINT0 delivers the 8259's ExtINT, LINT1 the NMI, as a PC BIOS leaves them. */
export function configureLint(lapic: Buffer): Buffer {
  const set = (reg: number, mode: number) => {
    const v = lapic.readUInt32LE(reg);
    lapic.writeUInt32LE(((v & ~0x700) | (mode << 8)) >>> 0, reg);
  };
  set(APIC_LVT0, DELIVERY_EXTINT);
  set(APIC_LVT1, DELIVERY_NMI);
  return lapic;
}
