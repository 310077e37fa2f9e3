// virtio-net with its data path in the host kernel (vhost-net, `--netdev
// tap,...,vhost=on`): the card's registers, features and MSI-X stay in the
// transport; each queue pair's receive and transmit rings go to one
// /dev/vhost-net instance, which moves packets between them and the pair's tap
// fd by itself, woken by the queue's kick eventfd (KVM's ioeventfd) and
// interrupting through its call eventfd (KVM's irqfd, or the transport's watch
// while the vector is masked). The control queue stays with tsvisor, in the card's
// device worker (net-queues.ts, control only): vhost-net has no control path.
// Receive filters the driver sets are not applied (the kernel delivers all the
// tap's packets), as with QEMU's vhost-net.
import fs from 'node:fs';
import { closeFd, O_RDWR, openFile, SysError, errnoName } from '../host/libc.js';
import type { GuestMemory, MemoryTable } from '../memory/guest-memory.js';
import { prefixed } from '../net/counters.js';
import { ETH_ALEN } from '../net/packet.js';
import type { TapBackend } from '../net/tap.js';
import {
  bit,
  readConfigBytes,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VirtioId,
  type DeviceHost,
  type QueueResources,
  type VirtioDevice,
} from '../virtio/device.js';
import { MAX_CTRL_COMMAND, netCounters, netCounterSlots, NetFeature, rxOffloads, type NetInit } from '../virtio/net-queues.js';
import { netConfigSpace, netFeatures, netQueueSizes, type VirtioNetOptions } from '../virtio/net.js';
import type { QueueState } from '../virtio/queue.js';
import { WORKER_COUNTERS } from '../virtio/worker/data-plane.js';
import { WorkerBackedDevice } from '../virtio/worker/worker-backed-device.js';
import { VhostFd } from './kernel.js';
import { startVring, stopVring, vhostRegions } from './rings.js';

export const VHOST_NET = '/dev/vhost-net';
/** Feature bits vhost-net must offer for the card to offer them (QEMU's kernel_feature_bits, the ones tsvisor offers). */
const KERNEL_FEATURES = [VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1, BigInt(NetFeature.MRG_RXBUF)].map(bit);
const ALL_KERNEL_FEATURES = KERNEL_FEATURES.reduce((a, b) => a | b, 0n);

export class VhostError extends Error {
  override name = 'VhostError';
}

/** Why /dev/vhost-net could not be had, said for a user. */
function explain(e: unknown, device: string): VhostError {
  const why = e instanceof SysError ? errnoName(e.errno) : '';
  if (why === 'ENOENT') return new VhostError(`vhost=on: ${device} is missing (load the vhost_net module: modprobe vhost_net)`);
  if (why === 'EACCES' || why === 'EPERM') return new VhostError(`vhost=on: no permission to open ${device} (run as root, or give your user access to it)`);
  return new VhostError(`vhost=on: ${device}: ${(e as Error).message}`);
}

export interface VhostNetOptions extends VirtioNetOptions {
  /** The vhost-net device (VHOST_NET unless given). */
  device?: string;
}

export class VhostNet extends WorkerBackedDevice implements VirtioDevice {
  readonly type = VirtioId.NET;
  readonly features: bigint;
  readonly queueSizes: readonly number[];
  readonly configSize: number;
  private readonly config: Uint8Array;
  private readonly pairs: number;
  private readonly vhost: VhostFd[] = [];
  private readonly tapFds: number[];
  /** Per queue: what it was started from, for the state a stop gives back. */
  private readonly started: (QueueState | undefined)[] = [];
  private readonly statsDir: string;
  /** What vhost-net offers: it is told of no other bit of the driver's. */
  private readonly kernelFeatures: bigint;

  constructor(
    private readonly tap: TapBackend,
    options: VhostNetOptions,
    readonly name: string,
    private readonly memory: GuestMemory,
  ) {
    const pairs = options.pairs;
    const device = options.device ?? VHOST_NET;
    const vhost: VhostFd[] = [];
    let kernelFeatures = ~0n;
    try {
      for (let p = 0; p < pairs; p++) {
        const v = new VhostFd(openFile(device, O_RDWR));
        vhost.push(v);
        v.setOwner();
        kernelFeatures &= v.features();
      }
    } catch (e) {
      for (const v of vhost) closeFd(v.fd);
      throw explain(e, device);
    }
    if (!(kernelFeatures & bit(VIRTIO_F_VERSION_1))) {
      for (const v of vhost) closeFd(v.fd);
      throw new VhostError("vhost=on: this kernel's vhost-net does not offer VIRTIO_F_VERSION_1");
    }
    // What the kernel lacks of the bits it must handle is not offered.
    const features = netFeatures(pairs, true) & ~(ALL_KERNEL_FEATURES & ~kernelFeatures);
    const mac = options.mac.slice(0, ETH_ALEN);
    const config = netConfigSpace(mac, pairs);
    const open = tap.handOff();
    const init: NetInit = { mac, pairs, maxCtrlCommand: options.maxCtrlCommand ?? MAX_CTRL_COMMAND, features, config, backend: open, controlOnly: true };
    super('net', init, netCounterSlots(pairs));
    this.pairs = pairs;
    this.vhost = vhost;
    this.kernelFeatures = kernelFeatures;
    this.tapFds = open.fds;
    this.features = features;
    this.queueSizes = netQueueSizes(pairs);
    this.config = new Uint8Array(config);
    this.configSize = this.config.length;
    this.statsDir = `/sys/class/net/${tap.ifname}/statistics`;
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.config, offset, data);
  }

  writeConfig(): void {}

  private get ctrlQueue(): number {
    return 2 * this.pairs;
  }

  override activate(features: bigint, memory: MemoryTable, host: DeviceHost): void {
    super.activate(features, memory, host);
    this.tap.setRxOffloads(rxOffloads(features));
    const regions = vhostRegions(this.memory);
    for (const v of this.vhost) {
      v.setFeatures(features & this.kernelFeatures);
      v.setMemTable(regions);
    }
  }

  override startQueue(q: QueueResources): void {
    if (q.index === this.ctrlQueue) return super.startQueue(q);
    const v = this.vhost[q.index >> 1];
    if (!v) throw new Error(`${this.name} has no queue ${q.index}`);
    const ring = q.index & 1;
    startVring(v, ring, q, this.memory);
    v.setNetBackend(ring, this.tapFds[q.index >> 1]!);
    this.started[q.index] = q.state;
  }

  override async stopQueue(index: number): Promise<QueueState | undefined> {
    if (index === this.ctrlQueue) return super.stopQueue(index);
    const s = this.started[index];
    const v = this.vhost[index >> 1];
    if (!s || !v) return undefined;
    this.started[index] = undefined;
    const ring = index & 1;
    v.setNetBackend(ring, -1);
    return stopVring(v, ring, s, this.memory);
  }

  /** tsvisor's own counters (the control queue's; no packet passes here) and the tap's, as the kernel counts them. */
  stats(): Record<string, number> {
    const sum = this.workers.counters();
    const worker = Object.fromEntries(WORKER_COUNTERS.map((name, i) => [name, sum[i]!]));
    const own = netCounters(this.pairs, sum.subarray(WORKER_COUNTERS.length)).stats();
    // The tap's receive is the guest's transmit.
    const kernel = {
      txPackets: this.tapStat('rx_packets'),
      txBytes: this.tapStat('rx_bytes'),
      rxPackets: this.tapStat('tx_packets'),
      rxBytes: this.tapStat('tx_bytes'),
    };
    return { ...worker, ...own, vhostPairs: this.pairs, ...prefixed('vhost.', kernel) };
  }

  private tapStat(name: string): number {
    try {
      return Number(fs.readFileSync(`${this.statsDir}/${name}`, 'utf8'));
    } catch {
      return 0;
    }
  }

  async close(): Promise<void> {
    for (let i = 0; i < this.started.length; i++) if (this.started[i]) await this.stopQueue(i);
    await this.closeWorker();
    for (const v of this.vhost.splice(0)) closeFd(v.fd);
    await this.tap.close();
  }
}
