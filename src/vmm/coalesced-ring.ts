// KVM's coalesced MMIO/PIO ring: one page, shared by every vCPU's kvm_run mapping,
// where KVM queues guest writes to registered zones instead of exiting for each.
// It is drained before any exit's access is handled, so devices still see every
// access in guest order (a queued 0xCF8 write lands before the 0xCFC read after it,
// a queued e1000 RDT write before the ICR read). Several threads drain it (each vCPU
// thread, the main thread), one at a time under a shared lock.
import type { Bus } from '../devices/bus.js';

const HEADER = 8; // u32 first (ours to advance), u32 last (KVM's)
const ENTRY = 24; // u64 phys_addr, u32 len, u32 pio, u8 data[8]
const PAGE = 4096;
export const RING_ENTRIES = Math.floor((PAGE - HEADER) / ENTRY);

export interface DrainOptions {
  /** Whether this drainer may apply the entry at the head; draining stops at the first it may not. */
  take?: (pio: boolean, addr: number, len: number) => boolean;
  /** Gets what a device threw for one entry; the entry is consumed all the same. */
  onError: (e: unknown) => void;
}

export class CoalescedRing {
  private readonly view: DataView;
  private readonly bytes: Uint8Array;
  drained = 0;

  constructor(buffer: ArrayBuffer, offset: number) {
    this.view = new DataView(buffer, offset, PAGE);
    this.bytes = new Uint8Array(buffer, offset, PAGE);
  }

  /** Applies queued writes in order; true when the ring is empty afterwards. */
  drain(pio: Bus, mmio: Bus, options: DrainOptions): boolean {
    let first = this.view.getUint32(0, true);
    const last = this.view.getUint32(4, true);
    if (first >= RING_ENTRIES || last >= RING_ENTRIES) return true;
    while (first !== last) {
      const e = HEADER + first * ENTRY;
      const addr = Number(this.view.getBigUint64(e, true));
      const len = Math.min(this.view.getUint32(e + 8, true), 8);
      const isPio = this.view.getUint32(e + 12, true) !== 0;
      if (options.take && !options.take(isPio, addr, len)) return false;
      try {
        (isPio ? pio : mmio).write(addr, this.bytes.subarray(e + 16, e + 16 + len), true);
      } catch (err) {
        options.onError(err);
      }
      first = (first + 1) % RING_ENTRIES;
      this.view.setUint32(0, first, true);
      this.drained++;
    }
    return true;
  }
}

/** Drains `ring` holding `lock` (an Int32 every thread that drains this ring shares). */
export function drainLocked(ring: CoalescedRing, lock: Int32Array, pio: Bus, mmio: Bus, options: DrainOptions): boolean {
  while (Atomics.compareExchange(lock, 0, 0, 1) !== 0) Atomics.wait(lock, 0, 1, 1);
  try {
    return ring.drain(pio, mmio, options);
  } finally {
    Atomics.store(lock, 0, 0);
    Atomics.notify(lock, 0, 1);
  }
}
