// A small real disk image per case, the oracle that guards it, and virtio-blk's
// data plane run in-process over it.
//
// Every byte the block data plane moves between the file and guest memory goes
// through ImageIo (read, write, writeZeroes, discard); the image's ImageIo here is
// watched: each call must stay inside the image, and afterwards the file must
// equal a shadow copy that took exactly the watched writes. So a byte that changed
// where no request of the device asked is caught, and so is a request that ran
// off the end of the image. BlockQueue catches whatever its ImageIo throws (the
// request completes with IOERR), so a violation is recorded, not thrown, and
// verify() reports it.
//
// InProcessBlock is one BlockQueue per queue, driven synchronously on this thread
// where VirtioBlock would run it in a device worker: a kick is process() until
// the queue is drained (the worker's loop, bounded), and the harness can also run
// single passes of any budget. A QueueError out of process() is the driver
// breaking the ring's rules: the device fails (DEVICE_NEEDS_RESET) and its
// queues are not driven again until the next activation, as the worker does.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { closeImage, ImageIo, openImage, type ImageFile } from '../../src/backends/raw-image.js';
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { BLOCK_COUNTERS, BlockQueue, ID_BYTES, type BlockDisk } from '../../src/virtio/block-queue.js';
import { SECTOR_SIZE, VirtioBlock } from '../../src/virtio/block.js';
import type { Segment } from '../../src/virtio/chain.js';
import { describeError, type VirtioDevice } from '../../src/virtio/device.js';
import type { ActiveQueues, MainThreadDevice } from '../../src/virtio/in-process.js';
import { QueueError, type SplitQueue } from '../../src/virtio/queue.js';
import { check } from './target.js';

export const DISK_SECTORS = 64;
const DISK_SIZE = DISK_SECTORS * SECTOR_SIZE;
/** tmpfs when there is one: the cases run faster. */
const TMP = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
/** Chains per pass of a kicked queue, as the device worker's loop takes them. */
export const KICK_BUDGET = 64;
/** Passes one kick may take before the harness moves on (a driver can keep a queue busy forever). */
const KICK_PASSES = 64;

export class DiskDir {
  readonly dir = fs.mkdtempSync(path.join(TMP, 'tsvisor-fuzz-'));
  private next = 0;

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** A fresh image file with a known pattern, opened as the device would open it. Close it at the end of the case. */
  open(readOnly: boolean): WatchedDisk {
    const file = path.join(this.dir, `disk-${this.next++ % 4}.img`);
    const initial = Buffer.alloc(DISK_SIZE);
    for (let i = 0; i < initial.length; i++) initial[i] = (i * 7 + (i >> 9)) & 0xff;
    fs.writeFileSync(file, initial);
    return new WatchedDisk(file, initial, openImage({ path: file, readOnly, cache: 'writeback' }));
  }
}

export class WatchedDisk {
  /** What the file must hold: the initial pattern with every watched write applied. */
  private readonly shadow: Uint8Array;
  /** Discarded ranges read back as zeros or as before, depending on the filesystem: either is right. */
  private readonly loose: [number, number][] = [];
  /** Watched calls that reached outside the image. */
  private readonly violations: string[] = [];
  private closed = false;

  constructor(
    private readonly file: string,
    initial: Uint8Array,
    readonly image: ImageFile,
  ) {
    this.shadow = initial.slice();
  }

  /** I/O on the image over `mem`, as a block queue's data plane does it, watched by this oracle. */
  io(mem: GuestMemory): ImageIo {
    return new WatchedIo(this, mem);
  }

  /** Whether [offset, offset+len) lies in the image; records a violation when not. */
  inside(what: string, offset: number, len: number): boolean {
    const ok = Number.isSafeInteger(offset) && Number.isSafeInteger(len) && offset >= 0 && len >= 0 && offset + len <= DISK_SIZE;
    if (!ok) this.violations.push(`${what} [${offset}, +${len}) is outside the ${DISK_SIZE}-byte image`);
    return ok;
  }

  wrote(offset: number, data: Uint8Array): void {
    this.shadow.set(data, offset);
  }

  zeroed(offset: number, len: number, discard: boolean): void {
    this.shadow.fill(0, offset, offset + len);
    if (discard) this.loose.push([offset, offset + len]);
  }

  /** Throws the first violation so far. */
  checkClean(): void {
    check(this.violations.length === 0, this.violations[0]);
  }

  /** Closes the image (once; closing the device does not). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeImage(this.image);
  }

  /** Compares the file with the shadow; call once nothing is in flight. */
  verify(): void {
    this.checkClean();
    const file = fs.readFileSync(this.file);
    check(file.length === DISK_SIZE, `the image grew or shrank to ${file.length} bytes`);
    for (let i = 0; i < DISK_SIZE; i++) {
      if (file[i] === this.shadow[i]) continue;
      if (this.loose.some(([from, to]) => i >= from && i < to)) continue;
      check(false, `image byte ${i} is 0x${file[i]!.toString(16)}, but no write of the device put it there (expected 0x${this.shadow[i]!.toString(16)})`);
    }
  }
}

/** The real ImageIo, with every call that touches the file checked and mirrored into the shadow. */
class WatchedIo extends ImageIo {
  constructor(
    private readonly disk: WatchedDisk,
    private readonly memory: GuestMemory,
  ) {
    super(disk.image, memory);
  }

  override read(offset: number, segs: readonly Segment[]): number {
    this.disk.inside('read', offset, length(segs));
    return super.read(offset, segs);
  }

  override write(offset: number, segs: readonly Segment[]): number {
    // What the guest's buffers hold now is what pwritev takes: nothing else runs meanwhile.
    const data = Buffer.concat(segs.map((s) => this.memory.slice(s.addr, s.len)));
    const ok = this.disk.inside('write', offset, data.length);
    const n = super.write(offset, segs);
    if (ok) this.disk.wrote(offset, data.subarray(0, n));
    return n;
  }

  override discard(offset: number, len: number): void {
    if (this.disk.inside('discard', offset, len)) this.disk.zeroed(offset, len, true);
    super.discard(offset, len);
  }

  override writeZeroes(offset: number, len: number, unmap: boolean): void {
    if (this.disk.inside('writeZeroes', offset, len)) this.disk.zeroed(offset, len, false);
    super.writeZeroes(offset, len, unmap);
  }
}

const length = (segs: readonly Segment[]): number => segs.reduce((n, s) => n + s.len, 0);

/**
 * virtio-blk as a main-thread device: VirtioBlock's features and configuration
 * space (its model is never activated, so it starts no worker), and per queue a
 * BlockQueue over the watched image. See the file comment.
 */
export class InProcessBlock implements MainThreadDevice {
  readonly type: number;
  readonly name: string;
  readonly features: bigint;
  readonly queueSizes: readonly number[];
  readonly configSize: number;
  private readonly model: VirtioDevice;
  private readonly blockDisk: BlockDisk;
  private active: ActiveQueues | undefined;
  private io: { memory: GuestMemory; io: ImageIo } | undefined;
  /** Each queue's data plane, made the first time the queue runs, for the live queue it was made over. */
  private planes: ({ queue: SplitQueue; plane: BlockQueue } | undefined)[] = [];
  private readonly counters = new Float64Array(BLOCK_COUNTERS.length);

  constructor(
    private readonly disk: WatchedDisk,
    opts: { name?: string; serial?: string; queues?: number } = {},
  ) {
    this.model = new VirtioBlock({ name: opts.name ?? 'blk', image: disk.image, serial: opts.serial, queues: opts.queues });
    this.type = this.model.type;
    this.name = this.model.name;
    this.features = this.model.features;
    this.queueSizes = this.model.queueSizes;
    this.configSize = this.model.configSize;
    // The serial as VirtioBlock pads it for its queues: ID_BYTES, zero padded.
    const serial = new Uint8Array(ID_BYTES);
    serial.set(Buffer.from(opts.serial ?? '', 'ascii').subarray(0, ID_BYTES));
    this.blockDisk = { image: disk.image, serial };
  }

  readConfig(offset: number, data: Uint8Array): void {
    this.model.readConfig(offset, data);
  }

  writeConfig(offset: number, data: Uint8Array): void {
    this.model.writeConfig(offset, data);
  }

  activate(active: ActiveQueues): void {
    this.active = active;
    this.planes = [];
  }

  /** A kick: passes of the data plane until the queue is drained (bounded); a QueueError fails the device. */
  queueNotify(index: number): void {
    for (let i = 0; i < KICK_PASSES && this.process(index, KICK_BUDGET); i++);
  }

  /** One pass of the data plane over at most `budget` chains, as the worker's loop runs it; true when more wait. */
  process(index: number, budget: number): boolean {
    const active = this.active;
    const queue = active?.queues[index];
    if (!active || active.stopped || !queue) return false;
    let entry = this.planes[index];
    if (entry?.queue !== queue) {
      if (this.io?.memory !== active.memory) this.io = { memory: active.memory, io: this.disk.io(active.memory) };
      entry = { queue, plane: new BlockQueue(active.memory, queue, this.blockDisk, this.io.io, this.counters, () => active.interrupt.queue(index)) };
      this.planes[index] = entry;
    }
    try {
      return entry.plane.process(budget);
    } catch (e) {
      // The worker fails the device on anything process() throws; here only a broken
      // ring (QueueError) may, and anything else reaches the harness as a crash.
      if (!(e instanceof QueueError)) throw e;
      active.fail(`queue ${index}: ${describeError(e)}`);
      return false;
    } finally {
      this.disk.checkClean();
    }
  }

  reset(): void {
    this.active = undefined;
    this.planes = [];
  }

  stats(): Record<string, number> {
    return Object.fromEntries(BLOCK_COUNTERS.map((name, i) => [name, this.counters[i]!]));
  }

  /** The image is the harness's: WatchedDisk.close(). */
  async close(): Promise<void> {
    this.active = undefined;
    this.planes = [];
  }
}

/** Waits (bounded) until `idle()`; the case's time budget catches a device that never gets there. */
export async function settle(idle: () => boolean, maxTurns = 2000): Promise<void> {
  for (let i = 0; i < maxTurns && !idle(); i++) await new Promise((resolve) => setImmediate(resolve));
}
