// A descriptor chain as a device sees it: the driver-readable buffers, then the
// device-writable ones, each already checked to lie inside guest RAM. Devices
// treat each side as one byte stream and never assume how the driver framed it.
import { IOVEC_SIZE } from '../host/libc.js';
import type { GuestMemory } from '../memory/guest-memory.js';

export interface Segment {
  readonly addr: number;
  readonly len: number;
}

export interface DescriptorChain {
  /** The head descriptor's index: what goes back in the used ring. */
  readonly head: number;
  readonly readable: readonly Segment[];
  readonly writable: readonly Segment[];
}

export function totalLength(segs: readonly Segment[]): number {
  let n = 0;
  for (const s of segs) n += s.len;
  return n;
}

/** The part of a segment list covering stream bytes [offset, offset+len). */
export function subSegments(segs: readonly Segment[], offset: number, len: number): Segment[] {
  const out: Segment[] = [];
  for (const s of segs) {
    if (len === 0) break;
    if (offset >= s.len) {
      offset -= s.len;
      continue;
    }
    const take = Math.min(s.len - offset, len);
    out.push({ addr: s.addr + offset, len: take });
    len -= take;
    offset = 0;
  }
  return out;
}

/** Copies `len` stream bytes from `offset`; undefined when the stream is shorter. */
export function readStream(mem: GuestMemory, segs: readonly Segment[], offset: number, len: number): Uint8Array | undefined {
  const parts = subSegments(segs, offset, len);
  if (totalLength(parts) !== len) return undefined;
  const out = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    out.set(mem.slice(p.addr, p.len), at);
    at += p.len;
  }
  return out;
}

/** Copies `data` into the stream at `offset`, as far as the stream reaches; returns the bytes written. */
export function writeStream(mem: GuestMemory, segs: readonly Segment[], offset: number, data: Uint8Array): number {
  let at = 0;
  for (const p of subSegments(segs, offset, data.length)) {
    mem.write(p.addr, data.subarray(at, at + p.len));
    at += p.len;
  }
  return at;
}

/** The segments as a struct iovec array of host addresses, or undefined if guest memory is not host-mapped. */
export function guestIovecs(mem: GuestMemory, segs: readonly Segment[]): Buffer | undefined {
  const live = segs.filter((s) => s.len > 0);
  const iov = Buffer.alloc(IOVEC_SIZE * live.length);
  for (let i = 0; i < live.length; i++) {
    const host = mem.hostAddress(live[i]!.addr, live[i]!.len);
    if (host === undefined) return undefined;
    iov.writeBigUInt64LE(host, IOVEC_SIZE * i);
    iov.writeBigUInt64LE(BigInt(live[i]!.len), IOVEC_SIZE * i + 8);
  }
  return iov;
}
