// virtio-blk (virtio 1.x, "Block Device"): the device model the transport talks to
// (features, configuration space, num-queues) and its device worker: a thread of
// its own that runs the data plane (block-queue.ts) of every started request queue.
// The main thread starts and stops queues and reads counters; it never touches a
// request.
import { closeImage, type ImageFile } from '../backends/raw-image.js';
import { BLOCK_COUNTERS, BLOCK_QUEUE_SIZE, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, SECTOR_SIZE, type BlockDisk } from './block-queue.js';
import { bit, readConfigBytes, VirtioId, type VirtioDevice } from './device.js';
import { WORKER_COUNTERS } from './worker/data-plane.js';
import type { DeviceWorker } from './worker/device-worker.js';
import { WorkerBackedDevice } from './worker/worker-backed-device.js';

export { BlkStatus, BlkType, SECTOR_SIZE } from './block-queue.js';

const BlockFeature = { SIZE_MAX: 1, SEG_MAX: 2, RO: 5, BLK_SIZE: 6, FLUSH: 9, TOPOLOGY: 10, MQ: 12, DISCARD: 13, WRITE_ZEROES: 14 } as const;

const SEG_MAX = BLOCK_QUEUE_SIZE - 2;
const SIZE_MAX = 1 << 20;
const CONFIG_SIZE = 60;
/** As many request queues as a driver may ask for: one per vCPU is the default. */
export const MAX_BLOCK_QUEUES = 64;

export interface BlockOptions {
  name: string;
  image: ImageFile;
  /** The drive's serial, returned by GET_ID (at most 20 bytes). */
  serial?: string;
  /** Request queues (VIRTIO_BLK_F_MQ when more than one). */
  queues?: number;
}

export class VirtioBlock extends WorkerBackedDevice implements VirtioDevice {
  readonly type = VirtioId.BLOCK;
  readonly name: string;
  readonly features: bigint;
  readonly queueSizes: readonly number[];
  readonly configSize = CONFIG_SIZE;
  private readonly config = new Uint8Array(CONFIG_SIZE);
  private readonly disk: BlockDisk;

  constructor(opts: BlockOptions) {
    const queues = opts.queues ?? 1;
    if (!Number.isInteger(queues) || queues < 1 || queues > MAX_BLOCK_QUEUES) throw new Error(`virtio-blk: ${queues} queues (1 to ${MAX_BLOCK_QUEUES})`);
    const serial = new Uint8Array(ID_BYTES);
    serial.set(Buffer.from(opts.serial ?? '', 'ascii').subarray(0, ID_BYTES));
    const disk: BlockDisk = { image: opts.image, serial };
    // The worker starts when the first queue runs and is kept across resets.
    super('block', disk, BLOCK_COUNTERS.length);
    this.name = opts.name;
    this.disk = disk;
    this.queueSizes = Array.from({ length: queues }, () => BLOCK_QUEUE_SIZE);
    let features = bit(BlockFeature.SIZE_MAX) | bit(BlockFeature.SEG_MAX) | bit(BlockFeature.BLK_SIZE) | bit(BlockFeature.FLUSH) | bit(BlockFeature.TOPOLOGY);
    features |= opts.image.readOnly ? bit(BlockFeature.RO) : bit(BlockFeature.DISCARD) | bit(BlockFeature.WRITE_ZEROES);
    if (queues > 1) features |= bit(BlockFeature.MQ);
    this.features = features;
    const v = new DataView(this.config.buffer);
    v.setBigUint64(0, BigInt(Math.floor(opts.image.size / SECTOR_SIZE)), true);
    v.setUint32(8, SIZE_MAX, true);
    v.setUint32(12, SEG_MAX, true);
    v.setUint32(20, SECTOR_SIZE, true);
    v.setUint16(26, 1, true); // min_io_size, in logical blocks
    v.setUint16(34, queues, true); // num_queues
    v.setUint32(36, MAX_DISCARD_SECTORS, true);
    v.setUint32(40, MAX_DISCARD_SEGMENTS, true);
    v.setUint32(44, 1, true); // discard_sector_alignment
    v.setUint32(48, MAX_DISCARD_SECTORS, true);
    v.setUint32(52, MAX_DISCARD_SEGMENTS, true);
    v.setUint8(56, 1); // write_zeroes_may_unmap
  }

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.config, offset, data);
  }

  writeConfig(): void {}

  /** The device's worker, for tests that must see what a crashed worker leaves. */
  worker(): DeviceWorker | undefined {
    return this.workers.current();
  }

  stats(): Record<string, number> {
    const sum = this.workers.counters();
    const names = [...WORKER_COUNTERS, ...BLOCK_COUNTERS];
    return { ...Object.fromEntries(names.map((name, i) => [name, sum[i]!])), queues: this.queueSizes.length };
  }

  /** The worker finishes the requests it holds and ends; then the image closes (their data is in the file). */
  async close(): Promise<void> {
    await this.closeWorker();
    closeImage(this.disk.image);
  }
}
