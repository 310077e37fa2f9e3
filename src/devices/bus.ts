// An address-range bus (one for port I/O, one for MMIO). Devices are inserted at
// non-overlapping ranges and see only offsets into their own range, never who
// called them. Accesses nobody claims read as all-ones and are counted.

export interface BusDevice {
  readonly name: string;
  /** Fills `data` (1, 2, 4 or 8 bytes) with the value at `offset`. */
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

/** An interrupt line a device drives (level: asserted or not); who delivers it is the wiring's business. */
export interface IrqLine {
  set(level: boolean): void;
}

export interface DeviceCounters {
  reads: number;
  /** Writes that exited. */
  writes: number;
  /** Writes KVM queued in its coalesced ring (no exit), applied later. */
  queued: number;
}

interface Range {
  base: number;
  length: number;
  device: BusDevice;
  counters: DeviceCounters;
}

const MAX_TRACKED = 256;

export class BusError extends Error {
  override name = 'BusError';
}

export class Bus {
  private ranges: Range[] = [];
  /** Accesses that hit no device. */
  readonly unclaimed = { reads: 0, writes: 0 };
  /** Unclaimed accesses by address (the first MAX_TRACKED addresses seen). */
  readonly unclaimedByAddress = new Map<number, number>();

  constructor(readonly name: string) {}

  insert(device: BusDevice, base: number, length: number): void {
    if (!(length > 0) || !Number.isSafeInteger(base) || base < 0) {
      throw new BusError(`${this.name}: bad range for ${device.name}`);
    }
    const clash = this.ranges.find((r) => base < r.base + r.length && r.base < base + length);
    if (clash) {
      throw new BusError(`${this.name}: ${device.name} at 0x${base.toString(16)} overlaps ${clash.device.name} at 0x${clash.base.toString(16)}`);
    }
    this.ranges.push({ base, length, device, counters: { reads: 0, writes: 0, queued: 0 } });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  remove(device: BusDevice): void {
    this.ranges = this.ranges.filter((r) => r.device !== device);
  }

  /** The range that wholly holds [addr, addr+len), by binary search. */
  private find(addr: number, len: number): Range | undefined {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid]!;
      if (addr < r.base) hi = mid - 1;
      else if (addr >= r.base + r.length) lo = mid + 1;
      else return addr + len <= r.base + r.length ? r : undefined;
    }
    return undefined;
  }

  /** Returns false (and fills all-ones) when no device claims the access. */
  read(addr: number, data: Uint8Array): boolean {
    const r = this.find(addr, data.length);
    if (!r) {
      data.fill(0xff);
      this.unclaimed.reads++;
      this.countUnclaimed(addr);
      return false;
    }
    r.counters.reads++;
    r.device.read(addr - r.base, data);
    return true;
  }

  /** `queued`: the write comes from KVM's coalesced ring, not from an exit. */
  write(addr: number, data: Uint8Array, queued = false): boolean {
    const r = this.find(addr, data.length);
    if (!r) {
      this.unclaimed.writes++;
      this.countUnclaimed(addr);
      return false;
    }
    if (queued) r.counters.queued++;
    else r.counters.writes++;
    r.device.write(addr - r.base, data);
    return true;
  }

  /**
   * One exit's worth of accesses: `data` holds `data.length / size` accesses of
   * `size` bytes at `addr` (string I/O repeats the port). What a device throws goes
   * to `onError` and drops that access (a read sees all-ones), so guest input never
   * ends the caller.
   */
  dispatch(addr: number, size: number, isWrite: boolean, data: Uint8Array, onError: (e: unknown) => void): void {
    for (let i = 0; i + size <= data.length; i += size) {
      const chunk = data.subarray(i, i + size);
      try {
        if (isWrite) this.write(addr, chunk);
        else this.read(addr, chunk);
      } catch (e) {
        if (!isWrite) chunk.fill(0xff);
        onError(e);
      }
    }
  }

  private countUnclaimed(addr: number): void {
    const n = this.unclaimedByAddress.get(addr);
    if (n !== undefined) this.unclaimedByAddress.set(addr, n + 1);
    else if (this.unclaimedByAddress.size < MAX_TRACKED) this.unclaimedByAddress.set(addr, 1);
  }

  /** Per-device access counts, for --stats. Devices on several ranges are summed. */
  counters(): Map<string, DeviceCounters> {
    const out = new Map<string, DeviceCounters>();
    for (const r of this.ranges) {
      const c = out.get(r.device.name) ?? { reads: 0, writes: 0, queued: 0 };
      c.reads += r.counters.reads;
      c.writes += r.counters.writes;
      c.queued += r.counters.queued;
      out.set(r.device.name, c);
    }
    return out;
  }
}

/** Reads a little-endian value of data.length bytes (at most 4) as a number. */
export function dataValue(data: Uint8Array): number {
  let v = 0;
  for (let i = data.length - 1; i >= 0; i--) v = v * 256 + data[i]!;
  return v;
}

export function setDataValue(data: Uint8Array, value: number): void {
  for (let i = 0; i < data.length; i++) {
    data[i] = value & 0xff;
    value = Math.floor(value / 256);
  }
}
