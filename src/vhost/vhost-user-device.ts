// A virtio device whose data plane is a vhost-user back-end in another process
// (`--device vhost-user-blk-pci,chardev=ID`, `--netdev vhost-user,...`): tsvisor
// keeps the PCI transport, feature negotiation and interrupt routing; the rings,
// guest memory (the memfd, passed by SCM_RIGHTS) and each queue's kick and call
// eventfds go to the back-end, which then serves the guest's requests and
// interrupts it without tsvisor. A profile says what differs by device type: a
// disk's configuration space is the back-end's (GET_CONFIG); a network card's is
// tsvisor's (its MAC, link up), as QEMU builds it.
//
// A back-end that hangs up or stops answering fails the device (DEVICE_NEEDS_RESET)
// with one line; the VM goes on. With `reconnect=SECONDS` tsvisor instead keeps
// trying to reach it again and, once back, hands it the memory table and the
// running rings again, each restarted at the guest's used index (requests the old
// back-end took but never completed are taken again).
import {
  bit,
  describeError,
  readConfigBytes,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VirtioId,
  type DeviceHost,
  type QueueResources,
  type VirtioDevice,
} from '../virtio/device.js';
import type { GuestMemory, MemoryTable } from '../memory/guest-memory.js';
import type { QueueState } from '../virtio/queue.js';
import { startVring, stopVring, vhostRegions } from './rings.js';
import { VhostUserClient } from './user/frontend.js';
import { BLOCK_QUEUE_SIZE } from '../virtio/block-queue.js';
import { NET_QUEUE_SIZE, NetFeature } from '../virtio/net-queues.js';
import { netConfigSpace, OFFLOAD_FEATURES } from '../virtio/net.js';

export class VhostUserError extends Error {
  override name = 'VhostUserError';
}

/** Block feature bits tsvisor passes from the back-end to the driver (virtio 1.2, 5.2.3). */
const BLOCK_FEATURES = [1, 2, 4, 5, 6, 9, 10, 11, 12, 13, 14].reduce((a, f) => a | bit(f), 0n);
const BLOCK_MQ = bit(12);
const BLOCK_CONFIG_SIZE = 60;
const BLOCK_NUM_QUEUES_OFFSET = 34;
/** Net feature bits the back-end's data plane decides (offloads, mergeable buffers). */
const NET_DATA_FEATURES = [...OFFLOAD_FEATURES, NetFeature.MRG_RXBUF].reduce((a, f) => a | bit(f), 0n);
/** The transport offers these to every driver, so the back-end must handle them. */
const TRANSPORT_FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_INDIRECT_DESC) | bit(VIRTIO_F_RING_EVENT_IDX);

interface Common {
  /** The back-end's socket. */
  path: string;
  /** Seconds between attempts to reach a back-end that went away; absent: it failing fails the device. */
  reconnect?: number;
}

export interface VhostUserBlkSpec extends Common {
  kind: 'vhost-user-blk';
  /** Request queues wanted (at most what the back-end has). */
  queues: number;
}

/** One queue pair, no control queue: the back-end serves receive and transmit only. */
export interface VhostUserNetSpec extends Common {
  kind: 'vhost-user-net';
  mac: Uint8Array;
}

export type VhostUserSpec = VhostUserBlkSpec | VhostUserNetSpec;

/** What the driver sees of a device whose back-end offers `client`'s features. */
interface Profile {
  type: number;
  features: bigint;
  config: Uint8Array;
  queueSizes: number[];
}

function profile(spec: VhostUserSpec, client: VhostUserClient): Profile {
  if (spec.kind === 'vhost-user-net')
    return {
      type: VirtioId.NET,
      features: (client.features & NET_DATA_FEATURES) | bit(NetFeature.MAC) | bit(NetFeature.STATUS),
      config: new Uint8Array(netConfigSpace(spec.mac, 1)).slice(),
      queueSizes: [NET_QUEUE_SIZE, NET_QUEUE_SIZE],
    };
  const queues = Math.min(spec.queues, client.queueNum());
  if (queues < 1) throw new VhostUserError(`${spec.path}: the back-end has no queues`);
  const config = client.getConfig(0, BLOCK_CONFIG_SIZE);
  new DataView(config.buffer, config.byteOffset).setUint16(BLOCK_NUM_QUEUES_OFFSET, queues, true);
  return {
    type: VirtioId.BLOCK,
    features: client.features & BLOCK_FEATURES & (queues > 1 ? ~0n : ~BLOCK_MQ),
    config,
    queueSizes: Array.from({ length: queues }, () => BLOCK_QUEUE_SIZE),
  };
}

export interface DeviceEnv {
  memory: GuestMemory;
  /** Calls `onReadable` on the main thread while `fd` is readable; returns the undo. */
  watch(fd: number, onReadable: () => void): () => void;
  log(line: string): void;
}

export class VhostUserDevice implements VirtioDevice {
  readonly type: number;
  readonly features: bigint;
  readonly queueSizes: readonly number[];
  readonly configSize: number;
  private readonly config: Uint8Array;
  /** The back-end's features the driver may use: a back-end that comes back must offer them again. */
  private readonly needed: bigint;
  private client: VhostUserClient | undefined;
  private unwatch: (() => void) | undefined;
  private activation: { features: bigint; host: DeviceHost } | undefined;
  /** Started queues, as started (a reconnect hands them over again). */
  private readonly running = new Map<number, QueueResources>();
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  readonly counters = { disconnects: 0, reconnects: 0 };
  /** The back-end's socket. */
  readonly path: string;

  constructor(
    private readonly spec: VhostUserSpec,
    readonly name: string,
    private readonly env: DeviceEnv,
  ) {
    this.path = spec.path;
    const client = connect(spec.path);
    try {
      const missing = TRANSPORT_FEATURES & ~client.features;
      if (missing) throw new VhostUserError(`${spec.path}: the back-end lacks virtio features 0x${missing.toString(16)} (VERSION_1, INDIRECT_DESC, EVENT_IDX)`);
      const p = profile(spec, client);
      this.type = p.type;
      this.features = p.features;
      this.config = p.config;
      this.configSize = p.config.length;
      this.queueSizes = p.queueSizes;
      this.needed = client.features & p.features;
    } catch (e) {
      client.close();
      throw e instanceof VhostUserError ? e : new VhostUserError(`${spec.path}: ${describeError(e)}`);
    }
    this.attach(client);
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.config, offset, data);
  }

  /** What a driver may write (a disk's writeback mode) is the back-end's, which is not told: it keeps its own. */
  writeConfig(): void {}

  activate(features: bigint, _memory: MemoryTable, host: DeviceHost): void {
    this.activation = { features, host };
    this.talk('activate', (c) => this.handOver(c, features));
  }

  startQueue(q: QueueResources): void {
    this.running.set(q.index, q);
    this.talk(`starting queue ${q.index}`, (c) => this.startRing(c, q));
  }

  /** Says `fn` to the back-end when there is one; what fails there is a lost back-end. */
  private talk(what: string, fn: (client: VhostUserClient) => void): void {
    if (!this.client) return;
    try {
      fn(this.client);
    } catch (e) {
      this.lost(`${what}: ${describeError(e)}`);
    }
  }

  async stopQueue(index: number): Promise<QueueState | undefined> {
    const q = this.running.get(index);
    if (!q) return undefined;
    this.running.delete(index);
    let state: QueueState | undefined;
    this.talk(`stopping queue ${index}`, (c) => (state = stopVring(c, index, q.state, this.env.memory)));
    return state ?? this.resumeState(q.state);
  }

  reset(): void {
    this.activation = undefined;
  }

  stats(): Record<string, number> {
    return { queues: this.queueSizes.length, connected: this.client ? 1 : 0, ...this.counters };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    for (const index of [...this.running.keys()]) await this.stopQueue(index);
    this.detach();
  }

  private attach(client: VhostUserClient): void {
    this.client = client;
    this.unwatch = this.env.watch(client.fd, () => {
      if (client.broken()) this.lost('the back-end hung up');
    });
  }

  private detach(): void {
    this.unwatch?.();
    this.unwatch = undefined;
    this.client?.close();
    this.client = undefined;
  }

  private handOver(client: VhostUserClient, features: bigint): void {
    client.setFeatures(features);
    client.setMemTable(vhostRegions(this.env.memory));
  }

  private startRing(client: VhostUserClient, q: QueueResources): void {
    startVring(client, q.index, q, this.env.memory);
    client.setVringEnable(q.index, true);
  }

  /** Where a ring starts again when the back-end that had it is gone: after the last request it completed. */
  private resumeState(s: QueueState): QueueState {
    const used = this.env.memory.readU16(s.usedRing + 2);
    return { ...s, nextAvail: used, nextUsed: used };
  }

  /** The back-end is gone: fail the device, or keep trying to reach it again. */
  private lost(why: string): void {
    if (!this.client) return;
    this.detach();
    this.counters.disconnects++;
    const reconnect = this.spec.reconnect;
    if (reconnect === undefined) {
      this.env.log(`${this.name}: vhost-user back-end ${this.spec.path}: ${why}`);
      this.activation?.host.fail(`vhost-user back-end: ${why}`);
      return;
    }
    this.env.log(`${this.name}: vhost-user back-end ${this.spec.path}: ${why}; trying again every ${reconnect} s`);
    for (const [index, q] of this.running) this.running.set(index, { ...q, state: this.resumeState(q.state) });
    this.scheduleReconnect(reconnect);
  }

  private scheduleReconnect(seconds: number): void {
    if (this.closed) return;
    this.retry = setTimeout(() => {
      let client: VhostUserClient;
      try {
        client = VhostUserClient.connect(this.spec.path);
      } catch {
        return this.scheduleReconnect(seconds);
      }
      try {
        if ((client.features & this.needed) !== this.needed) throw new Error('it offers fewer features than before');
        if (this.activation) this.handOver(client, this.activation.features);
        for (const q of this.running.values()) this.startRing(client, q);
      } catch (e) {
        client.close();
        this.env.log(`${this.name}: vhost-user back-end ${this.spec.path} is back but: ${describeError(e)}`);
        return this.scheduleReconnect(seconds);
      }
      this.counters.reconnects++;
      this.env.log(`${this.name}: vhost-user back-end ${this.spec.path} reconnected`);
      this.attach(client);
    }, seconds * 1000);
  }
}

function connect(path: string): VhostUserClient {
  try {
    return VhostUserClient.connect(path);
  } catch (e) {
    throw new VhostUserError(`vhost-user back-end ${path}: ${describeError(e)}`);
  }
}
