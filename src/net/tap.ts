// The tap back-end (`--netdev tap`, `--netdev bridge`): a kernel tap interface,
// one file descriptor per queue (IFF_MULTI_QUEUE when there are several), with
// IFF_VNET_HDR so packets carry their virtio_net_hdr and checksum and
// segmentation work is left to whoever can do it cheapest. For `bridge`, tsvisor
// creates the tap, brings it up and enslaves it to an existing Linux bridge.
//
// openTap() makes the interface; its fds are plain data, so the back-end that
// reads and writes them (TapBackend) runs on whichever thread has the front-end:
// the main thread for the e1000, the virtio-net device worker for virtio-net.
// Each queue's fd is polled by that thread's loop; a queue whose guest has no
// receive buffers stops being polled until the front-end calls resume().
import {
  closeFd,
  controlSocket,
  EAGAIN,
  errnoName,
  ifNameToIndex,
  ioctlBuf,
  ioctlInt,
  O_NONBLOCK,
  O_RDWR,
  openFile,
  readFd,
  SysError,
  writeFd,
} from '../host/libc.js';
import type { FdPoller, NetBackend, NetPort, RxOffloads } from './backend.js';
import { VNET_HDR_LEN } from './backend.js';
import { Counters, DropCounter } from './counters.js';

const TUN_DEVICE = '/dev/net/tun';
const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCBRADDIF = 0x89a2;
const IFF_UP = 0x1;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const IFF_MULTI_QUEUE = 0x0100;
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const TUN_F_TSO_ECN = 0x08;
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;
/** The largest packet a tap hands over: a 64 KiB GSO packet, its Ethernet header and the vnet header. */
const READ_BUFFER = VNET_HDR_LEN + 14 + 0x10000;
/** Packets taken from one queue per wakeup, so queues share their thread. */
const BURST = 64;

export interface TapOptions {
  /** Interface name; absent: the kernel picks tsvtapN. */
  ifname?: string;
  queues: number;
  /** Enslave the tap to this existing bridge. */
  bridge?: string;
}

export class TapError extends Error {
  override name = 'TapError';
}

export const TAP_COUNTERS = ['txPackets', 'txBytes', 'rxPackets', 'rxBytes'] as const;
export const TAP_DROPS = ['tx-error', 'tx-busy', 'rx-error'] as const;
export type TapDrop = (typeof TAP_DROPS)[number];
/** Float64 slots a tap's counters take. */
export const TAP_SLOTS = TAP_COUNTERS.length + TAP_DROPS.length;

/** A tap's counters over `storage` (TAP_SLOTS long, maybe shared): the back-end's thread counts, any thread reads. */
export function tapCounters(storage: Float64Array<ArrayBufferLike> = new Float64Array(TAP_SLOTS)) {
  const counters = new Counters(TAP_COUNTERS, storage);
  const drops = new DropCounter(TAP_DROPS, storage.subarray(TAP_COUNTERS.length));
  return { counters, drops, stats: (): Record<string, number> => ({ ...counters.record(), ...drops.stats() }) };
}

/** An open tap as plain data: one fd per queue. */
export interface OpenTap {
  kind: 'tap';
  fds: number[];
  ifname: string;
  description: string;
}

function ifreq(name: string): Buffer {
  const req = Buffer.alloc(IFREQ_SIZE);
  if (Buffer.byteLength(name) >= IFNAMSIZ) throw new TapError(`interface name "${name}" is longer than ${IFNAMSIZ - 1} characters`);
  req.write(name, 0, 'latin1');
  return req;
}

function ifreqName(req: Buffer): string {
  const end = req.indexOf(0);
  return req.toString('latin1', 0, end < 0 || end > IFNAMSIZ ? IFNAMSIZ : end);
}

/** Why a tap could not be had, said for a user. */
function explain(e: unknown, what: string): TapError {
  if (!(e instanceof SysError)) return new TapError(`${what}: ${(e as Error).message}`);
  const hints: Record<string, string> = {
    EPERM: 'needs CAP_NET_ADMIN (run as root, or create the tap first: ip tuntap add NAME mode tap user $USER)',
    EACCES: 'needs CAP_NET_ADMIN (run as root, or create the tap first: ip tuntap add NAME mode tap user $USER)',
    ENOENT: `${TUN_DEVICE} is missing (load the tun module)`,
    EBUSY: 'the interface is in use (or exists without multi-queue while queues>1 asks for it)',
    EINVAL: 'the interface exists with other flags (multi-queue must match queues=)',
  };
  return new TapError(`${what}: ${hints[errnoName(e.errno)] ?? e.message}`);
}

/** Creates (or attaches to) the tap interface, one fd per queue, and brings it up (on the bridge, if asked). */
export function openTap(options: TapOptions): OpenTap {
  const flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (options.queues > 1 ? IFF_MULTI_QUEUE : 0);
  let name = options.ifname ?? 'tsvtap%d';
  const fds: number[] = [];
  try {
    for (let q = 0; q < options.queues; q++) {
      const fd = openFile(TUN_DEVICE, O_RDWR | O_NONBLOCK);
      fds.push(fd);
      const req = ifreq(name);
      req.writeUInt16LE(flags, IFNAMSIZ);
      ioctlBuf(fd, TUNSETIFF, 'TUNSETIFF', req);
      name = ifreqName(req); // the kernel's choice for tsvtap%d; later queues join it
      const hdrSize = Buffer.alloc(4);
      hdrSize.writeInt32LE(VNET_HDR_LEN);
      ioctlBuf(fd, TUNSETVNETHDRSZ, 'TUNSETVNETHDRSZ', hdrSize);
      ioctlInt(fd, TUNSETOFFLOAD, 'TUNSETOFFLOAD', 0);
    }
    bringUp(name, options.bridge);
  } catch (e) {
    for (const fd of fds) closeFd(fd);
    throw e instanceof TapError ? e : explain(e, `tap ${name}`);
  }
  return { kind: 'tap', fds, ifname: name, description: options.bridge ? `bridge ${options.bridge} (tap ${name})` : `tap ${name}` };
}

/** Sets the interface up and, for bridge mode, adds it to the bridge. */
function bringUp(ifname: string, bridge: string | undefined): void {
  const sock = controlSocket();
  try {
    const req = ifreq(ifname);
    ioctlBuf(sock, SIOCGIFFLAGS, 'SIOCGIFFLAGS', req);
    req.writeUInt16LE(req.readUInt16LE(IFNAMSIZ) | IFF_UP, IFNAMSIZ);
    try {
      ioctlBuf(sock, SIOCSIFFLAGS, 'SIOCSIFFLAGS', req);
    } catch (e) {
      if (bridge) throw e; // without privileges a pre-made tap stays as its owner left it
    }
    if (bridge) {
      if (ifNameToIndex(bridge) === 0)
        throw new TapError(`bridge ${bridge} does not exist (create it: ip link add ${bridge} type bridge; ip link set ${bridge} up)`);
      const add = ifreq(bridge);
      add.writeInt32LE(ifNameToIndex(ifname), IFNAMSIZ);
      try {
        ioctlBuf(sock, SIOCBRADDIF, 'SIOCBRADDIF', add);
      } catch (e) {
        throw explain(e, `adding ${ifname} to bridge ${bridge}`);
      }
    }
  } finally {
    closeFd(sock);
  }
}

/**
 * The tap's queues as a NetBackend, on the thread that attaches it. The owner (the
 * instance made where the tap was opened) closes the fds; one made in a device
 * worker from the plain data only stops using them.
 */
export class TapBackend implements NetBackend {
  readonly offloads = true;
  readonly queues: number;
  readonly description: string;
  readonly ifname: string;
  private readonly fds: number[];
  private port: NetPort | undefined;
  private poller: FdPoller | undefined;
  private readonly tokens: (number | undefined)[] = [];
  /** Per queue: the packet the port refused, kept for resume(). */
  private readonly held: (Uint8Array | undefined)[] = [];
  private readonly buffer = Buffer.alloc(READ_BUFFER);
  private readonly count: ReturnType<typeof tapCounters>;
  private handedOff = false;

  constructor(
    private readonly tap: OpenTap,
    storage?: Float64Array<ArrayBufferLike>,
    private readonly owner = true,
  ) {
    this.fds = tap.fds;
    this.queues = tap.fds.length;
    this.ifname = tap.ifname;
    this.description = tap.description;
    this.count = tapCounters(storage);
  }

  get drops(): DropCounter<TapDrop> {
    return this.count.drops;
  }

  /** The fds for a back-end in a device worker; this instance then only closes them. */
  handOff(): OpenTap {
    this.handedOff = true;
    return this.tap;
  }

  attach(port: NetPort, poller: FdPoller): void {
    if (this.handedOff) throw new Error(`${this.description} runs in a device worker`);
    this.port = port;
    this.poller = poller;
    this.fds.forEach((_, q) => this.poll(q));
  }

  private poll(q: number): void {
    if (this.tokens[q] === undefined && this.poller) this.tokens[q] = this.poller.add(this.fds[q]!, () => this.readable(q));
  }

  private unpoll(q: number): void {
    const token = this.tokens[q];
    if (token === undefined) return;
    this.poller!.remove(token);
    this.tokens[q] = undefined;
  }

  private readable(q: number): void {
    for (let i = 0; i < BURST && !this.held[q]; i++) {
      const n = readFd(this.fds[q]!, this.buffer);
      if (n === -EAGAIN) return;
      if (n <= 0) return this.count.drops.count('rx-error');
      this.offer(q, this.buffer.subarray(0, n));
    }
  }

  /** Hands a packet to the port, which copies it at once; a refused one is copied out of the read buffer and held. */
  private offer(q: number, packet: Uint8Array): void {
    if (this.port?.receive(q, packet)) {
      this.count.counters.add('rxPackets');
      this.count.counters.add('rxBytes', packet.length - VNET_HDR_LEN);
      return;
    }
    this.held[q] = packet.slice();
    this.unpoll(q);
  }

  resume(q: number): void {
    const packet = this.held[q];
    if (!packet) return;
    this.held[q] = undefined;
    this.offer(q, packet);
    if (!this.held[q]) this.poll(q);
  }

  send(q: number, packet: Uint8Array): void {
    const n = writeFd(this.fds[q % this.fds.length]!, packet);
    if (n === -EAGAIN) return this.count.drops.count('tx-busy');
    if (n < 0) return this.count.drops.count('tx-error');
    this.count.counters.add('txPackets');
    this.count.counters.add('txBytes', packet.length - VNET_HDR_LEN);
  }

  setRxOffloads(o: RxOffloads): void {
    let flags = 0;
    if (o.csum) {
      flags |= TUN_F_CSUM;
      if (o.tso4) flags |= TUN_F_TSO4;
      if (o.tso6) flags |= TUN_F_TSO6;
      if ((o.tso4 || o.tso6) && o.ecn) flags |= TUN_F_TSO_ECN;
    }
    for (const fd of this.fds) ioctlInt(fd, TUNSETOFFLOAD, 'TUNSETOFFLOAD', flags);
  }

  stats(): Record<string, number> {
    return this.count.stats();
  }

  async close(): Promise<void> {
    this.fds.forEach((_, q) => this.unpoll(q));
    this.port = undefined;
    if (this.owner) for (const fd of this.fds.splice(0)) closeFd(fd);
  }
}
