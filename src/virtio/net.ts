// virtio-net (virtio 1.x, "Network Device") as the transport sees it: features,
// configuration space (MAC, link status, queue pairs) and the device's worker,
// which runs the data plane (net-queues.ts) and the back-end. A tap goes to the
// worker whole (its fds); a back-end that must stay on the main thread (user-mode
// networking) is reached through a RingBridge. The main thread never touches a packet.
import type { FdPoller, NetBackend } from '../net/backend.js';
import { prefixed } from '../net/counters.js';
import { ETH_ALEN } from '../net/packet.js';
import { RingBridge, ringStats } from '../net/ring-backend.js';
import { tapCounters } from '../net/tap.js';
import { bit, readConfigBytes, VirtioId, type VirtioDevice } from './device.js';
import { CTRL_QUEUE_SIZE, MAX_CTRL_COMMAND, NET_QUEUE_SIZE, netCounters, netCounterSlots, NetFeature, type NetCounters, type NetInit } from './net-queues.js';
import { WORKER_COUNTERS } from './worker/data-plane.js';
import { WorkerBackedDevice } from './worker/worker-backed-device.js';

export { MAX_CTRL_COMMAND, NetFeature } from './net-queues.js';

const LINK_UP = 1;
/** mac, status, max_virtqueue_pairs, mtu. */
const CONFIG_SIZE = 12;
const MAX_PAIRS = 16;

export interface VirtioNetOptions {
  mac: Uint8Array;
  /** Queue pairs; more than one offers MQ. */
  pairs: number;
  /** Bytes; default MAX_CTRL_COMMAND. */
  maxCtrlCommand?: number;
}

function checkPairs(pairs: number): void {
  if (!Number.isInteger(pairs) || pairs < 1 || pairs > MAX_PAIRS) throw new Error(`virtio-net: queues must be 1..${MAX_PAIRS}`);
}

/** Checksum, TSO and ECN offloads, both ways: what the data plane and its back-end must honour. */
export const OFFLOAD_FEATURES: readonly number[] = [
  NetFeature.CSUM,
  NetFeature.GUEST_CSUM,
  NetFeature.GUEST_TSO4,
  NetFeature.GUEST_TSO6,
  NetFeature.GUEST_ECN,
  NetFeature.HOST_TSO4,
  NetFeature.HOST_TSO6,
  NetFeature.HOST_ECN,
];

/** The features a card offers: offloads only over a back-end that honours them. */
export function netFeatures(pairs: number, offloads: boolean): bigint {
  let features: number[] = [
    NetFeature.MAC,
    NetFeature.STATUS,
    NetFeature.MRG_RXBUF,
    NetFeature.CTRL_VQ,
    NetFeature.CTRL_RX,
    NetFeature.CTRL_RX_EXTRA,
    NetFeature.CTRL_MAC_ADDR,
  ];
  if (pairs > 1) features.push(NetFeature.MQ);
  if (offloads) features = features.concat([...OFFLOAD_FEATURES, NetFeature.CTRL_GUEST_OFFLOADS]);
  return features.reduce((acc, f) => acc | bit(f), 0n);
}

/** rx0, tx0, rx1, tx1, ..., then the control queue. */
export const netQueueSizes = (pairs: number): number[] => [...Array.from({ length: 2 * pairs }, () => NET_QUEUE_SIZE), CTRL_QUEUE_SIZE];

/** Configuration space, shared with the data plane (which writes a MAC the driver sets): mac, status, max_virtqueue_pairs. */
export function netConfigSpace(mac: Uint8Array, pairs: number): SharedArrayBuffer {
  const config = new SharedArrayBuffer(CONFIG_SIZE);
  new Uint8Array(config).set(mac.subarray(0, ETH_ALEN), 0);
  new DataView(config).setUint16(6, LINK_UP, true);
  new DataView(config).setUint16(8, pairs, true);
  return config;
}

export class VirtioNet extends WorkerBackedDevice implements VirtioDevice {
  readonly type = VirtioId.NET;
  readonly features: bigint;
  readonly queueSizes: number[];
  readonly configSize = CONFIG_SIZE;
  private readonly config: Uint8Array;
  private readonly pairs: number;
  private readonly bridge: RingBridge | undefined;

  /** `poller` is the main thread's loop, for a back-end that stays there. */
  constructor(
    private readonly backend: NetBackend,
    options: VirtioNetOptions,
    readonly name: string,
    poller: FdPoller,
  ) {
    const pairs = options.pairs;
    checkPairs(pairs);
    const features = netFeatures(pairs, backend.offloads);
    const mac = options.mac.slice(0, ETH_ALEN);
    const config = netConfigSpace(mac, pairs);
    const tap = backend.handOff?.();
    const bridge = tap ? undefined : new RingBridge(backend, poller);
    const init: NetInit = { mac, pairs, maxCtrlCommand: options.maxCtrlCommand ?? MAX_CTRL_COMMAND, features, config, backend: tap ?? bridge!.plan };
    super('net', init, netCounterSlots(pairs));
    this.pairs = pairs;
    this.features = features;
    this.queueSizes = netQueueSizes(pairs);
    this.config = new Uint8Array(config);
    this.bridge = bridge;
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.config, offset, data);
  }

  /** The MAC is writable through config space only for legacy drivers; modern ones use the control queue. */
  writeConfig(): void {}

  /** The card's counters, as its worker keeps them, and the back-end's (a main-thread one's own, with the ring's). */
  stats(): Record<string, number> {
    const sum = this.workers.counters();
    const worker = Object.fromEntries(WORKER_COUNTERS.map((name, i) => [name, sum[i]!]));
    const count: NetCounters = netCounters(this.pairs, sum.subarray(WORKER_COUNTERS.length));
    const backend = this.bridge ? { ...this.backend.stats(), ...ringStats(count.backend) } : tapCounters(count.backend).stats();
    return { ...worker, ...count.stats(), ...prefixed('backend.', backend) };
  }

  /** The worker stops its queues and lets the back-end go; then the back-end closes. */
  async close(): Promise<void> {
    await this.closeWorker();
    this.bridge?.close();
    await this.backend.close();
  }
}
