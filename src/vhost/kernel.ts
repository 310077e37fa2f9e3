// The host kernel's vhost interface (linux/vhost.h): the ioctls and structures a
// VMM uses to hand a virtqueue's data path to the kernel. Every address handed
// over is a host virtual address of this process (the kernel walks our mappings of
// guest RAM); every fd is ours. One table, like src/kvm/ioctls.ts.
import { ioctlBuf, ioctlInt } from '../host/libc.js';
import type { VhostRegion, VhostRings, VringAddresses } from './rings.js';

const VHOST = 0xaf;
const ioc = (dir: number, nr: number, size: number) => ((dir << 30) | (size << 16) | (VHOST << 8) | nr) >>> 0;
const IOW = 1;
const IOR = 2;

/** Request numbers, for a 64-bit host. */
export const VhostIoctl = {
  GET_FEATURES: ioc(IOR, 0x00, 8),
  SET_FEATURES: ioc(IOW, 0x00, 8),
  SET_OWNER: ioc(0, 0x01, 0),
  SET_MEM_TABLE: ioc(IOW, 0x03, 8),
  SET_VRING_NUM: ioc(IOW, 0x10, 8),
  SET_VRING_ADDR: ioc(IOW, 0x11, 40),
  SET_VRING_BASE: ioc(IOW, 0x12, 8),
  GET_VRING_BASE: ioc(IOR | IOW, 0x12, 8),
  SET_VRING_KICK: ioc(IOW, 0x20, 8),
  SET_VRING_CALL: ioc(IOW, 0x21, 8),
  NET_SET_BACKEND: ioc(IOW, 0x30, 8),
} as const;

/** struct vhost_memory_region: guest_phys_addr, memory_size, userspace_addr, flags_padding. */
const MEMORY_REGION_SIZE = 32;

/** One vhost device fd (/dev/vhost-net, a vhost-vdpa device ...): the ioctls every vhost back-end takes. */
export class VhostFd implements VhostRings {
  constructor(readonly fd: number) {}

  setOwner(): void {
    ioctlInt(this.fd, VhostIoctl.SET_OWNER, 'VHOST_SET_OWNER');
  }

  features(): bigint {
    const buf = Buffer.alloc(8);
    ioctlBuf(this.fd, VhostIoctl.GET_FEATURES, 'VHOST_GET_FEATURES', buf);
    return buf.readBigUInt64LE(0);
  }

  setFeatures(features: bigint): void {
    const buf = Buffer.alloc(8);
    buf.writeBigUInt64LE(features);
    ioctlBuf(this.fd, VhostIoctl.SET_FEATURES, 'VHOST_SET_FEATURES', buf);
  }

  setMemTable(regions: readonly VhostRegion[]): void {
    const buf = Buffer.alloc(8 + regions.length * MEMORY_REGION_SIZE);
    buf.writeUInt32LE(regions.length, 0);
    regions.forEach((r, i) => {
      const at = 8 + i * MEMORY_REGION_SIZE;
      buf.writeBigUInt64LE(BigInt(r.guestAddress), at);
      buf.writeBigUInt64LE(BigInt(r.size), at + 8);
      buf.writeBigUInt64LE(r.hostAddress, at + 16);
    });
    ioctlBuf(this.fd, VhostIoctl.SET_MEM_TABLE, 'VHOST_SET_MEM_TABLE', buf);
  }

  /** struct vhost_vring_state and vhost_vring_file alike: a ring index, then a number or an fd (-1: none); returns the second word back. */
  private vringWord(request: number, name: string, index: number, value: number): number {
    const buf = Buffer.alloc(8);
    buf.writeUInt32LE(index, 0);
    buf.writeInt32LE(value, 4);
    ioctlBuf(this.fd, request, name, buf);
    return buf.readUInt32LE(4);
  }

  setVringNum(index: number, size: number): void {
    this.vringWord(VhostIoctl.SET_VRING_NUM, 'VHOST_SET_VRING_NUM', index, size);
  }

  setVringBase(index: number, nextAvail: number): void {
    this.vringWord(VhostIoctl.SET_VRING_BASE, 'VHOST_SET_VRING_BASE', index, nextAvail);
  }

  /** Stops the ring (the kernel finishes what it took) and returns its next available index. */
  getVringBase(index: number): number {
    return this.vringWord(VhostIoctl.GET_VRING_BASE, 'VHOST_GET_VRING_BASE', index, 0) & 0xffff;
  }

  setVringAddr(index: number, a: VringAddresses): void {
    const buf = Buffer.alloc(40);
    buf.writeUInt32LE(index, 0);
    buf.writeBigUInt64LE(a.desc, 8);
    buf.writeBigUInt64LE(a.used, 16);
    buf.writeBigUInt64LE(a.avail, 24);
    ioctlBuf(this.fd, VhostIoctl.SET_VRING_ADDR, 'VHOST_SET_VRING_ADDR', buf);
  }

  setVringKick(index: number, fd: number): void {
    this.vringWord(VhostIoctl.SET_VRING_KICK, 'VHOST_SET_VRING_KICK', index, fd);
  }

  setVringCall(index: number, fd: number): void {
    this.vringWord(VhostIoctl.SET_VRING_CALL, 'VHOST_SET_VRING_CALL', index, fd);
  }

  /** vhost-net: the tap fd ring `index` moves packets to and from; -1 detaches it. */
  setNetBackend(index: number, fd: number): void {
    this.vringWord(VhostIoctl.NET_SET_BACKEND, 'VHOST_NET_SET_BACKEND', index, fd);
  }
}
