// A simulated virtio driver for unit tests: lays out a split virtqueue's real
// rings in guest memory and posts chains the way a guest driver does, including
// ones no honest driver would post.
import { GuestMemory, gpa } from '../../src/memory/guest-memory.js';
import type { ActiveQueues, VirtioInterrupt } from '../../src/virtio/in-process.js';
import { DESC_SIZE, SplitQueue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtio/queue.js';

export const RAM_SIZE = 1 << 20;
export const DESC_TABLE = 0x1000;
export const AVAIL_RING = 0x3000;
export const USED_RING = 0x4000;
/** Buffers the tests hand out start here. */
export const DATA_START = 0x10000;

export interface Desc {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

export interface Buf {
  addr: number;
  len: number;
  write?: boolean;
}

/** Where a second or later queue of the same device lives: its own rings and data area in shared memory. */
export interface QueuePlacement {
  mem: GuestMemory;
  /** Added to DESC_TABLE, AVAIL_RING and USED_RING. */
  ringOffset: number;
  dataStart: number;
}

export class SimDriver {
  /** memfd-backed, as in a VM, so devices can hand buffers to the kernel by host address. */
  readonly mem: GuestMemory;
  readonly queue: SplitQueue;
  private readonly descTable: number;
  private readonly availRing: number;
  private readonly usedRing: number;
  private availIdx = 0;
  private usedSeen = 0;
  private nextFree = 0;
  private nextData: number;

  constructor(
    readonly size = 16,
    eventIdx = false,
    at?: QueuePlacement,
  ) {
    this.mem = at?.mem ?? GuestMemory.create([{ start: gpa(0), size: RAM_SIZE }]);
    this.descTable = DESC_TABLE + (at?.ringOffset ?? 0);
    this.availRing = AVAIL_RING + (at?.ringOffset ?? 0);
    this.usedRing = USED_RING + (at?.ringOffset ?? 0);
    this.nextData = at?.dataStart ?? DATA_START;
    this.queue = SplitQueue.fromState(
      size,
      { size, descTable: this.descTable, availRing: this.availRing, usedRing: this.usedRing, eventIdx, nextAvail: 0, nextUsed: 0 },
      this.mem,
    );
  }

  /** A fresh data buffer of `len` bytes, filled with `fill`. */
  alloc(len: number, fill = 0): number {
    const addr = this.nextData;
    this.nextData += Math.ceil(len / 16) * 16 + 16;
    this.mem.fill(addr, len, fill);
    return addr;
  }

  writeDesc(table: number, index: number, d: Desc): void {
    const at = table + index * DESC_SIZE;
    this.mem.writeU64(at, BigInt(d.addr));
    this.mem.writeU32(at + 8, d.len);
    this.mem.writeU16(at + 12, d.flags);
    this.mem.writeU16(at + 14, d.next);
  }

  /** Makes `head` available (without checking what it points at). */
  publish(head: number): void {
    this.mem.writeU16(this.availRing + 4 + 2 * (this.availIdx % this.size), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.mem.writeU16(this.availRing + 2, this.availIdx);
  }

  /** Posts a chain of buffers through the descriptor table; returns its head. */
  post(bufs: Buf[]): number {
    const first = this.nextFree;
    bufs.forEach((b, i) => {
      const index = (first + i) % this.size;
      const last = i === bufs.length - 1;
      this.writeDesc(this.descTable, index, {
        addr: b.addr,
        len: b.len,
        flags: (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT),
        next: (index + 1) % this.size,
      });
    });
    this.nextFree = (first + bufs.length) % this.size;
    this.publish(first);
    return first;
  }

  /** Posts a chain through one indirect table placed in guest memory; returns its head. */
  postIndirect(bufs: Buf[]): number {
    const table = this.alloc(bufs.length * DESC_SIZE);
    bufs.forEach((b, i) =>
      this.writeDesc(table, i, {
        addr: b.addr,
        len: b.len,
        flags: (b.write ? VIRTQ_DESC_F_WRITE : 0) | (i < bufs.length - 1 ? VIRTQ_DESC_F_NEXT : 0),
        next: i + 1,
      }),
    );
    const head = this.nextFree;
    this.writeDesc(this.descTable, head, { addr: table, len: bufs.length * DESC_SIZE, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    this.nextFree = (head + 1) % this.size;
    this.publish(head);
    return head;
  }

  /** Used entries the device published since the last call. */
  takeUsed(): { id: number; len: number }[] {
    const idx = this.mem.readU16(this.usedRing + 2);
    const out = [];
    while (this.usedSeen !== idx) {
      const at = this.usedRing + 4 + 8 * (this.usedSeen % this.size);
      out.push({ id: this.mem.readU32(at), len: this.mem.readU32(at + 4) });
      this.usedSeen = (this.usedSeen + 1) & 0xffff;
    }
    return out;
  }

  /** EVENT_IDX: interrupt me once the used index passes `idx`. */
  setUsedEvent(idx: number): void {
    this.mem.writeU16(this.availRing + 4 + 2 * this.size, idx);
  }

  get availEvent(): number {
    return this.mem.readU16(this.usedRing + 4 + 8 * this.size);
  }
}

/** What a transport hands a device at DRIVER_OK, failing as the transport does: a failure stops the activation. */
export function activeQueues(memory: GuestMemory, queues: SplitQueue[], features: bigint, interrupt: VirtioInterrupt): ActiveQueues & { failures: string[] } {
  const active = {
    memory,
    queues,
    features,
    interrupt,
    stopped: false,
    failures: [] as string[],
    fail: (why: string) => {
      if (active.stopped) return;
      active.failures.push(why);
      active.stopped = true;
    },
  };
  return active;
}
