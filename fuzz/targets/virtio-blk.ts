// virtio-blk's data plane (BlockQueue, the code a device worker runs per queue)
// over a real 32 KiB image, driven in-process and synchronously (lib/disk.ts,
// InProcessBlock): well-formed requests of every type with hostile sectors,
// lengths, range lists and buffer layouts, next to the ring operations of a
// hostile driver. A kick drains the queue as the worker's loop would; PROCESS is
// one pass of the loop with a budget from the input, so chains can be left for
// later. Guest RAM is memfd-backed, as the data plane moves data with
// preadv/pwritev straight into it. A QueueError fails the device until a reset;
// anything else process() throws is a crash. At the end the disk oracle
// compares the file with its shadow.
import { BlkType, SECTOR_SIZE } from '../../src/virtio/block.js';
import { firstArgs, le, operations, opsArbitrary, type ByteReader } from '../lib/bytes.js';
import { DiskDir, DISK_SECTORS, InProcessBlock } from '../lib/disk.js';
import { guestLength, sharedGuestMemory } from '../lib/guest.js';
import type { GuestBuffer, HostileDriver } from '../lib/rings.js';
import type { FuzzTarget } from '../lib/target.js';
import { RIG_OPS, VirtioRig } from '../lib/virtio-rig.js';

const Op = { REQUEST: RIG_OPS, PROCESS: RIG_OPS + 1 } as const;
const KINDS = RIG_OPS + 2;
const TYPES = [BlkType.IN, BlkType.OUT, BlkType.FLUSH, BlkType.GET_ID, BlkType.DISCARD, BlkType.WRITE_ZEROES];

function sector(r: ByteReader): bigint {
  switch (r.u8() % 6) {
    case 0:
      return BigInt(r.below(DISK_SECTORS));
    case 1:
      return BigInt(DISK_SECTORS - r.below(3));
    case 2:
      return BigInt(DISK_SECTORS + 1);
    case 3:
      return 2n ** 64n / 512n - BigInt(r.u8()); // sector * 512 overflows 64 bits
    case 4:
      return 2n ** 53n / 512n + BigInt(r.u8());
    default:
      return r.u64();
  }
}

/** A request as a driver lays it out: header, data, status; sometimes split oddly or missing parts. */
function request(driver: HostileDriver, r: ByteReader): void {
  const type = r.u8() < 230 ? r.pick(TYPES) : r.u32();
  const header = new Uint8Array(16);
  header.set(le(type, 4));
  header.set(le(sector(r), 8), 8);
  const bufs: GuestBuffer[] = [];
  if (r.u8() < 40)
    bufs.push(
      { addr: driver.alloc(8, header), len: 8, write: false },
      { addr: driver.alloc(8, header.subarray(8)), len: r.u8() < 200 ? 8 : guestLength(r), write: false },
    );
  else bufs.push({ addr: driver.alloc(16, header), len: 16, write: false });
  const write = type === BlkType.IN || type === BlkType.GET_ID;
  if (type === BlkType.DISCARD || type === BlkType.WRITE_ZEROES) {
    const ranges = new Uint8Array(16 * (r.u8() % 4));
    for (let at = 0; at < ranges.length; at += 16) {
      ranges.set(le(sector(r), 8), at);
      ranges.set(le(r.bool() ? r.below(DISK_SECTORS + 2) : r.u32(), 4), at + 8);
      ranges.set(le(r.u8() < 200 ? 0 : r.u32(), 4), at + 12);
    }
    bufs.push({ addr: driver.alloc(ranges.length, ranges), len: ranges.length, write: false });
  } else {
    for (let n = r.u8() % 4; n > 0; n--) {
      const len = r.bool() ? SECTOR_SIZE * (1 + r.below(3)) : guestLength(r);
      bufs.push({ addr: driver.alloc(len, r.bytes(Math.min(len, 64))), len, write });
    }
  }
  const status = r.u8();
  if (status < 230) bufs.push({ addr: driver.alloc(1), len: status < 200 ? 1 : 1 + (status & 7), write: true });
  driver.post(0, bufs, r.u8() < 40);
}

export const virtioBlk: FuzzTarget<DiskDir> = {
  name: 'virtio-blk',
  description: 'virtio-blk requests (read/write/flush/discard/write-zeroes/get-id) over a temp image, with a shadow-copy oracle',
  arbitrary: opsArbitrary(KINDS, { weights: [3, 4, 1, 1, 6, 1] }),
  setup: () => new DiskDir(),
  teardown: (dir) => dir.remove(),
  run(dir, data) {
    const ops = operations(data);
    const r0 = firstArgs(ops);
    const disk = dir.open(r0.u8() > 230);
    const mem = sharedGuestMemory();
    try {
      const blk = new InProcessBlock(disk, { serial: 'fuzz-serial-0123456789' });
      const rig = new VirtioRig(blk, r0, mem);
      for (const op of ops) {
        if (rig.step(op, KINDS)) continue;
        if (op.kind % KINDS === Op.REQUEST) request(rig.driver, op.args);
        else blk.process(0, 1 + (op.args.u8() % 8));
      }
      disk.verify();
    } finally {
      disk.close();
      mem.close();
    }
  },
};
