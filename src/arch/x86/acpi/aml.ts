// The few ACPI Machine Language encodings tsvisor's DSDT needs (ACPI 6.x, chapter 20).
// Each function returns the bytes of one term; terms concatenate.

const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82;

export type Aml = number[];

/** PkgLength: the length of what follows including the PkgLength bytes themselves. */
export function pkgLength(contentLength: number): Aml {
  for (let n = 1; n <= 4; n++) {
    const total = contentLength + n;
    if (n === 1 && total < 0x40) return [total];
    if (n > 1 && total < 1 << (4 + 8 * (n - 1))) {
      const out = [((n - 1) << 6) | (total & 0x0f)];
      for (let i = 1; i < n; i++) out.push((total >> (4 + 8 * (i - 1))) & 0xff);
      return out;
    }
  }
  throw new Error('AML package too long');
}

/** A name path: four-character segments, optionally rooted with a leading backslash. */
export function namePath(path: string): Aml {
  const rooted = path.startsWith('\\');
  const segs = (rooted ? path.slice(1) : path).split('.').filter(Boolean);
  for (const s of segs) if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(s)) throw new Error(`bad AML name segment ${s}`);
  const bytes = segs.flatMap((s) => [...Buffer.from(s.padEnd(4, '_'), 'ascii')]);
  const prefix = rooted ? [0x5c] : [];
  if (segs.length === 1) return [...prefix, ...bytes];
  if (segs.length === 2) return [...prefix, 0x2e, ...bytes];
  return [...prefix, 0x2f, segs.length, ...bytes];
}

export function integer(v: number): Aml {
  if (v === 0) return [ZERO_OP];
  if (v === 1) return [ONE_OP];
  if (v <= 0xff) return [BYTE_PREFIX, v];
  if (v <= 0xffff) return [WORD_PREFIX, v & 0xff, v >> 8];
  return [DWORD_PREFIX, v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
}

export function string(s: string): Aml {
  return [STRING_PREFIX, ...Buffer.from(s, 'ascii'), 0];
}

export function name(path: string, value: Aml): Aml {
  return [NAME_OP, ...namePath(path), ...value];
}

export function pkg(elements: Aml[]): Aml {
  const body = [elements.length, ...elements.flat()];
  return [PACKAGE_OP, ...pkgLength(body.length), ...body];
}

export function buffer(bytes: number[]): Aml {
  const body = [...integer(bytes.length), ...bytes];
  return [BUFFER_OP, ...pkgLength(body.length), ...body];
}

export function scope(path: string, terms: Aml[]): Aml {
  const body = [...namePath(path), ...terms.flat()];
  return [SCOPE_OP, ...pkgLength(body.length), ...body];
}

export function device(path: string, terms: Aml[]): Aml {
  const body = [...namePath(path), ...terms.flat()];
  return [EXT_OP_PREFIX, DEVICE_OP, ...pkgLength(body.length), ...body];
}

/** A ResourceTemplate: the descriptors, then the end tag. */
export function resourceTemplate(descriptors: number[][]): Aml {
  return buffer([...descriptors.flat(), 0x79, 0x00]);
}

/** I/O port descriptor: a fixed, 16-bit-decoded range. */
export function ioPorts(base: number, length: number): number[] {
  return [0x47, 0x01, base & 0xff, base >> 8, base & 0xff, base >> 8, 0x01, length];
}

export const AddressSpace = { MEMORY: 0, IO: 1, BUS_NUMBER: 2 } as const;
/** General flags of a range a bridge produces (forwards), with fixed minimum and maximum. */
const WINDOW_FLAGS = 0x0c;

const le = (v: number, bytes: number): number[] => Array.from({ length: bytes }, (_, i) => Math.floor(v / 256 ** i) & 0xff);

/** Word Address Space Descriptor for a window [min, max] (bus numbers or I/O ports). */
export function wordWindow(space: number, min: number, max: number, typeFlags = 0): number[] {
  return [0x88, ...le(13, 2), space, WINDOW_FLAGS, typeFlags, ...le(0, 2), ...le(min, 2), ...le(max, 2), ...le(0, 2), ...le(max - min + 1, 2)];
}

/** DWord Address Space Descriptor for a 32-bit memory window [min, max], read-write, non-cacheable. */
export function dwordMemoryWindow(min: number, max: number): number[] {
  return [0x87, ...le(23, 2), AddressSpace.MEMORY, WINDOW_FLAGS, 0x01, ...le(0, 4), ...le(min, 4), ...le(max, 4), ...le(0, 4), ...le(max - min + 1, 4)];
}

/** EISA ID compression of a PNP ID such as "PNP0A03", as _HID takes it. */
export function eisaId(id: string): Aml {
  const c = (i: number): number => id.charCodeAt(i) - 0x40;
  const hex = parseInt(id.slice(3), 16);
  const v = ((c(0) << 26) | (c(1) << 21) | (c(2) << 16) | hex) >>> 0;
  // Stored big-endian within the little-endian DWORD.
  return integer((((v >>> 24) & 0xff) | (((v >>> 16) & 0xff) << 8) | (((v >>> 8) & 0xff) << 16) | ((v & 0xff) << 24)) >>> 0);
}
