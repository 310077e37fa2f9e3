// A hostile virtio driver's view of its split virtqueues: each queue has a home
// in low RAM (descriptor table, available ring, used ring), and the operations
// write descriptors, chains, indirect tables and ring indices there, honest or
// not. Buffers come from the high region. Shared by every virtio target.
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { DESC_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtio/queue.js';
import type { ByteReader } from './bytes.js';
import { DATA_START, guestAddress, guestLength, HIGH } from './guest.js';

/** Each queue's rings fit in 0x3000 bytes up to size 256; five queues fit in low RAM. */
const QUEUE_STRIDE = 0x3000;
const FIRST_QUEUE = 0x1000;

export interface RingLayout {
  desc: number;
  avail: number;
  used: number;
}

export function ringLayout(q: number): RingLayout {
  const desc = FIRST_QUEUE + (q % 5) * QUEUE_STRIDE;
  return { desc, avail: desc + 0x1000, used: desc + 0x1800 };
}

export interface GuestBuffer {
  addr: number;
  len: number;
  write: boolean;
}

export const RingOp = { DESC: 0, CHAIN: 1, INDIRECT: 2, PUBLISH: 3, AVAIL_IDX: 4, FLAGS: 5 } as const;
export const RING_OPS = 6;

/** The driver side of several queues of a given size each. */
export class HostileDriver {
  private readonly availIdx: number[];
  private readonly nextFree: number[];
  private nextData = DATA_START;

  constructor(
    private readonly mem: GuestMemory,
    readonly sizes: number[],
  ) {
    this.availIdx = sizes.map(() => 0);
    this.nextFree = sizes.map(() => 0);
  }

  /** `len` bytes in the data area (wrapping), filled with `fill`; the guest's buffers. */
  alloc(len: number, fill?: Uint8Array): number {
    len = Math.min(len, HIGH.size / 4);
    if (this.nextData + len > HIGH.start + HIGH.size) this.nextData = DATA_START;
    const addr = this.nextData;
    this.nextData += (len + 15) & ~15;
    if (fill) this.mem.write(addr, fill.subarray(0, len));
    return addr;
  }

  writeDesc(table: number, index: number, addr: bigint, len: number, flags: number, next: number): void {
    const at = table + index * DESC_SIZE;
    if (!this.mem.contains(at, DESC_SIZE)) return;
    this.mem.writeU64(at, addr);
    this.mem.writeU32(at + 8, len);
    this.mem.writeU16(at + 12, flags);
    this.mem.writeU16(at + 14, next);
  }

  /** Makes `head` available in queue `q`. */
  publish(q: number, head: number): void {
    const { avail } = ringLayout(q);
    const size = this.sizes[q]!;
    this.mem.writeU16(avail + 4 + 2 * (this.availIdx[q]! % size), head);
    this.availIdx[q] = (this.availIdx[q]! + 1) & 0xffff;
    this.mem.writeU16(avail + 2, this.availIdx[q]!);
  }

  /** Posts `bufs` as one chain through the descriptor table (or an indirect table); returns its head. */
  post(q: number, bufs: GuestBuffer[], indirect = false): number {
    const { desc } = ringLayout(q);
    const size = this.sizes[q]!;
    const head = this.nextFree[q]!;
    const flags = (b: GuestBuffer, i: number): number => (b.write ? VIRTQ_DESC_F_WRITE : 0) | (i < bufs.length - 1 ? VIRTQ_DESC_F_NEXT : 0);
    if (indirect) {
      const table = this.alloc(bufs.length * DESC_SIZE);
      bufs.forEach((b, i) => this.writeDesc(table, i, BigInt(b.addr), b.len, flags(b, i), i + 1));
      this.writeDesc(desc, head, BigInt(table), bufs.length * DESC_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
      this.nextFree[q] = (head + 1) % size;
    } else {
      bufs.forEach((b, i) => this.writeDesc(desc, (head + i) % size, BigInt(b.addr), b.len, flags(b, i), (head + i + 1) % size));
      this.nextFree[q] = (head + bufs.length) % size;
    }
    this.publish(q, head);
    return head;
  }

  /** One ring operation on queue `q`, its details read from `r`. */
  apply(kind: number, q: number, r: ByteReader): void {
    const { desc, avail, used } = ringLayout(q);
    const size = this.sizes[q]!;
    switch (kind % RING_OPS) {
      case RingOp.DESC:
        // Mostly inside the table, sometimes just past it; any flags.
        return this.writeDesc(desc, r.below(size + 2), guestAddress(r), guestLength(r), r.bool() ? r.u8() & 7 : r.u16(), r.bool() ? r.below(size) : r.u16());
      case RingOp.CHAIN:
      case RingOp.INDIRECT: {
        const n = 1 + (r.u8() % 6);
        const bufs = Array.from({ length: n }, (_, i) => {
          const len = r.bool() ? guestLength(r) : r.u8() + 1;
          return { addr: r.u8() < 230 ? this.alloc(len, r.rest(len > 64 ? 0 : len)) : Number(guestAddress(r)), len, write: i >= n - (r.u8() % (n + 1)) };
        });
        this.post(q, bufs, kind % RING_OPS === RingOp.INDIRECT);
        return;
      }
      case RingOp.PUBLISH:
        return this.publish(q, r.bool() ? r.below(size) : r.u16());
      case RingOp.AVAIL_IDX:
        this.availIdx[q] = r.u16();
        return this.mem.writeU16(avail + 2, this.availIdx[q]!);
      default:
        // Available flags and used_event, or the used ring's flags and avail_event, which the device owns.
        if (r.bool()) this.mem.writeU16(r.bool() ? avail : avail + 4 + 2 * size, r.u16());
        else this.mem.writeU16(r.bool() ? used : used + 4 + 8 * size, r.u16());
    }
  }
}
