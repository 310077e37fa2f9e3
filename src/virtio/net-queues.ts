// virtio-net's data plane (virtio 1.x, "Network Device"): receive and transmit
// queue pairs and the control queue, run in the device's worker (or wherever it is
// given the plain data), with the back-end there too: a tap's fds, read and
// written on this thread, or the frame rings to a back-end on the main thread.
// Packets move between the queues and the back-end with their virtio_net_hdr as
// is, so checksum and segmentation offloads pass straight through to a back-end
// that honours them (tap).
//
// Queue pairs are independent: pair i's receive queue takes back-end queue i, its
// transmit queue sends on back-end queue i, and a full receive queue holds back
// only its own back-end queue.
import type { GuestMemory } from '../memory/guest-memory.js';
import { VNET_HDR_LEN, type NetBackend, type NetPort, type RxOffloads } from '../net/backend.js';
import { Counters, DropCounter } from '../net/counters.js';
import { BROADCAST_MAC, ETH_ALEN, ETH_HLEN, MAX_FRAME, sameMac } from '../net/packet.js';
import { RingBackend, RING_SLOTS, type RingPlan } from '../net/ring-backend.js';
import { TapBackend, TAP_SLOTS, type OpenTap } from '../net/tap.js';
import { readStream, totalLength, writeStream, type DescriptorChain } from './chain.js';
import { bit } from './device.js';
import { completeChain, drainQueue, guarded, type ActiveQueues } from './in-process.js';
import { SplitQueue, type QueueState } from './queue.js';
import type { DataPlaneContext, QueueDataPlane, WorkerDevice, WorkerEnv } from './worker/data-plane.js';

/** Feature bits (virtio 1.x, 5.1.3). */
export const NetFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  CTRL_GUEST_OFFLOADS: 2,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_RX_EXTRA: 20,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
} as const;

const Ctrl = { RX: 0, MAC: 1, MQ: 4, GUEST_OFFLOADS: 5 } as const;
const CtrlRx = { PROMISC: 0, ALLMULTI: 1, ALLUNI: 2, NOMULTI: 3, NOUNI: 4, NOBCAST: 5 } as const;
const CtrlMac = { TABLE_SET: 0, ADDR_SET: 1 } as const;
const CTRL_MQ_VQ_PAIRS_SET = 0;
const CTRL_GUEST_OFFLOADS_SET = 0;
const ACK_OK = 0;
const ACK_ERR = 1;

export const NET_QUEUE_SIZE = 256;
export const CTRL_QUEUE_SIZE = 64;
/** The largest packet a guest may hand over: a 64 KiB GSO frame, its Ethernet header and the vnet header. */
const MAX_TX_PACKET = VNET_HDR_LEN + ETH_HLEN + 0x10000;
/** Entries the MAC filter table holds; beyond it the device falls back to accepting all of that kind. */
const MAC_TABLE_ENTRIES = 64;
/**
 * The largest control command read from the guest, unless the card is given another
 * (`ctrl-max=`). Linux's biggest is a MAC table
 * set (8 bytes + 6 per address); 64 KiB holds over 10,000 addresses, far past the
 * point where the table falls back to "all", and keeps a guest from making the VMM
 * copy and parse megabytes per command.
 */
export const MAX_CTRL_COMMAND = 64 * 1024;

export const NET_DROPS = [
  'tx-runt',
  'tx-oversized',
  'tx-no-data',
  'tx-backend-error',
  'rx-filtered',
  'rx-buffer-too-small',
  'ctrl-malformed',
  'ctrl-oversized',
] as const;
export type NetDrop = (typeof NET_DROPS)[number];
const NET_COUNTERS = ['txPackets', 'txBytes', 'rxPackets', 'rxBytes', 'rxNoBuffers', 'ctrlCommands', 'activePairs'] as const;
/** Float64 slots the back-end's counters may take after the device's. */
const BACKEND_SLOTS = Math.max(TAP_SLOTS, RING_SLOTS);

/** The per-pair counters, shown only when there are several pairs. */
const pairCounters = (pairs: number): string[] => Array.from({ length: pairs }, (_, i) => [`pair${i}.tx`, `pair${i}.rx`]).flat();

/** Float64 slots a card with `pairs` queue pairs counts into. */
export const netCounterSlots = (pairs: number): number => NET_COUNTERS.length + 2 * pairs + NET_DROPS.length + BACKEND_SLOTS;

/** The card's counters laid over `storage` (netCounterSlots long, maybe shared with another thread). */
export function netCounters(pairs: number, storage: Float64Array<ArrayBufferLike> = new Float64Array(netCounterSlots(pairs))) {
  const names = [...NET_COUNTERS, ...pairCounters(pairs)];
  const counters = new Counters<string>(names, storage);
  const drops = new DropCounter(NET_DROPS, storage.subarray(names.length));
  const backend = storage.subarray(names.length + NET_DROPS.length);
  const stats = (): Record<string, number> => {
    const all = counters.record();
    if (pairs === 1) for (const n of pairCounters(1)) delete all[n];
    return { ...all, ...drops.stats() };
  };
  return { counters, drops, backend, stats };
}
export type NetCounters = ReturnType<typeof netCounters>;

/** The offloads a driver with `features` accepts in received packets. */
export function rxOffloads(features: bigint): RxOffloads {
  const has = (f: number) => (features & bit(f)) !== 0n;
  return { csum: has(NetFeature.GUEST_CSUM), tso4: has(NetFeature.GUEST_TSO4), tso6: has(NetFeature.GUEST_TSO6), ecn: has(NetFeature.GUEST_ECN) };
}

/** The card as plain data. */
export interface NetCard {
  mac: Uint8Array;
  pairs: number;
  maxCtrlCommand: number;
  /** The features the device offers (a driver's GUEST_OFFLOADS may ask for no more). */
  features: bigint;
  /** The configuration space, shared with the main thread: a MAC the driver sets lands there. */
  config: SharedArrayBuffer;
}

/** The card and its back-end as plain data, for its worker. */
export interface NetInit extends NetCard {
  backend: OpenTap | RingPlan;
  /** Only the control queue runs here: packets go between the tap and the guest elsewhere (vhost-net). */
  controlOnly?: boolean;
}

/** The worker's factory: the card's data plane with its back-end, from plain data. */
export function netWorkerDevice(init: unknown, env: WorkerEnv): WorkerDevice {
  const card = init as NetInit;
  const count = netCounters(card.pairs, env.counters);
  const backend = card.backend.kind === 'tap' ? new TapBackend(card.backend, count.backend, false) : new RingBackend(card.backend, count.backend);
  const plane = new NetDataPlane(backend, card, count, env.fail);
  if (!card.controlOnly) backend.attach(plane, env.poller);
  return plane;
}

export class NetDataPlane implements WorkerDevice, NetPort {
  private readonly mac: Uint8Array;
  private readonly config: Uint8Array;
  private readonly pairs: number;
  private active: (ActiveQueues & { stopped: boolean }) | undefined;
  private readonly signals: ((() => void) | undefined)[] = [];
  private activePairs = 1;
  private mergeable = false;
  /** Back-end queues held because their receive queue ran out of buffers. */
  private readonly starved = new Set<number>();
  private promisc = true;
  private allMulti = true;
  private allUni = false;
  private noMulti = false;
  private noUni = false;
  private noBroadcast = false;
  private unicastTable: Uint8Array[] = [];
  private multicastTable: Uint8Array[] = [];

  constructor(
    private readonly backend: NetBackend,
    private readonly card: NetCard,
    private readonly count: NetCounters,
    private readonly fail: (reason: string) => void,
  ) {
    this.mac = card.mac.slice(0, ETH_ALEN);
    this.config = new Uint8Array(card.config);
    this.pairs = card.pairs;
  }

  get drops(): DropCounter<NetDrop> {
    return this.count.drops;
  }

  private get ctrlQueue(): number {
    return 2 * this.pairs;
  }

  private has(features: bigint, f: number): boolean {
    return (features & bit(f)) !== 0n;
  }

  startQueue(ctx: DataPlaneContext): QueueDataPlane {
    const index = ctx.queue.index;
    if (!Number.isInteger(index) || index < 0 || index > this.ctrlQueue) throw new Error(`virtio-net has no queue ${index}`);
    const active = this.active ?? this.activate(ctx.features, ctx.memory);
    // Every running queue shares one mapping; the newest start's is always live.
    active.memory = ctx.memory;
    const queue = SplitQueue.fromState(index === this.ctrlQueue ? CTRL_QUEUE_SIZE : NET_QUEUE_SIZE, ctx.queue.state, ctx.memory);
    active.queues[index] = queue;
    this.signals[index] = ctx.signal;
    return {
      process: (budget) => this.notify(index, budget),
      stop: (): QueueState => {
        if (active.queues[index] === queue) active.queues[index] = undefined;
        return queue.state();
      },
    };
  }

  /** The first queue of an activation: the driver's features take effect, the filters start afresh. */
  private activate(features: bigint, memory: GuestMemory): ActiveQueues & { stopped: boolean } {
    const active = {
      memory,
      queues: [] as (SplitQueue | undefined)[],
      features,
      stopped: false,
      interrupt: { queue: (index: number) => this.signals[index]?.(), configChanged: () => {} },
      fail: (reason: string) => {
        if (active.stopped) return;
        active.stopped = true;
        this.fail(reason);
      },
    };
    this.active = active;
    this.mergeable = this.has(features, NetFeature.MRG_RXBUF);
    this.activePairs = 1;
    this.count.counters.set('activePairs', 1);
    this.resetFilters();
    this.applyGuestOffloads(features);
    return active;
  }

  private applyGuestOffloads(features: bigint): void {
    this.backend.setRxOffloads(rxOffloads(features));
  }

  /** Until the driver says otherwise, a device without CTRL_RX receives everything (virtio 1.x, 5.1.6.5.1). */
  private resetFilters(): void {
    this.promisc = true;
    this.allMulti = true;
    this.allUni = this.noMulti = this.noUni = this.noBroadcast = false;
    this.unicastTable = [];
    this.multicastTable = [];
  }

  reset(): void {
    if (this.active) this.active.stopped = true;
    this.active = undefined;
    this.starved.clear();
  }

  close(): void {
    this.reset();
    void this.backend.close();
  }

  /** Queue `index` has new chains (a kick, or the budget ran out last time); true when more may wait. */
  private notify(index: number, budget: number): boolean {
    if (!this.active || this.active.stopped) return false;
    if (index === this.ctrlQueue) return this.control(budget);
    if (index & 1) return this.transmit(index >> 1, budget);
    // A copy: resume() may refuse again and put the queue back, which a live Set iteration would visit forever.
    for (const q of [...this.starved]) {
      if (this.rxQueueFor(q) === index) {
        this.starved.delete(q);
        this.backend.resume(q);
      }
    }
    return false;
  }

  // -- transmit --------------------------------------------------------------

  private transmit(pair: number, budget: number): boolean {
    const active = this.active!;
    const index = 2 * pair + 1;
    return drainQueue(
      active,
      index,
      (chain) => {
        const len = totalLength(chain.readable);
        if (len < VNET_HDR_LEN + ETH_HLEN) this.drops.count('tx-runt');
        else if (len > MAX_TX_PACKET || (!this.backend.offloads && len > VNET_HDR_LEN + MAX_FRAME)) this.drops.count('tx-oversized');
        else {
          const packet = readStream(active.memory, chain.readable, 0, len);
          if (!packet) this.drops.count('tx-no-data');
          else {
            if (!this.mergeable) packet.fill(0, VNET_HDR_LEN - 2, VNET_HDR_LEN); // num_buffers is rx-only
            this.send(pair, packet);
          }
        }
        completeChain(active, index, chain.head, 0);
      },
      budget,
    );
  }

  /** A packet the back-end cannot take (it threw) is dropped and counted; its chain still goes back. */
  private send(pair: number, packet: Uint8Array): void {
    try {
      this.backend.send(pair, packet);
    } catch {
      this.drops.count('tx-backend-error');
      return;
    }
    const c = this.count.counters;
    c.add('txPackets');
    c.add('txBytes', packet.length - VNET_HDR_LEN);
    c.add(`pair${pair}.tx`);
  }

  // -- receive ---------------------------------------------------------------

  private rxQueueFor(backendQueue: number): number {
    return 2 * (backendQueue % this.activePairs);
  }

  receive(queue: number, packet: Uint8Array): boolean {
    const active = this.active;
    if (!active || active.stopped) return false;
    return guarded(active, 'receive', true, () => this.place(active, queue, packet));
  }

  private place(active: ActiveQueues, queue: number, packet: Uint8Array): boolean {
    if (packet.length < VNET_HDR_LEN + ETH_HLEN) return true;
    if (!this.accepts(packet.subarray(VNET_HDR_LEN))) {
      this.drops.count('rx-filtered');
      return true;
    }
    const index = this.rxQueueFor(queue);
    const placed = this.mergeable ? this.placeMergeable(active, index, packet) : this.placeOne(active, index, packet);
    const c = this.count.counters;
    if (placed === undefined) {
      c.add('rxNoBuffers');
      this.starved.add(queue);
      return false;
    }
    if (placed) {
      c.add('rxPackets');
      c.add('rxBytes', packet.length - VNET_HDR_LEN);
      c.add(`pair${index >> 1}.rx`);
    }
    return true;
  }

  /** One chain holds the whole packet; true: placed, false: dropped, undefined: no buffers. */
  private placeOne(active: ActiveQueues, index: number, packet: Uint8Array): boolean | undefined {
    let result: boolean | undefined;
    drainQueue(active, index, (chain) => {
      if (result !== undefined) return false;
      if (totalLength(chain.writable) < packet.length) {
        this.drops.count('rx-buffer-too-small');
        completeChain(active, index, chain.head, 0);
        result = false;
        return;
      }
      completeChain(active, index, chain.head, writeStream(active.memory, chain.writable, 0, packet));
      result = true;
    });
    return result;
  }

  /** MRG_RXBUF: the packet spreads over as many chains as it needs; num_buffers says how many. */
  private placeMergeable(active: ActiveQueues, index: number, packet: Uint8Array): boolean | undefined {
    const q = active.queues[index];
    if (!q) return undefined;
    const chains: { chain: DescriptorChain; len: number }[] = [];
    let room = 0;
    drainQueue(active, index, (chain) => {
      if (room >= packet.length) return false;
      const len = totalLength(chain.writable);
      chains.push({ chain, len });
      room += len;
    });
    if (active.stopped) return undefined;
    if (room < packet.length) {
      for (let i = 0; i < chains.length; i++) q.unpop(); // not enough yet: give them back for the next try
      return undefined;
    }
    const header = packet.slice(0, VNET_HDR_LEN);
    new DataView(header.buffer).setUint16(VNET_HDR_LEN - 2, chains.length, true);
    let at = 0;
    for (const { chain, len } of chains) {
      const end = Math.min(at + len, packet.length);
      let written = 0;
      if (at === 0) {
        written = writeStream(active.memory, chain.writable, 0, header);
        written += writeStream(active.memory, chain.writable, VNET_HDR_LEN, packet.subarray(VNET_HDR_LEN, end));
      } else written = writeStream(active.memory, chain.writable, 0, packet.subarray(at, end));
      q.pushUsed(active.memory, chain.head, written);
      at = end;
    }
    if (q.needsInterrupt(active.memory)) active.interrupt.queue(index);
    return true;
  }

  /** The receive filter the driver set through the control queue. */
  private accepts(frame: Uint8Array): boolean {
    if (this.promisc) return true;
    const dst = frame.subarray(0, ETH_ALEN);
    if (sameMac(dst, 0, BROADCAST_MAC)) return !this.noBroadcast;
    if (dst[0]! & 1) {
      if (this.noMulti) return false;
      return this.allMulti || this.multicastTable.some((m) => sameMac(dst, 0, m));
    }
    if (this.noUni) return false;
    return this.allUni || sameMac(dst, 0, this.mac) || this.unicastTable.some((m) => sameMac(dst, 0, m));
  }

  // -- control queue ---------------------------------------------------------

  private control(budget: number): boolean {
    const active = this.active!;
    const index = this.ctrlQueue;
    return drainQueue(
      active,
      index,
      (chain) => {
        this.count.counters.add('ctrlCommands');
        const len = totalLength(chain.readable);
        const command = len >= 2 && len <= this.card.maxCtrlCommand ? readStream(active.memory, chain.readable, 0, len) : undefined;
        const status = command ? this.command(command[0]!, command[1]!, command.subarray(2)) : ACK_ERR;
        if (!command) this.drops.count(len > this.card.maxCtrlCommand ? 'ctrl-oversized' : 'ctrl-malformed');
        const written = writeStream(active.memory, chain.writable, 0, Uint8Array.of(status));
        completeChain(active, index, chain.head, written);
      },
      budget,
    );
  }

  private command(cls: number, cmd: number, data: Uint8Array): number {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (cls === Ctrl.RX && data.length >= 1) {
      const on = data[0] !== 0;
      switch (cmd) {
        case CtrlRx.PROMISC:
          this.promisc = on;
          return ACK_OK;
        case CtrlRx.ALLMULTI:
          this.allMulti = on;
          return ACK_OK;
        case CtrlRx.ALLUNI:
          this.allUni = on;
          return ACK_OK;
        case CtrlRx.NOMULTI:
          this.noMulti = on;
          return ACK_OK;
        case CtrlRx.NOUNI:
          this.noUni = on;
          return ACK_OK;
        case CtrlRx.NOBCAST:
          this.noBroadcast = on;
          return ACK_OK;
      }
    }
    if (cls === Ctrl.MAC && cmd === CtrlMac.ADDR_SET && data.length === ETH_ALEN) {
      this.mac.set(data);
      this.config.set(data, 0);
      return ACK_OK;
    }
    if (cls === Ctrl.MAC && cmd === CtrlMac.TABLE_SET) {
      const tables = parseMacTables(data);
      if (!tables) {
        this.drops.count('ctrl-malformed');
        return ACK_ERR;
      }
      // A table too large to keep means "all of that kind", as with a hardware filter that overflows.
      const [unicast, multicast] = tables;
      this.unicastTable = unicast ?? [];
      this.multicastTable = multicast ?? [];
      if (!unicast) this.allUni = true;
      if (!multicast) this.allMulti = true;
      return ACK_OK;
    }
    if (cls === Ctrl.MQ && cmd === CTRL_MQ_VQ_PAIRS_SET && data.length >= 2) {
      const pairs = dv.getUint16(0, true);
      if (pairs < 1 || pairs > this.pairs) return ACK_ERR;
      this.activePairs = pairs;
      this.count.counters.set('activePairs', pairs);
      return ACK_OK;
    }
    if (cls === Ctrl.GUEST_OFFLOADS && cmd === CTRL_GUEST_OFFLOADS_SET && data.length >= 8 && this.backend.offloads) {
      const wanted = dv.getBigUint64(0, true);
      if (wanted & ~this.card.features) return ACK_ERR;
      this.applyGuestOffloads(wanted);
      return ACK_OK;
    }
    return ACK_ERR;
  }

  /** The card's counters (for tests that run the data plane on their own thread). */
  stats(): Record<string, number> {
    return this.count.stats();
  }
}

/**
 * Two tables of `u32 entries` then entries × 6-byte MACs: unicast, then multicast.
 * A table with more than MAC_TABLE_ENTRIES comes back undefined ("all"), uncopied.
 */
function parseMacTables(data: Uint8Array): [Uint8Array[] | undefined, Uint8Array[] | undefined] | undefined {
  const tables: (Uint8Array[] | undefined)[] = [];
  let at = 0;
  for (let t = 0; t < 2; t++) {
    if (at + 4 > data.length) return undefined;
    const entries = new DataView(data.buffer, data.byteOffset + at, 4).getUint32(0, true);
    at += 4;
    if (entries > (data.length - at) / ETH_ALEN) return undefined;
    const start = at;
    at += entries * ETH_ALEN;
    tables.push(
      entries > MAC_TABLE_ENTRIES ? undefined : Array.from({ length: entries }, (_, i) => data.slice(start + i * ETH_ALEN, start + (i + 1) * ETH_ALEN)),
    );
  }
  return at === data.length ? [tables[0], tables[1]] : undefined;
}
