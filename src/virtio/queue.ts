// The split virtqueue (virtio 1.x, "Split Virtqueues"): the descriptor table, the
// available ring the driver fills and the used ring the device fills, all in guest
// memory. One implementation serves every device.
//
// The guest is untrusted: every index is checked against the queue size, every
// buffer against guest RAM, chains are walked at most queue-size hops, nested
// indirect tables are refused. A driver that breaks these rules gets QueueError,
// which the transport turns into DEVICE_NEEDS_RESET.
import { u64ToNumber, type GuestMemory } from '../memory/guest-memory.js';
import type { DescriptorChain, Segment } from './chain.js';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
export const DESC_SIZE = 16;
export const USED_ELEM_SIZE = 8;
export const MAX_QUEUE_SIZE = 32768;

export class QueueError extends Error {
  override name = 'QueueError';
}

/**
 * A queue as plain data: what a data plane needs to run it, and what it gives back
 * when it stops. Untrusted (it may come from the guest's registers or from another
 * process): it becomes a live queue only through SplitQueue.fromState().
 */
export interface QueueState {
  /** The size the driver chose (a power of two, at most the device's). */
  size: number;
  descTable: number;
  availRing: number;
  usedRing: number;
  /** VIRTIO_F_RING_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** The available-ring index of the next chain the device takes. */
  nextAvail: number;
  /** The used-ring index of the next entry the device fills. */
  nextUsed: number;
}

export class SplitQueue {
  readonly size: number;
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  readonly eventIdx: boolean;
  /** The device's largest queue size: the longest indirect table it takes. */
  private readonly maxIndirect: number;
  private lastAvail: number;
  private nextUsed: number;
  /** The used index at the last interrupt decision (EVENT_IDX). */
  private signalledUsed: number;

  private constructor(s: QueueState, maxSize: number) {
    this.size = s.size;
    this.maxIndirect = maxSize;
    this.descTable = s.descTable;
    this.availRing = s.availRing;
    this.usedRing = s.usedRing;
    this.eventIdx = s.eventIdx;
    this.lastAvail = s.nextAvail;
    this.nextUsed = this.signalledUsed = s.nextUsed;
  }

  /**
   * A live queue from plain data, after checking everything in it: the size against
   * the device's `maxSize`, each ring's alignment and placement in guest RAM, the
   * indices. Throws QueueError otherwise.
   */
  static fromState(maxSize: number, s: QueueState, mem: GuestMemory): SplitQueue {
    if (!isPowerOfTwo(maxSize) || maxSize > MAX_QUEUE_SIZE) throw new Error(`bad virtqueue size ${maxSize}`);
    const n = s.size;
    if (!isPowerOfTwo(n) || n > maxSize) throw new QueueError(`queue size ${n} is not a power of two up to ${maxSize}`);
    for (const [what, index] of [
      ['next available', s.nextAvail],
      ['next used', s.nextUsed],
    ] as const) {
      if (!Number.isInteger(index) || index < 0 || index > 0xffff) throw new QueueError(`${what} index ${index} is not a 16-bit index`);
    }
    if (typeof s.eventIdx !== 'boolean') throw new QueueError('eventIdx is not a boolean');
    checkArea(mem, 'descriptor table', s.descTable, DESC_SIZE * n, 16);
    checkArea(mem, 'available ring', s.availRing, 6 + 2 * n, 2);
    checkArea(mem, 'used ring', s.usedRing, 6 + USED_ELEM_SIZE * n, 4);
    return new SplitQueue(s, maxSize);
  }

  /** Where the device is, as plain data (after it stopped taking chains). */
  state(): QueueState {
    const { size, descTable, availRing, usedRing, eventIdx } = this;
    return { size, descTable, availRing, usedRing, eventIdx, nextAvail: this.lastAvail, nextUsed: this.nextUsed };
  }

  /** The next chain the driver made available, or undefined when there is none. */
  pop(mem: GuestMemory): DescriptorChain | undefined {
    const availIdx = mem.loadU16Acquire(this.availRing + 2);
    const pending = (availIdx - this.lastAvail) & 0xffff;
    if (pending === 0) return undefined;
    if (pending > this.size) throw new QueueError(`available index ${availIdx} is ${pending} entries ahead of the device (queue size ${this.size})`);
    const head = mem.readU16(this.availRing + 4 + 2 * (this.lastAvail % this.size));
    // A chain that fails its checks stays unconsumed, so unpop() counts stay exact.
    const chain = this.readChain(mem, head);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return chain;
  }

  /** Puts the last popped chain back: the device could not use it yet. */
  unpop(): void {
    this.lastAvail = (this.lastAvail - 1) & 0xffff;
  }

  /** Walks one chain, following at most one indirect table, in at most `size` descriptors. */
  private readChain(mem: GuestMemory, head: number): DescriptorChain {
    if (head >= this.size) throw new QueueError(`chain head ${head} is outside the descriptor table (size ${this.size})`);
    const readable: Segment[] = [];
    const writable: Segment[] = [];
    let table = this.descTable;
    let tableSize = this.size;
    let index = head;
    let indirect = false;
    // At most `size` descriptors in the table (a longer walk is a loop), and at most
    // the device's largest queue size in an indirect table: Linux sizes those by the
    // device's seg_max, which a vhost-user back-end advertises before the front-end
    // picks a smaller ring (QEMU's vhost-user-blk-pci: 128).
    let limit = this.size;
    for (let seen = 0; ;) {
      if (++seen > limit) throw new QueueError(`chain at ${head} is longer than the queue (a loop?)`);
      const d = table + index * DESC_SIZE;
      const addr = u64ToNumber(mem.readU32(d), mem.readU32(d + 4));
      const len = mem.readU32(d + 8);
      const flags = mem.readU16(d + 12);
      const next = mem.readU16(d + 14);
      if (addr === Infinity) throw new QueueError(`descriptor ${index} points outside guest RAM`);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (indirect) throw new QueueError('an indirect table holds another indirect descriptor');
        if (flags & VIRTQ_DESC_F_NEXT) throw new QueueError('an indirect descriptor also has NEXT set');
        if (len === 0 || len % DESC_SIZE !== 0) throw new QueueError(`indirect table length ${len} is not a non-zero multiple of ${DESC_SIZE}`);
        if (!mem.contains(addr, len)) throw new QueueError(`indirect table at 0x${addr.toString(16)} is outside guest RAM`);
        indirect = true;
        table = addr;
        tableSize = len / DESC_SIZE;
        if (tableSize > this.maxIndirect)
          throw new QueueError(`indirect table of ${tableSize} descriptors is longer than the largest queue (${this.maxIndirect})`);
        limit = tableSize;
        seen = 0;
        index = 0;
        continue;
      }
      if (!mem.contains(addr, len)) throw new QueueError(`buffer [0x${addr.toString(16)}, +${len}) is outside guest RAM`);
      if (flags & VIRTQ_DESC_F_WRITE) writable.push({ addr, len });
      else if (writable.length) throw new QueueError('a device-readable buffer follows a device-writable one');
      else readable.push({ addr, len });
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      if (next >= tableSize) throw new QueueError(`descriptor ${index} links to ${next}, outside its table (size ${tableSize})`);
      index = next;
    }
    return { head, readable, writable };
  }

  /** Returns a chain to the driver, saying how many bytes the device wrote into it. */
  pushUsed(mem: GuestMemory, head: number, written: number): void {
    const elem = this.usedRing + 4 + USED_ELEM_SIZE * (this.nextUsed % this.size);
    mem.writeU32(elem, head);
    mem.writeU32(elem + 4, written);
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    // The entry must be visible before the index that publishes it.
    mem.storeU16Release(this.usedRing + 2, this.nextUsed);
  }

  /** Whether the driver wants an interrupt for what was used since the last time this said yes. */
  needsInterrupt(mem: GuestMemory): boolean {
    if (!this.eventIdx) return !(mem.readU16(this.availRing) & VIRTQ_AVAIL_F_NO_INTERRUPT);
    const usedEvent = mem.loadU16Acquire(this.availRing + 4 + 2 * this.size);
    const old = this.signalledUsed;
    this.signalledUsed = this.nextUsed;
    return ((this.nextUsed - usedEvent - 1) & 0xffff) < ((this.nextUsed - old) & 0xffff);
  }

  /** Asks the driver not to notify while the device is already working through the ring. */
  disableNotifications(mem: GuestMemory): void {
    if (!this.eventIdx) mem.storeU16Release(this.usedRing, VIRTQ_USED_F_NO_NOTIFY);
  }

  /**
   * Asks the driver to notify for the next buffer; returns true when buffers arrived
   * meanwhile (the caller must then go on, or it would wait for a kick that never comes).
   */
  enableNotifications(mem: GuestMemory): boolean {
    if (this.eventIdx) mem.storeU16Release(this.usedRing + 4 + USED_ELEM_SIZE * this.size, this.lastAvail);
    else mem.storeU16Release(this.usedRing, 0);
    return mem.loadU16Acquire(this.availRing + 2) !== this.lastAvail;
  }
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function checkArea(mem: GuestMemory, what: string, addr: number, len: number, align: number): void {
  if (!Number.isSafeInteger(addr)) throw new QueueError(`${what} address ${addr} is not an address`);
  if (addr % align !== 0) throw new QueueError(`${what} at 0x${addr.toString(16)} is not ${align}-byte aligned`);
  if (!mem.contains(addr, len)) throw new QueueError(`${what} [0x${addr.toString(16)}, +${len}) is outside guest RAM`);
}
