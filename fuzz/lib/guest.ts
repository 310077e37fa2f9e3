// Guest RAM for the fuzz targets: two small regions with a hole between them and
// nothing above, so rings and buffers can start in RAM and run off its end, into
// the hole, or far past anything. Addresses are drawn with a bias towards those
// edges. An access outside RAM throws GuestMemoryError, and one escaping a device
// entry point is a crash like any other exception. Plain buffers by default; the
// targets whose data planes need host addresses (preadv/pwritev into guest RAM)
// or a memory table (a transport activating a device) take the same layout
// backed by a memfd, and close it at the end of the case.
import { GuestMemory, gpa } from '../../src/memory/guest-memory.js';
import { INTERESTING, type ByteReader } from './bytes.js';

export const LOW = { start: 0, size: 0x10000 };
export const HIGH = { start: 0x20000, size: 0x10000 };
/** Where the harness lays out buffers: the high region, so the rings in the low one stay intact. */
export const DATA_START = HIGH.start;
const EDGES = [LOW.start + LOW.size, HIGH.start, HIGH.start + HIGH.size];

const LAYOUT = [
  { start: gpa(LOW.start), size: LOW.size },
  { start: gpa(HIGH.start), size: HIGH.size },
];

export function guestMemory(): GuestMemory {
  return GuestMemory.fromBuffers(LAYOUT);
}

/** The same RAM over a memfd, mapped shared, as a VM's: host addresses and table() work. The caller closes it. */
export function sharedGuestMemory(): GuestMemory {
  return GuestMemory.create(LAYOUT);
}

/** A guest physical address as a 64-bit value: mostly in RAM, often at an edge, sometimes anywhere. */
export function guestAddress(r: ByteReader): bigint {
  switch (r.u8() & 7) {
    case 0:
    case 1:
    case 2:
      return BigInt(LOW.start + r.below(LOW.size));
    case 3:
    case 4:
      return BigInt(HIGH.start + r.below(HIGH.size));
    case 5:
      return BigInt(Math.max(0, r.pick(EDGES) - r.u8()));
    case 6:
      return BigInt(r.u32());
    default:
      return r.u64();
  }
}

/** A length: mostly small, sometimes one that overflows something. */
export function guestLength(r: ByteReader): number {
  switch (r.u8() & 7) {
    case 0:
    case 1:
    case 2:
      return r.u8();
    case 3:
    case 4:
      return r.u16() & 0x1fff;
    case 5:
      return r.pick(INTERESTING);
    default:
      return r.u32();
  }
}

/** A value for a register: interesting or raw. */
export function registerValue(r: ByteReader): number {
  return r.bool() ? r.pick(INTERESTING) : r.u32();
}

/** The guest scribbles over its own RAM (rings, buffers, headers): what lies inside RAM is written. */
export function scribble(mem: GuestMemory, r: ByteReader): void {
  const at = Number(guestAddress(r)) & 0x3ffff;
  const bytes = r.rest(4096);
  for (let i = 0; i < bytes.length; i++) if (mem.contains(at + i, 1)) mem.writeU8(at + i, bytes[i]!);
}
