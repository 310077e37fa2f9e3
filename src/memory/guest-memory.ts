// Guest RAM and the one type through which every guest-memory access goes.
//
// RAM is a memfd (so a later vhost-user back-end can map it too), split into
// regions around the PCI/APIC hole below 4 GiB. Every access names a guest
// physical address and a length; both are checked against the regions before any
// byte is touched, and an access that leaves guest RAM throws GuestMemoryError.

import { closeFd, memfdCreate, mmapShared, munmap, type Mapping } from '../host/libc.js';

/** A guest-physical address. Branded so it is not mixed up with host offsets. */
export type GuestAddress = number & { readonly __brand: 'GuestAddress' };
export const gpa = (n: number): GuestAddress => n as GuestAddress;

/**
 * A u64 the guest gave as two u32 halves, as a number; Infinity when it is beyond
 * 2^53, where no guest address or sector can be.
 */
export function u64ToNumber(lo: number, hi: number): number {
  return hi >= 2 ** 21 ? Infinity : hi * 2 ** 32 + lo;
}

export class GuestMemoryError extends Error {
  constructor(
    readonly addr: number,
    readonly length: number,
    why = 'outside guest RAM',
  ) {
    super(`guest access [0x${addr.toString(16)}, +0x${length.toString(16)}) ${why}`);
    this.name = 'GuestMemoryError';
  }
}

/** Guest RAM as plain data: each region, the file backing it (a memfd) and where the region lies in that file. */
export interface MemoryTable {
  regions: { start: number; size: number; fd: number; fileOffset: number }[];
}

export interface RegionSpec {
  readonly start: GuestAddress;
  readonly size: number;
}

export class GuestRegion {
  readonly end: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** For the ring indices that guest and VMM publish to each other (Atomics need a typed array). */
  readonly u16: Uint16Array;

  /** `fileOffset` is where this region starts inside `fd`, the file backing it (undefined for plain buffers). */
  constructor(
    readonly start: GuestAddress,
    readonly mapping: Mapping,
    readonly fd: number | undefined,
    readonly fileOffset: number,
  ) {
    this.end = start + mapping.length;
    this.bytes = new Uint8Array(mapping.buffer);
    this.view = new DataView(mapping.buffer);
    this.u16 = new Uint16Array(mapping.buffer);
  }

  get size(): number {
    return this.mapping.length;
  }

  get hostAddress(): bigint {
    return this.mapping.address;
  }
}

export class GuestMemory {
  /** `ownedFd`: the memfd this instance created and closes; a mapped table leaves its files to their owner. */
  private constructor(
    readonly regions: readonly GuestRegion[],
    private readonly ownedFd?: number,
  ) {}

  /** Backs each region with one memfd, mapped shared. */
  static create(specs: readonly RegionSpec[]): GuestMemory {
    validateLayout(specs);
    const total = specs.reduce((n, s) => n + s.size, 0);
    const fd = memfdCreate('tsvisor-ram', total);
    let offset = 0;
    const regions = specs.map((s) => {
      const region = new GuestRegion(s.start, mmapShared(fd, s.size, offset), fd, offset);
      offset += s.size;
      return region;
    });
    return new GuestMemory(regions, fd);
  }

  /**
   * Maps guest RAM described by `table` (another thread's memfd, or the files
   * another process sent) into this thread; the layout is checked as create()
   * checks it.
   */
  static map(table: MemoryTable): GuestMemory {
    const specs = table.regions.map((r) => ({ start: gpa(r.start), size: r.size }));
    validateLayout(specs);
    const regions: GuestRegion[] = [];
    try {
      for (const r of table.regions) {
        if (!Number.isSafeInteger(r.fileOffset) || r.fileOffset < 0 || r.fileOffset % 4096)
          throw new Error(`guest memory file offset ${r.fileOffset} is not page aligned`);
        regions.push(new GuestRegion(gpa(r.start), mmapShared(r.fd, r.size, r.fileOffset), r.fd, r.fileOffset));
      }
    } catch (e) {
      // A region that cannot be mapped (a file a vhost-user front-end opened read-only) takes back the ones mapped before it.
      for (const r of regions) munmap(r.mapping);
      throw e;
    }
    return new GuestMemory(regions);
  }

  /** This memory as plain data another thread or process can map(); only file-backed memory has one. */
  table(): MemoryTable {
    return {
      regions: this.regions.map((r) => {
        if (r.fd === undefined) throw new Error('guest memory over plain buffers cannot be shared');
        return { start: r.start, size: r.size, fd: r.fd, fileOffset: r.fileOffset };
      }),
    };
  }

  /** Guest memory over plain ArrayBuffers: for tests and tools that need no KVM. */
  static fromBuffers(specs: readonly RegionSpec[]): GuestMemory {
    validateLayout(specs);
    let offset = 0;
    const regions = specs.map((s) => {
      const buffer = new ArrayBuffer(s.size);
      const region = new GuestRegion(s.start, { pointer: null, address: 0n, length: s.size, buffer }, undefined, offset);
      offset += s.size;
      return region;
    });
    return new GuestMemory(regions);
  }

  get totalSize(): number {
    return this.regions.reduce((n, r) => n + r.size, 0);
  }

  /** The region holding [addr, addr+len), or undefined. Accesses never span regions. */
  private find(addr: number, len: number): GuestRegion | undefined {
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0) return undefined;
    for (const r of this.regions) {
      if (addr >= r.start && addr + len <= r.end) return r;
    }
    return undefined;
  }

  private region(addr: number, len: number): GuestRegion {
    const r = this.find(addr, len);
    if (!r) throw new GuestMemoryError(addr, len);
    return r;
  }

  /** True when [addr, addr+len) lies wholly inside guest RAM. */
  contains(addr: number, len: number): boolean {
    return this.find(addr, len) !== undefined;
  }

  /** A live view of guest bytes (no copy). Throws unless wholly inside one region. */
  slice(addr: number, len: number): Uint8Array {
    const r = this.region(addr, len);
    return r.bytes.subarray(addr - r.start, addr - r.start + len);
  }

  /**
   * The host virtual address of [addr, addr+len), for handing guest buffers to the
   * kernel (iovecs); undefined for memory that is not a host mapping (tests).
   */
  hostAddress(addr: number, len: number): bigint | undefined {
    const r = this.region(addr, len);
    return r.mapping.pointer === null ? undefined : r.hostAddress + BigInt(addr - r.start);
  }

  read(addr: number, len: number): Uint8Array {
    return this.slice(addr, len).slice();
  }

  write(addr: number, data: Uint8Array): void {
    this.slice(addr, data.length).set(data);
  }

  fill(addr: number, len: number, value = 0): void {
    this.slice(addr, len).fill(value);
  }

  readU8(addr: number): number {
    const r = this.region(addr, 1);
    return r.bytes[addr - r.start]!;
  }

  readU16(addr: number): number {
    const r = this.region(addr, 2);
    return r.view.getUint16(addr - r.start, true);
  }

  readU32(addr: number): number {
    const r = this.region(addr, 4);
    return r.view.getUint32(addr - r.start, true);
  }

  readU64(addr: number): bigint {
    const r = this.region(addr, 8);
    return r.view.getBigUint64(addr - r.start, true);
  }

  writeU8(addr: number, v: number): void {
    const r = this.region(addr, 1);
    r.bytes[addr - r.start] = v;
  }

  writeU16(addr: number, v: number): void {
    const r = this.region(addr, 2);
    r.view.setUint16(addr - r.start, v, true);
  }

  writeU32(addr: number, v: number): void {
    const r = this.region(addr, 4);
    r.view.setUint32(addr - r.start, v >>> 0, true);
  }

  writeU64(addr: number, v: bigint): void {
    const r = this.region(addr, 8);
    r.view.setBigUint64(addr - r.start, BigInt.asUintN(64, v), true);
  }

  /**
   * A u16 load ordered before every later access (Atomics are sequentially
   * consistent): how a device reads an index the driver publishes.
   */
  loadU16Acquire(addr: number): number {
    const [u16, index] = this.u16Slot(addr);
    return Atomics.load(u16, index);
  }

  /** A u16 store ordered after every earlier access, with a full fence: how a device publishes an index. */
  storeU16Release(addr: number, v: number): void {
    const [u16, index] = this.u16Slot(addr);
    Atomics.store(u16, index, v);
  }

  /** The region's u16 view and the index of the aligned u16 at `addr`. */
  private u16Slot(addr: number): [Uint16Array, number] {
    const r = this.region(addr, 2);
    if (addr % 2) throw new GuestMemoryError(addr, 2, 'is not 2-byte aligned');
    return [r.u16, (addr - r.start) / 2];
  }

  close(): void {
    for (const r of this.regions) if (r.mapping.pointer !== null) munmap(r.mapping);
    if (this.ownedFd !== undefined) closeFd(this.ownedFd);
  }
}

function validateLayout(specs: readonly RegionSpec[]): void {
  const sorted = [...specs].sort((a, b) => a.start - b.start);
  sorted.forEach((s, i) => {
    if (s.size <= 0 || s.size % 4096 !== 0 || s.start % 4096 !== 0) {
      throw new Error(`guest memory region at 0x${s.start.toString(16)} must be non-empty and page aligned`);
    }
    const prev = sorted[i - 1];
    if (prev && prev.start + prev.size > s.start) throw new Error('guest memory regions overlap');
  });
}
