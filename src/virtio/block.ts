// virtio-blk (virtio 1.x, "Block Device"): one request queue, requests served
// asynchronously by the image back-end, several in flight, completed in any order.
// Malformed or out-of-range requests complete with IOERR or UNSUPP; they never
// reach the file.
import type { RawImage } from '../backends/raw-image.js';
import { u64ToNumber, type GuestMemory } from '../memory/guest-memory.js';
import { guestIovecs, guestViews, readStream, subSegments, totalLength, writeStream, type DescriptorChain, type Segment } from './chain.js';
import { bit, completeChain, describeError, drainQueue, guarded, readConfigBytes, VirtioId, type ActiveQueues, type VirtioDevice } from './device.js';

const BlockFeature = { SIZE_MAX: 1, SEG_MAX: 2, RO: 5, BLK_SIZE: 6, FLUSH: 9, TOPOLOGY: 10, DISCARD: 13, WRITE_ZEROES: 14 } as const;
export const BlkType = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const BlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

export const SECTOR_SIZE = 512;
const HEADER_SIZE = 16;
const RANGE_SIZE = 16;
const ID_BYTES = 20;
const QUEUE_SIZE = 256;
const SEG_MAX = QUEUE_SIZE - 2;
const SIZE_MAX = 1 << 20;
const MAX_DISCARD_SECTORS = (1 << 30) / SECTOR_SIZE;
const MAX_DISCARD_SEGMENTS = 32;
const CONFIG_SIZE = 60;

export interface BlockOptions {
  name: string;
  image: RawImage;
  /** The drive's serial, returned by GET_ID (at most 20 bytes). */
  serial?: string;
}

class RequestError extends Error {
  constructor(readonly status: number) {
    super(`virtio-blk status ${status}`);
  }
}

export class VirtioBlock implements VirtioDevice {
  readonly type = VirtioId.BLOCK;
  readonly name: string;
  readonly features: bigint;
  readonly queueSizes = [QUEUE_SIZE];
  readonly configSize = CONFIG_SIZE;
  private readonly config = new Uint8Array(CONFIG_SIZE);
  private readonly image: RawImage;
  private readonly serial: Uint8Array;
  private readonly sectors: number;
  private active: ActiveQueues | undefined;
  /** Bumped on reset: completions of requests from before a reset are dropped. */
  private epoch = 0;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly counters = { reads: 0, writes: 0, flushes: 0, discards: 0, writeZeroes: 0, getIds: 0, bytesRead: 0, bytesWritten: 0, ioErrors: 0, unsupported: 0, maxInFlight: 0 };

  constructor(opts: BlockOptions) {
    this.name = opts.name;
    this.image = opts.image;
    this.serial = new Uint8Array(ID_BYTES);
    this.serial.set(Buffer.from(opts.serial ?? '', 'ascii').subarray(0, ID_BYTES));
    this.sectors = Math.floor(opts.image.size / SECTOR_SIZE);
    let features = bit(BlockFeature.SIZE_MAX) | bit(BlockFeature.SEG_MAX) | bit(BlockFeature.BLK_SIZE) | bit(BlockFeature.FLUSH) | bit(BlockFeature.TOPOLOGY);
    features |= opts.image.readOnly ? bit(BlockFeature.RO) : bit(BlockFeature.DISCARD) | bit(BlockFeature.WRITE_ZEROES);
    this.features = features;
    const v = new DataView(this.config.buffer);
    v.setBigUint64(0, BigInt(this.sectors), true);
    v.setUint32(8, SIZE_MAX, true);
    v.setUint32(12, SEG_MAX, true);
    v.setUint32(20, SECTOR_SIZE, true);
    v.setUint16(26, 1, true); // min_io_size, in logical blocks
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

  activate(active: ActiveQueues): void {
    this.active = active;
  }

  reset(): void {
    this.active = undefined;
    this.epoch++;
  }

  queueNotify(): void {
    const active = this.active;
    if (!active) return;
    drainQueue(active, 0, (chain) => this.start(active, chain));
  }

  private start(active: ActiveQueues, chain: DescriptorChain): void {
    const p: Promise<void> = this.serve(active, chain).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
    this.counters.maxInFlight = Math.max(this.counters.maxInFlight, this.inFlight.size);
  }

  /** One request from start to completion; never rejects, whatever the guest or the file did. */
  private async serve(active: ActiveQueues, chain: DescriptorChain): Promise<void> {
    const epoch = this.epoch;
    let written: number;
    try {
      written = await this.handle(active, chain);
    } catch (e) {
      return active.fail(`request: ${describeError(e)}`);
    }
    // A reset in between drops the completion: the rings may since belong to a new driver.
    if (this.epoch === epoch) guarded(active, 'completion', undefined, () => completeChain(active, 0, chain.head, written));
  }

  /** Serves one request; resolves with the bytes written into the chain (data + status). */
  private async handle(active: ActiveQueues, chain: DescriptorChain): Promise<number> {
    const mem = active.memory;
    const writableLen = totalLength(chain.writable);
    // The status byte is the last writable byte; without one there is no way to answer.
    if (writableLen === 0) {
      this.counters.ioErrors++;
      return 0;
    }
    const statusAt = writableLen - 1;
    const finish = (status: number, dataWritten: number): number => {
      writeStream(mem, chain.writable, statusAt, Uint8Array.of(status));
      return dataWritten + 1;
    };
    const header = readStream(mem, chain.readable, 0, HEADER_SIZE);
    if (!header) {
      this.counters.ioErrors++;
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
          const n = await this.image.read(sector * SECTOR_SIZE, guestViews(mem, inData), () => guestIovecs(mem, inData));
          if (n !== len) throw new RequestError(BlkStatus.IOERR); // the file ended early (shrunk under us)
          this.counters.reads++;
          this.counters.bytesRead += len;
          return finish(BlkStatus.OK, len);
        }
        case BlkType.OUT: {
          const len = totalLength(outData);
          this.checkWritable();
          this.checkRange(sector, len);
          const n = await this.image.write(sector * SECTOR_SIZE, guestViews(mem, outData), () => guestIovecs(mem, outData));
          if (n !== len) throw new RequestError(BlkStatus.IOERR);
          this.counters.writes++;
          this.counters.bytesWritten += len;
          return finish(BlkStatus.OK, 0);
        }
        case BlkType.FLUSH:
          // Every write the driver was told about has returned from pwrite, so fdatasync covers it.
          await this.image.flush();
          this.counters.flushes++;
          return finish(BlkStatus.OK, 0);
        case BlkType.GET_ID: {
          const n = writeStream(mem, inData, 0, this.serial.subarray(0, Math.min(ID_BYTES, statusAt)));
          this.counters.getIds++;
          return finish(BlkStatus.OK, n);
        }
        case BlkType.DISCARD:
        case BlkType.WRITE_ZEROES:
          this.checkWritable();
          await this.zeroRanges(mem, outData, type === BlkType.DISCARD);
          return finish(BlkStatus.OK, 0);
        default:
          this.counters.unsupported++;
          return finish(BlkStatus.UNSUPP, 0);
      }
    } catch (e) {
      const status = e instanceof RequestError ? e.status : BlkStatus.IOERR;
      if (status === BlkStatus.UNSUPP) this.counters.unsupported++;
      else this.counters.ioErrors++;
      return finish(status, 0);
    }
  }

  private checkWritable(): void {
    if (this.image.readOnly) throw new RequestError(BlkStatus.IOERR);
  }

  private checkRange(sector: number, len: number): void {
    if (len % SECTOR_SIZE !== 0 || sector > this.sectors || sector + len / SECTOR_SIZE > this.sectors) throw new RequestError(BlkStatus.IOERR);
  }

  /**
   * DISCARD and WRITE_ZEROES carry a list of {sector, num_sectors, flags} ranges. All
   * are checked before any is done: a bad range fails the request with the file untouched.
   */
  private async zeroRanges(mem: GuestMemory, payload: Segment[], discard: boolean): Promise<void> {
    const len = totalLength(payload);
    if (len === 0 || len % RANGE_SIZE !== 0 || len / RANGE_SIZE > MAX_DISCARD_SEGMENTS) throw new RequestError(BlkStatus.UNSUPP);
    const bytes = readStream(mem, payload, 0, len)!;
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
        await this.image.discard(r.offset, r.length);
        this.counters.discards++;
      } else {
        await this.image.writeZeroes(r.offset, r.length, r.unmap);
        this.counters.writeZeroes++;
      }
    }
  }

  stats(): Record<string, number> {
    return { ...this.counters, inFlight: this.inFlight.size, inlineIo: this.image.counters.inline, poolIo: this.image.counters.pool };
  }

  /** Lets in-flight requests finish, then closes the image (their data is in the file). */
  async close(): Promise<void> {
    this.active = undefined;
    await Promise.allSettled([...this.inFlight]);
    await this.image.close();
  }
}
