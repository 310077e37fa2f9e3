// KVM's coalesced MMIO/PIO ring: one page, shared by every vCPU's kvm_run mapping,
// where KVM queues guest writes to registered zones instead of exiting for each.
// The main thread drains it before it handles any exit, so devices still see every
// access in guest order (a queued 0xCF8 write lands before the 0xCFC read after it).
import type { Bus } from '../devices/bus.js';

const HEADER = 8; // u32 first (ours to advance), u32 last (KVM's)
const ENTRY = 24; // u64 phys_addr, u32 len, u32 pio, u8 data[8]
const PAGE = 4096;
export const RING_ENTRIES = Math.floor((PAGE - HEADER) / ENTRY);

export class CoalescedRing {
  private readonly view: DataView;
  private readonly bytes: Uint8Array;
  drained = 0;

  constructor(buffer: ArrayBuffer, offset: number) {
    this.view = new DataView(buffer, offset, PAGE);
    this.bytes = new Uint8Array(buffer, offset, PAGE);
  }

  drain(pio: Bus, mmio: Bus): void {
    let first = this.view.getUint32(0, true);
    const last = this.view.getUint32(4, true);
    if (first >= RING_ENTRIES || last >= RING_ENTRIES) return;
    while (first !== last) {
      const e = HEADER + first * ENTRY;
      const addr = Number(this.view.getBigUint64(e, true));
      const len = Math.min(this.view.getUint32(e + 8, true), 8);
      const bus = this.view.getUint32(e + 12, true) ? pio : mmio;
      bus.write(addr, this.bytes.subarray(e + 16, e + 16 + len));
      first = (first + 1) % RING_ENTRIES;
      this.view.setUint32(0, first, true);
      this.drained++;
    }
  }
}
