// What a network device front-end (virtio-net, e1000) and a back-end (user-mode
// NAT, tap) say to each other. Every packet crossing this interface starts with a
// 12-byte virtio_net_hdr_v1 (flags, GSO type, header length, GSO size, checksum
// start/offset, num_buffers): tap speaks it natively with IFF_VNET_HDR, virtio-net
// passes it through, and a back-end that cannot offload always sees it zeroed.
//
// Threading: both sides run on one thread, the front-end's (the main thread for
// the e1000, the device worker for virtio-net; a back-end that must stay on the
// main thread reaches a worker through ring-backend.ts). A back-end hands received
// packets to the port; a port with no guest buffers left answers false, and the
// back-end holds that queue until the front-end calls resume().
import type { OpenTap } from './tap.js';

export const VNET_HDR_LEN = 12;

/** Offloads the front-end's guest accepts in received packets. */
export interface RxOffloads {
  csum: boolean;
  tso4: boolean;
  tso6: boolean;
  ecn: boolean;
}

export const NO_OFFLOADS: RxOffloads = { csum: false, tso4: false, tso6: false, ecn: false };

export interface NetPort {
  /**
   * A packet for the guest on queue `queue`, copied before this returns (the
   * caller may reuse its buffer); false: no room, hold it and wait for resume(queue).
   */
  receive(queue: number, packet: Uint8Array): boolean;
}

/** Watches fds for input on the calling thread's loop (the VMM's event loop, a device worker's). */
export interface FdPoller {
  add(fd: number, handler: () => void): number;
  remove(token: number): void;
}

export interface NetBackend {
  /** For messages and statistics: "user", "tap tap0", ... */
  readonly description: string;
  /** How many independent queues it serves (multi-queue tap: one fd each). */
  readonly queues: number;
  /** It honours checksum and segmentation requests in vnet headers (tap). */
  readonly offloads: boolean;
  /** The fds, for a front-end in a device worker that runs the back-end there itself; absent: the back-end stays on this thread. */
  handOff?(): OpenTap;
  /** Connects the front-end; packets start flowing. Called once. */
  attach(port: NetPort, poller: FdPoller): void;
  /** A packet from the guest, sent from queue `queue`. Dropped (and counted) when the back-end cannot take it. */
  send(queue: number, packet: Uint8Array): void;
  /** The port has guest buffers again on `queue`. */
  resume(queue: number): void;
  /** What the guest can take in received packets. */
  setRxOffloads(offloads: RxOffloads): void;
  stats(): Record<string, number>;
  close(): Promise<void>;
}

/** A zeroed vnet header followed by `frame`. */
export function withVnetHdr(frame: Uint8Array): Uint8Array {
  const packet = new Uint8Array(VNET_HDR_LEN + frame.length);
  packet.set(frame, VNET_HDR_LEN);
  return packet;
}
