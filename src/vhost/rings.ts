// What every vhost back-end takes, the host kernel's (kernel.ts: vhost-net,
// vhost-vdpa) and another process's (user/frontend.ts: vhost-user): guest memory
// as regions of this process's address space, and per ring its size, start index,
// addresses, kick and call fds. A device that hands its rings over starts and
// stops them here, whichever back-end it has.
import type { GuestMemory } from '../memory/guest-memory.js';
import type { QueueResources } from '../virtio/device.js';
import type { QueueState } from '../virtio/queue.js';

export interface VhostRegion {
  guestAddress: number;
  size: number;
  /** Where this process maps the region. */
  hostAddress: bigint;
  /** The file behind it and the region's offset there (vhost-user maps it from these). */
  fd?: number;
  fileOffset: number;
}

export interface VringAddresses {
  desc: bigint;
  used: bigint;
  avail: bigint;
}

export interface VhostRings {
  setFeatures(features: bigint): void;
  setMemTable(regions: readonly VhostRegion[]): void;
  setVringNum(index: number, size: number): void;
  setVringBase(index: number, nextAvail: number): void;
  setVringAddr(index: number, a: VringAddresses): void;
  setVringKick(index: number, fd: number): void;
  setVringCall(index: number, fd: number): void;
  /** Stops the ring (the back-end finishes what it took) and returns its next available index. */
  getVringBase(index: number): number;
}

/** Guest RAM as vhost regions. */
export function vhostRegions(memory: GuestMemory): VhostRegion[] {
  return memory.regions.map((r) => ({ guestAddress: r.start, size: r.size, hostAddress: r.hostAddress, fd: r.fd, fileOffset: r.fileOffset }));
}

/** Hands queue `q` to the back-end as its ring `ring` (the transport checked the rings lie in guest RAM). */
export function startVring(rings: VhostRings, ring: number, q: QueueResources, memory: GuestMemory): void {
  const s = q.state;
  rings.setVringNum(ring, s.size);
  rings.setVringBase(ring, s.nextAvail);
  const host = (addr: number, len: number, what: string) => {
    const a = memory.hostAddress(addr, len);
    if (a === undefined) throw new Error(`queue ${q.index}: the ${what} is not in guest RAM`);
    return a;
  };
  rings.setVringAddr(ring, {
    desc: host(s.descTable, 16 * s.size, 'descriptor table'),
    avail: host(s.availRing, 6 + 2 * s.size, 'available ring'),
    used: host(s.usedRing, 6 + 8 * s.size, 'used ring'),
  });
  rings.setVringKick(ring, q.kickFd);
  rings.setVringCall(ring, q.callFd);
}

/** Stops ring `ring`, started from `started`: its state, to start it again. */
export function stopVring(rings: VhostRings, ring: number, started: QueueState, memory: GuestMemory): QueueState {
  const nextAvail = rings.getVringBase(ring);
  // The back-end published every used entry before it let the ring go.
  return { ...started, nextAvail, nextUsed: memory.readU16(started.usedRing + 2) };
}
