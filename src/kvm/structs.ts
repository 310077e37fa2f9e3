// Encoders and decoders for the x86 KVM structs tsvisor passes to ioctls.
// Each struct is plain data on the TypeScript side and a Buffer only at the ioctl call.

export const REG_NAMES = [
  'rax',
  'rbx',
  'rcx',
  'rdx',
  'rsi',
  'rdi',
  'rsp',
  'rbp',
  'r8',
  'r9',
  'r10',
  'r11',
  'r12',
  'r13',
  'r14',
  'r15',
  'rip',
  'rflags',
] as const;
export type Regs = Record<(typeof REG_NAMES)[number], bigint>;

export function emptyRegs(): Regs {
  return Object.fromEntries(REG_NAMES.map((n) => [n, 0n])) as Regs;
}

export function encodeRegs(regs: Regs): Buffer {
  const buf = Buffer.alloc(REG_NAMES.length * 8);
  REG_NAMES.forEach((name, i) => buf.writeBigUInt64LE(BigInt.asUintN(64, regs[name]), i * 8));
  return buf;
}

export function decodeRegs(buf: Buffer): Regs {
  const regs = emptyRegs();
  REG_NAMES.forEach((name, i) => (regs[name] = buf.readBigUInt64LE(i * 8)));
  return regs;
}

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

export interface DTable {
  base: bigint;
  limit: number;
}

export const SEGMENT_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
const CR_NAMES = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const;

export type Sregs = Record<(typeof SEGMENT_NAMES)[number], Segment> &
  Record<(typeof CR_NAMES)[number], bigint> & { gdt: DTable; idt: DTable; interruptBitmap: Buffer };

export const SREGS_SIZE = 312;
const SEGMENT_SIZE = 24;
const DTABLE_BASE = SEGMENT_NAMES.length * SEGMENT_SIZE; // 192
const CR_BASE = DTABLE_BASE + 32; // 224
const BITMAP_BASE = CR_BASE + CR_NAMES.length * 8; // 280

function decodeSegment(buf: Buffer, off: number): Segment {
  return {
    base: buf.readBigUInt64LE(off),
    limit: buf.readUInt32LE(off + 8),
    selector: buf.readUInt16LE(off + 12),
    type: buf[off + 14]!,
    present: buf[off + 15]!,
    dpl: buf[off + 16]!,
    db: buf[off + 17]!,
    s: buf[off + 18]!,
    l: buf[off + 19]!,
    g: buf[off + 20]!,
    avl: buf[off + 21]!,
    unusable: buf[off + 22]!,
  };
}

function encodeSegment(buf: Buffer, off: number, seg: Segment): void {
  buf.writeBigUInt64LE(seg.base, off);
  buf.writeUInt32LE(seg.limit >>> 0, off + 8);
  buf.writeUInt16LE(seg.selector, off + 12);
  const bytes = [seg.type, seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl, seg.unusable];
  bytes.forEach((b, i) => (buf[off + 14 + i] = b));
}

export function decodeSregs(buf: Buffer): Sregs {
  const out: Partial<Sregs> = {};
  SEGMENT_NAMES.forEach((name, i) => (out[name] = decodeSegment(buf, i * SEGMENT_SIZE)));
  out.gdt = { base: buf.readBigUInt64LE(DTABLE_BASE), limit: buf.readUInt16LE(DTABLE_BASE + 8) };
  out.idt = { base: buf.readBigUInt64LE(DTABLE_BASE + 16), limit: buf.readUInt16LE(DTABLE_BASE + 24) };
  CR_NAMES.forEach((name, i) => (out[name] = buf.readBigUInt64LE(CR_BASE + i * 8)));
  out.interruptBitmap = Buffer.from(buf.subarray(BITMAP_BASE, SREGS_SIZE));
  return out as Sregs;
}

export function encodeSregs(s: Sregs): Buffer {
  const buf = Buffer.alloc(SREGS_SIZE);
  SEGMENT_NAMES.forEach((name, i) => encodeSegment(buf, i * SEGMENT_SIZE, s[name]));
  buf.writeBigUInt64LE(s.gdt.base, DTABLE_BASE);
  buf.writeUInt16LE(s.gdt.limit, DTABLE_BASE + 8);
  buf.writeBigUInt64LE(s.idt.base, DTABLE_BASE + 16);
  buf.writeUInt16LE(s.idt.limit, DTABLE_BASE + 24);
  CR_NAMES.forEach((name, i) => buf.writeBigUInt64LE(s[name], CR_BASE + i * 8));
  s.interruptBitmap.copy(buf, BITMAP_BASE);
  return buf;
}

export const FPU_SIZE = 416;

/** A kvm_fpu with the reset values of the x87 control word and MXCSR. */
export function encodeDefaultFpu(): Buffer {
  const buf = Buffer.alloc(FPU_SIZE);
  buf.writeUInt16LE(0x37f, 128); // fcw
  buf.writeUInt32LE(0x1f80, 408); // mxcsr
  return buf;
}

export interface MsrEntry {
  index: number;
  data: bigint;
}

export function encodeMsrs(entries: readonly MsrEntry[]): Buffer {
  const buf = Buffer.alloc(8 + entries.length * 16);
  buf.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    buf.writeUInt32LE(e.index, 8 + i * 16);
    buf.writeBigUInt64LE(e.data, 8 + i * 16 + 8);
  });
  return buf;
}

export function decodeMsrs(buf: Buffer): MsrEntry[] {
  const n = buf.readUInt32LE(0);
  return Array.from({ length: n }, (_, i) => ({
    index: buf.readUInt32LE(8 + i * 16),
    data: buf.readBigUInt64LE(8 + i * 16 + 8),
  }));
}

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export const CPUID_ENTRY_SIZE = 40;
export const CPUID_FLAG_SIGNIFICANT_INDEX = 1;

/** An empty kvm_cpuid2 with room for `capacity` entries, for KVM to fill. */
export function cpuidBuffer(capacity: number): Buffer {
  const buf = Buffer.alloc(8 + capacity * CPUID_ENTRY_SIZE);
  buf.writeUInt32LE(capacity, 0);
  return buf;
}

export function encodeCpuid(entries: readonly CpuidEntry[]): Buffer {
  const buf = cpuidBuffer(entries.length);
  entries.forEach((e, i) => {
    const o = 8 + i * CPUID_ENTRY_SIZE;
    [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].forEach((v, j) => buf.writeUInt32LE(v >>> 0, o + j * 4));
  });
  return buf;
}

export function decodeCpuid(buf: Buffer): CpuidEntry[] {
  const n = buf.readUInt32LE(0);
  return Array.from({ length: n }, (_, i) => {
    const o = 8 + i * CPUID_ENTRY_SIZE;
    const [fn, index, flags, eax, ebx, ecx, edx] = Array.from({ length: 7 }, (_, j) => buf.readUInt32LE(o + j * 4));
    return { function: fn!, index: index!, flags: flags!, eax: eax!, ebx: ebx!, ecx: ecx!, edx: edx! };
  });
}

export function encodeMemoryRegion(slot: number, flags: number, gpa: number, size: number, hostAddr: bigint): Buffer {
  const buf = Buffer.alloc(32);
  buf.writeUInt32LE(slot, 0);
  buf.writeUInt32LE(flags, 4);
  buf.writeBigUInt64LE(BigInt(gpa), 8);
  buf.writeBigUInt64LE(BigInt(size), 16);
  buf.writeBigUInt64LE(hostAddr, 24);
  return buf;
}
