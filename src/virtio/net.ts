// virtio-net (virtio 1.x, "Network Device"): receive and transmit queue pairs, a
// control queue, MAC and link status in configuration space. Packets move between
// the queues and a NetBackend with their virtio_net_hdr as is, so checksum and
// segmentation offloads pass straight through to a back-end that honours them
// (tap); with one that does not, they are simply not offered.
//
// Queue pairs are independent: pair i's receive queue takes back-end queue i, its
// transmit queue sends on back-end queue i, and a full receive queue holds back
// only its own back-end queue.
import type { NetBackend, NetPort } from '../net/backend.js';
import { VNET_HDR_LEN } from '../net/backend.js';
import { DropCounter, prefixed } from '../net/counters.js';
import { BROADCAST_MAC, ETH_ALEN, ETH_HLEN, MAX_FRAME, sameMac } from '../net/packet.js';
import { readStream, totalLength, writeStream, type DescriptorChain } from './chain.js';
import { bit, readConfigBytes, VirtioId } from './device.js';
import { completeChain, drainQueue, guarded, type ActiveQueues, type MainThreadDevice } from './in-process.js';

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

const LINK_UP = 1;
/** mac, status, max_virtqueue_pairs, mtu. */
const CONFIG_SIZE = 12;
const QUEUE_SIZE = 256;
const CTRL_QUEUE_SIZE = 64;
/** The largest packet a guest may hand over: a 64 KiB GSO frame, its Ethernet header and the vnet header. */
const MAX_TX_PACKET = VNET_HDR_LEN + ETH_HLEN + 0x10000;
const MAX_PAIRS = 16;
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

export type NetDrop =
  'tx-runt' | 'tx-oversized' | 'tx-no-data' | 'tx-backend-error' | 'rx-filtered' | 'rx-buffer-too-small' | 'ctrl-malformed' | 'ctrl-oversized';

export interface VirtioNetOptions {
  mac: Uint8Array;
  /** Queue pairs; more than one offers MQ. */
  pairs: number;
  /** Bytes; default MAX_CTRL_COMMAND. */
  maxCtrlCommand?: number;
}

export class VirtioNet implements MainThreadDevice, NetPort {
  readonly type = VirtioId.NET;
  readonly features: bigint;
  readonly queueSizes: number[];
  readonly configSize = CONFIG_SIZE;
  private readonly config = new Uint8Array(CONFIG_SIZE);
  private readonly mac: Uint8Array;
  private readonly pairs: number;
  private readonly maxCtrlCommand: number;
  private active: ActiveQueues | undefined;
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
  readonly counters = { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, rxNoBuffers: 0, ctrlCommands: 0 };
  readonly drops = new DropCounter<NetDrop>();
  /** Per queue pair: packets each way, so multi-queue use is visible. */
  readonly perPair: { tx: number; rx: number }[];

  constructor(
    private readonly backend: NetBackend,
    options: VirtioNetOptions,
    readonly name = 'virtio-net',
  ) {
    if (options.pairs < 1 || options.pairs > MAX_PAIRS) throw new Error(`virtio-net: queues must be 1..${MAX_PAIRS}`);
    this.mac = options.mac.slice(0, ETH_ALEN);
    this.pairs = options.pairs;
    this.maxCtrlCommand = options.maxCtrlCommand ?? MAX_CTRL_COMMAND;
    this.perPair = Array.from({ length: this.pairs }, () => ({ tx: 0, rx: 0 }));
    let features: number[] = [
      NetFeature.MAC,
      NetFeature.STATUS,
      NetFeature.MRG_RXBUF,
      NetFeature.CTRL_VQ,
      NetFeature.CTRL_RX,
      NetFeature.CTRL_RX_EXTRA,
      NetFeature.CTRL_MAC_ADDR,
    ];
    if (this.pairs > 1) features.push(NetFeature.MQ);
    if (backend.offloads) {
      features = features.concat([
        NetFeature.CSUM,
        NetFeature.GUEST_CSUM,
        NetFeature.CTRL_GUEST_OFFLOADS,
        NetFeature.GUEST_TSO4,
        NetFeature.GUEST_TSO6,
        NetFeature.GUEST_ECN,
        NetFeature.HOST_TSO4,
        NetFeature.HOST_TSO6,
        NetFeature.HOST_ECN,
      ]);
    }
    this.features = features.reduce((acc, f) => acc | bit(f), 0n);
    // rx0, tx0, rx1, tx1, ..., then the control queue.
    this.queueSizes = [...Array.from({ length: 2 * this.pairs }, () => QUEUE_SIZE), CTRL_QUEUE_SIZE];
    this.config.set(this.mac, 0);
    new DataView(this.config.buffer).setUint16(6, LINK_UP, true);
    new DataView(this.config.buffer).setUint16(8, this.pairs, true);
  }

  private get ctrlQueue(): number {
    return 2 * this.pairs;
  }

  private has(features: bigint, f: number): boolean {
    return (features & bit(f)) !== 0n;
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.config, offset, data);
  }

  /** The MAC is writable through config space only for legacy drivers; modern ones use the control queue. */
  writeConfig(): void {}

  activate(active: ActiveQueues): void {
    this.active = active;
    const f = active.features;
    this.mergeable = this.has(f, NetFeature.MRG_RXBUF);
    this.activePairs = 1;
    this.resetFilters();
    this.applyGuestOffloads(f);
    for (let q = 0; q < this.backend.queues; q++) this.backend.resume(q);
  }

  private applyGuestOffloads(features: bigint): void {
    this.backend.setRxOffloads({
      csum: this.has(features, NetFeature.GUEST_CSUM),
      tso4: this.has(features, NetFeature.GUEST_TSO4),
      tso6: this.has(features, NetFeature.GUEST_TSO6),
      ecn: this.has(features, NetFeature.GUEST_ECN),
    });
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
    this.active = undefined;
    this.starved.clear();
  }

  queueNotify(index: number): void {
    if (!this.active) return;
    if (index === this.ctrlQueue) return this.control();
    const pair = index >> 1;
    if (index & 1) return this.transmit(pair);
    // A copy: resume() may refuse again and put the queue back, which a live Set iteration would visit forever.
    for (const q of [...this.starved]) {
      if (this.rxQueueFor(q) === index) {
        this.starved.delete(q);
        this.backend.resume(q);
      }
    }
  }

  // -- transmit --------------------------------------------------------------

  private transmit(pair: number): void {
    const active = this.active!;
    const index = 2 * pair + 1;
    drainQueue(active, index, (chain) => {
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
    });
  }

  /** A packet the back-end cannot take (it threw) is dropped and counted; its chain still goes back. */
  private send(pair: number, packet: Uint8Array): void {
    try {
      this.backend.send(pair, packet);
    } catch {
      this.drops.count('tx-backend-error');
      return;
    }
    this.counters.txPackets++;
    this.counters.txBytes += packet.length - VNET_HDR_LEN;
    this.perPair[pair]!.tx++;
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
    if (placed === undefined) {
      this.counters.rxNoBuffers++;
      this.starved.add(queue);
      return false;
    }
    if (placed) {
      this.counters.rxPackets++;
      this.counters.rxBytes += packet.length - VNET_HDR_LEN;
      this.perPair[index >> 1]!.rx++;
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

  private control(): void {
    const active = this.active!;
    const index = this.ctrlQueue;
    drainQueue(active, index, (chain) => {
      this.counters.ctrlCommands++;
      const len = totalLength(chain.readable);
      const command = len >= 2 && len <= this.maxCtrlCommand ? readStream(active.memory, chain.readable, 0, len) : undefined;
      const status = command ? this.command(command[0]!, command[1]!, command.subarray(2)) : ACK_ERR;
      if (!command) this.drops.count(len > this.maxCtrlCommand ? 'ctrl-oversized' : 'ctrl-malformed');
      const written = writeStream(active.memory, chain.writable, 0, Uint8Array.of(status));
      completeChain(active, index, chain.head, written);
    });
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
      return ACK_OK;
    }
    if (cls === Ctrl.GUEST_OFFLOADS && cmd === CTRL_GUEST_OFFLOADS_SET && data.length >= 8 && this.backend.offloads) {
      const wanted = dv.getBigUint64(0, true);
      if (wanted & ~this.features) return ACK_ERR;
      this.applyGuestOffloads(wanted);
      return ACK_OK;
    }
    return ACK_ERR;
  }

  stats(): Record<string, number> {
    const pairs =
      this.pairs > 1
        ? Object.fromEntries(
            this.perPair.flatMap((p, i) => [
              [`pair${i}.tx`, p.tx],
              [`pair${i}.rx`, p.rx],
            ]),
          )
        : {};
    return { ...this.counters, activePairs: this.activePairs, ...pairs, ...this.drops.stats(), ...prefixed('backend.', this.backend.stats()) };
  }

  async close(): Promise<void> {
    this.active = undefined;
    await this.backend.close();
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
