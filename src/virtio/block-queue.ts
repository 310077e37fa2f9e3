// One virtio-blk request queue's data plane (virtio 1.x, "Block Device"): takes
// requests from the ring, does them on the image synchronously on this thread
// (a device worker's; see worker/), puts them in the used ring and interrupts the
// driver once per batch. Malformed or out-of-range requests complete with IOERR or
// UNSUPP and never reach the file; a failing file gives IOERR, never a hang.
import { ImageIo, type ImageFile } from '../backends/raw-image.js';
import { u64ToNumber, type GuestMemory } from '../memory/guest-memory.js';
import { readStream, subSegments, totalLength, writeStream, type DescriptorChain, type Segment } from './chain.js';
import { SplitQueue, type QueueState } from './queue.js';
import type { QueueDataPlane, WorkerDevice, WorkerEnv } from './worker/data-plane.js';

export const BlkType = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const BlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

export const SECTOR_SIZE = 512;
export const ID_BYTES = 20;
export const BLOCK_QUEUE_SIZE = 256;
export const MAX_DISCARD_SECTORS = (1 << 30) / SECTOR_SIZE;
export const MAX_DISCARD_SEGMENTS = 32;
const HEADER_SIZE = 16;
const RANGE_SIZE = 16;

/** The counters each block queue keeps, in the order of the shared array. */
export const BLOCK_COUNTERS = [
  'reads',
  'writes',
  'flushes',
  'discards',
  'writeZeroes',
  'getIds',
  'bytesRead',
  'bytesWritten',
  'ioErrors',
  'unsupported',
] as const;
type BlockCounter = (typeof BLOCK_COUNTERS)[number];
const COUNTER_INDEX = Object.fromEntries(BLOCK_COUNTERS.map((name, i) => [name, i])) as Record<BlockCounter, number>;

/** The disk as plain data: what a block queue needs, in whichever thread it runs. */
export interface BlockDisk {
  image: ImageFile;
  /** The drive's serial, returned by GET_ID (ID_BYTES, zero padded). */
  serial: Uint8Array;
}

class RequestError extends Error {
  constructor(readonly status: number) {
    super(`virtio-blk status ${status}`);
  }
}

/** The worker's factory: a disk whose queues are independent block queues, made from plain data (each ring is checked again here). */
export function blockWorkerDevice(init: unknown, env: WorkerEnv): WorkerDevice {
  const disk = init as BlockDisk;
  return {
    startQueue: (ctx) => {
      const queue = SplitQueue.fromState(BLOCK_QUEUE_SIZE, ctx.queue.state, ctx.memory);
      return new BlockQueue(ctx.memory, queue, disk, new ImageIo(disk.image, ctx.memory), env.counters, ctx.signal);
    },
    reset: () => {},
    close: () => {},
  };
}

export class BlockQueue implements QueueDataPlane {
  private readonly sectors: number;

  constructor(
    private readonly mem: GuestMemory,
    private readonly queue: SplitQueue,
    private readonly disk: BlockDisk,
    private readonly io: ImageIo,
    private readonly counters: Float64Array,
    private readonly signal: () => void,
  ) {
    this.sectors = Math.floor(disk.image.size / SECTOR_SIZE);
  }

  private count(name: BlockCounter, n = 1): void {
    this.counters[COUNTER_INDEX[name]]! += n;
  }

  process(budget: number): boolean {
    const { queue: q, mem } = this;
    let done = 0;
    let more = false;
    q.disableNotifications(mem);
    for (;;) {
      const chain = q.pop(mem);
      if (!chain) {
        // Re-arm notifications, then look once more: a chain posted meanwhile would get no kick.
        if (!q.enableNotifications(mem)) break;
        q.disableNotifications(mem);
        continue;
      }
      q.pushUsed(mem, chain.head, this.handle(chain));
      if (++done === budget) {
        more = true;
        break;
      }
    }
    if (done && q.needsInterrupt(mem)) this.signal();
    return more;
  }

  stop(): QueueState {
    return this.queue.state();
  }

  /** Serves one request; returns the bytes written into the chain (data + status). */
  private handle(chain: DescriptorChain): number {
    const mem = this.mem;
    const writableLen = totalLength(chain.writable);
    // The status byte is the last writable byte; without one there is no way to answer.
    if (writableLen === 0) {
      this.count('ioErrors');
      return 0;
    }
    const statusAt = writableLen - 1;
    const finish = (status: number, dataWritten: number): number => {
      writeStream(mem, chain.writable, statusAt, Uint8Array.of(status));
      return dataWritten + 1;
    };
    const header = readStream(mem, chain.readable, 0, HEADER_SIZE);
    if (!header) {
      this.count('ioErrors');
      return finish(BlkStatus.IOERR, 0);
    }
    const h = new DataView(header.buffer);
    const type = h.getUint32(0, true);
    const sector = u64ToNumber(h.getUint32(8, true), h.getUint32(12, true));
    const inData = subSegments(chain.writable, 0, statusAt);
    const outData = subSegments(chain.readable, HEADER_SIZE, totalLength(chain.readable) - HEADER_SIZE);
    try {
      switch (type) {
        case BlkType.IN: {
          const len = statusAt;
          this.checkRange(sector, len);
          if (this.io.read(sector * SECTOR_SIZE, inData) !== len) throw new RequestError(BlkStatus.IOERR); // the file ended early (shrunk under us)
          this.count('reads');
          this.count('bytesRead', len);
          return finish(BlkStatus.OK, len);
        }
        case BlkType.OUT: {
          const len = totalLength(outData);
          this.checkWritable();
          this.checkRange(sector, len);
          if (this.io.write(sector * SECTOR_SIZE, outData) !== len) throw new RequestError(BlkStatus.IOERR);
          this.count('writes');
          this.count('bytesWritten', len);
          return finish(BlkStatus.OK, 0);
        }
        case BlkType.FLUSH:
          // Every write the driver was told about has returned from pwrite, so fdatasync covers it.
          this.io.flush();
          this.count('flushes');
          return finish(BlkStatus.OK, 0);
        case BlkType.GET_ID: {
          const n = writeStream(mem, inData, 0, this.disk.serial.subarray(0, Math.min(ID_BYTES, statusAt)));
          this.count('getIds');
          return finish(BlkStatus.OK, n);
        }
        case BlkType.DISCARD:
        case BlkType.WRITE_ZEROES:
          this.checkWritable();
          this.zeroRanges(outData, type === BlkType.DISCARD);
          return finish(BlkStatus.OK, 0);
        default:
          this.count('unsupported');
          return finish(BlkStatus.UNSUPP, 0);
      }
    } catch (e) {
      const status = e instanceof RequestError ? e.status : BlkStatus.IOERR;
      this.count(status === BlkStatus.UNSUPP ? 'unsupported' : 'ioErrors');
      return finish(status, 0);
    }
  }

  private checkWritable(): void {
    if (this.disk.image.readOnly) throw new RequestError(BlkStatus.IOERR);
  }

  private checkRange(sector: number, len: number): void {
    if (len % SECTOR_SIZE !== 0 || sector > this.sectors || sector + len / SECTOR_SIZE > this.sectors) throw new RequestError(BlkStatus.IOERR);
  }

  /**
   * DISCARD and WRITE_ZEROES carry a list of {sector, num_sectors, flags} ranges. All
   * are checked before any is done: a bad range fails the request with the file untouched.
   */
  private zeroRanges(payload: Segment[], discard: boolean): void {
    const len = totalLength(payload);
    if (len === 0 || len % RANGE_SIZE !== 0 || len / RANGE_SIZE > MAX_DISCARD_SEGMENTS) throw new RequestError(BlkStatus.UNSUPP);
    const bytes = readStream(this.mem, payload, 0, len)!;
    const v = new DataView(bytes.buffer);
    const ranges: { offset: number; length: number; unmap: boolean }[] = [];
    for (let at = 0; at < len; at += RANGE_SIZE) {
      const sector = u64ToNumber(v.getUint32(at, true), v.getUint32(at + 4, true));
      const count = v.getUint32(at + 8, true);
      const flags = v.getUint32(at + 12, true);
      // Only WRITE_ZEROES knows the unmap flag; no other flag exists.
      if (flags & ~1 || (discard && flags)) throw new RequestError(BlkStatus.UNSUPP);
      if (count > MAX_DISCARD_SECTORS) throw new RequestError(BlkStatus.IOERR);
      this.checkRange(sector, count * SECTOR_SIZE);
      ranges.push({ offset: sector * SECTOR_SIZE, length: count * SECTOR_SIZE, unmap: (flags & 1) === 1 });
    }
    for (const r of ranges) {
      if (discard) {
        this.io.discard(r.offset, r.length);
        this.count('discards');
      } else {
        this.io.writeZeroes(r.offset, r.length, r.unmap);
        this.count('writeZeroes');
      }
    }
  }
}
