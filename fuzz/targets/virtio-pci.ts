// The virtio-pci transport around each virtio device (rng, console, net, blk):
// status sequences of any order (bits cleared without a reset, DRIVER_OK without
// FEATURES_OK, and DRIVER_OK taken back, a queue moved out of RAM and enabled,
// DRIVER_OK set again), feature words, queue programming (rings outside RAM
// included), enables, kicks, the ISR, device config, the MSI-X table, PBA and
// control bits, and the PCI_CFG window, in every width, next to ring operations
// and host-side events (frames from the back-end, console input), over a
// back-end that refuses some packets.
//
// The devices sit behind the transport as the machine plugs them: rng, console
// and net through onMainThread(). blk is VirtioBlock's features and config space
// with its BlockQueue data plane, put through onMainThread() too (lib/disk.ts,
// InProcessBlock) instead of VirtioBlock's device workers: a worker thread per
// case costs far more than a case, and its timing would make cases
// irreproducible; VirtioBlock's worker handling is not covered here. The
// transport's kick and call eventfds are watched by hand (ManualWatch in test/support/fd-watch.ts):
// after an access the harness mostly lets the "event loop" turn (the watched
// fds' handlers run, then settled promises: a reset finishes once its queues
// have stopped), and sometimes goes on at once, so accesses also land while a
// reset is pending. Guest RAM is memfd-backed: the transport hands the device
// its memory table at DRIVER_OK. Each case closes the transport (its eventfds).
//
// Oracles: no access or host event throws; the status never shows DRIVER_OK
// without FEATURES_OK unless the device asks for a reset; a reset the driver
// waits for finishes; after close no fd is still watched; for blk, the image
// equals its shadow (lib/disk.ts).
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { onMainThread } from '../../src/virtio/in-process.js';
import { Status, VirtioPciDevice } from '../../src/virtio/pci-transport.js';
import { dword, firstArgs, le, operations, opsArbitrary, type ByteReader, type Op as Operation } from '../lib/bytes.js';
import { DiskDir, InProcessBlock, settle } from '../lib/disk.js';
import { guestAddress, registerValue, scribble, sharedGuestMemory } from '../lib/guest.js';
import { ManualWatch } from '../../test/support/fd-watch.js';
import { pcRig, RefusingBackend, virtioDevice, type PcRig } from '../lib/pc.js';
import { HostileDriver, ringLayout } from '../lib/rings.js';
import { check, guardedRead, WIDTHS, type FuzzTarget } from '../lib/target.js';

const Op = { COMMON: 0, BAR_READ: 1, BAR_WRITE: 2, SET_UP: 3, CONFIG: 4, RING: 5, SCRIBBLE: 6, KICK: 7, HOST: 8, MOVE_QUEUE: 9 } as const;
const KINDS = 10;
/** Common configuration registers (virtio 1.x, 4.1.4.3), by offset and width. */
const COMMON_REGS = [
  [0x00, 4],
  [0x04, 4],
  [0x08, 4],
  [0x0c, 4],
  [0x10, 2],
  [0x12, 2],
  [0x14, 1],
  [0x15, 1],
  [0x16, 2],
  [0x18, 2],
  [0x1a, 2],
  [0x1c, 2],
  [0x1e, 2],
  [0x20, 8],
  [0x28, 8],
  [0x30, 8],
] as const;
/** BAR 0: common, ISR, device config, notify, MSI-X table, PBA. */
const AREAS = [0x0000, 0x1000, 0x2000, 0x3000, 0x4000, 0x6000];
/** Far above the two small RAM regions (lib/guest.ts): where a driver's stale or hostile ring points. */
const OUTSIDE_RAM = 0xfff00000;

export const virtioPci: FuzzTarget<DiskDir> = {
  name: 'virtio-pci',
  description: 'virtio-pci transport registers, status rules, queue setup, MSI-X and PCI_CFG over rng/console/net/blk',
  arbitrary: opsArbitrary(KINDS, { weights: [6, 2, 2, 3, 3, 3, 1, 3, 3, 2], maxOps: 60 }),
  setup: () => new DiskDir(),
  teardown: (dir) => dir.remove(),
  async run(dir, data) {
    const ops = operations(data);
    const r0 = firstArgs(ops);
    const kind = r0.u8() % 4;
    const memory = sharedGuestMemory();
    const fds = new ManualWatch();
    const disk = kind === 3 ? dir.open(false) : undefined;
    let pci: VirtioPciDevice | undefined;
    try {
      const backend = new RefusingBackend();
      backend.refuse(r0);
      const { device, host } = disk ? { device: new InProcessBlock(disk), host: () => {} } : virtioDevice(kind, backend);
      const rig = pcRig();
      pci = new VirtioPciDevice(onMainThread(device, { memory, watch: fds.watch }), { memory, msi: rig.msi, watch: fds.watch });
      await drive(pci, rig, device.queueSizes, memory, fds, host, r0, ops);
      const closing = pci;
      pci = undefined;
      await closing.close();
      check(fds.watched === 0, `${fds.watched} fds still watched after the device closed`);
      disk?.verify();
    } finally {
      await pci?.close();
      disk?.close();
      memory.close();
    }
  },
};

/** What the event loop does between two guest accesses: the watched fds' handlers, then whatever settled meanwhile. */
async function loopTurn(fds: ManualWatch): Promise<void> {
  fds.pump();
  await new Promise((resolve) => setImmediate(resolve));
}

/** The case: the driver's set-up from the first operation's arguments, then every operation, each checked. */
async function drive(
  pci: VirtioPciDevice,
  rig: PcRig,
  queueSizes: readonly number[],
  memory: GuestMemory,
  fds: ManualWatch,
  host: (r: ByteReader) => void,
  r0: ByteReader,
  ops: Iterable<Operation>,
): Promise<void> {
  const devfn = rig.pci.add(pci);
  const bar0 = pci.bars[0]!.region;
  const driver = new HostileDriver(memory, [...queueSizes]);
  const queues = queueSizes.length;
  const write = (offset: number, value: number | bigint, width: number): void => bar0.write(offset, le(value, width));
  const status = (): number => guardedRead(bar0, 0x14, 1)[0]!;
  // Where the capabilities are, for config-space traffic that hits them.
  const caps: number[] = [];
  for (let at = pci.config.u8(0x34); at && caps.length < 16; at = pci.config.u8(at + 1)) caps.push(at);
  const setUp = async (r: ByteReader): Promise<void> => {
    // A driver doing it right, up to a point the input picks; zeros (missing bytes) go all the way.
    const steps = 5 - (r.u8() % 6);
    // Queues left off (a bit each) can be programmed again later (MOVE_QUEUE).
    const off = r.u8();
    write(0x14, 0, 1);
    // The driver waits for the reset to finish: the queues stop first.
    await settle(() => status() === 0, 100);
    check(status() === 0, `the status reads 0x${status().toString(16)}, not 0, long after a reset`);
    if (steps > 0) write(0x14, Status.ACKNOWLEDGE | Status.DRIVER, 1);
    if (steps > 1) {
      for (const select of [1, 0]) {
        write(0x00, select, 4);
        const offered = dword(guardedRead(bar0, 0x04, 4));
        write(0x08, select, 4);
        // Mostly a subset of the offer (VERSION_1, bit 32, kept), so FEATURES_OK sticks.
        write(0x0c, r.u8() < 240 ? (offered & r.u32()) | select : r.u32(), 4);
      }
      write(0x14, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK, 1);
    }
    for (let q = 0; steps > 2 && q < queues; q++) {
      const home = ringLayout(q);
      write(0x16, q, 2);
      write(0x18, driver.sizes[q]!, 2);
      write(0x1a, r.u8() % (queues + 2), 2);
      write(0x20, r.u8() < 230 ? home.desc : guestAddress(r), 8);
      write(0x28, r.u8() < 230 ? home.avail : guestAddress(r), 8);
      write(0x30, r.u8() < 230 ? home.used : guestAddress(r), 8);
      if (steps > 3 && !((off >> q) & 1)) write(0x1c, 1, 2);
    }
    if (steps > 4) write(0x14, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK, 1);
  };
  /** A driver takes DRIVER_OK back without a reset, moves a queue's rings (often out of RAM), enables it, and sets DRIVER_OK again. */
  const moveQueue = (r: ByteReader): void => {
    write(0x14, status() & ~Status.DRIVER_OK, 1);
    // Only a queue that is off takes new rings: mostly one of those.
    const off = queueSizes
      .map((_, q) => q)
      .filter((q) => {
        write(0x16, q, 2);
        return guardedRead(bar0, 0x1c, 2)[0] === 0;
      });
    const q = off.length && r.u8() < 200 ? r.pick(off) : r.u8() % queues;
    const home = ringLayout(q);
    write(0x16, q, 2);
    for (const [reg, at] of [
      [0x20, home.desc],
      [0x28, home.avail],
      [0x30, home.used],
    ] as const) {
      const where = r.u8();
      write(reg, where < 100 ? OUTSIDE_RAM : where < 200 ? guestAddress(r) : at, 8);
    }
    write(0x1c, 1, 2);
    write(0x14, status() | Status.DRIVER_OK, 1);
  };
  await setUp(r0); // a case starts where a guest's driver left the device, mostly live
  for (const { kind: k, args: r } of ops) {
    switch (k % KINDS) {
      case Op.COMMON: {
        const [offset, width] = r.u8() < 220 ? r.pick(COMMON_REGS) : [r.u8() % 0x40, r.pick(WIDTHS)];
        if (offset === 0x14 && r.bool())
          write(offset, status() & ~(1 << r.below(8)), 1); // clear one bit, no reset
        else write(offset, r.bool() ? r.u64() : registerValue(r), width);
        break;
      }
      case Op.BAR_READ:
        guardedRead(bar0, r.pick(AREAS) + (r.bool() ? r.u8() : r.u16() & 0xfff), r.pick(WIDTHS));
        break;
      case Op.BAR_WRITE:
        bar0.write(r.pick(AREAS) + (r.bool() ? r.u8() : r.u16() & 0xfff), r.bytes(r.pick(WIDTHS)));
        break;
      case Op.SET_UP:
        await setUp(r);
        break;
      case Op.CONFIG: {
        const offset = r.u8() < 200 ? r.pick(caps) + r.below(20) : r.u8();
        const width = r.pick(WIDTHS.slice(0, 3));
        if (r.bool()) rig.pci.configWrite(devfn, offset, r.u8() < 60 ? le(0xffffffff, width) : r.bytes(width));
        else rig.pci.configRead(devfn, offset, new Uint8Array(width));
        break;
      }
      case Op.RING:
        driver.apply(r.u8(), r.u8() % queues, r);
        break;
      case Op.SCRIBBLE:
        scribble(memory, r);
        break;
      case Op.KICK:
        write(0x3000 + 4 * (r.u8() % (queues + 1)), r.u16(), 2);
        break;
      case Op.HOST:
        host(r);
        break;
      default:
        moveQueue(r);
    }
    const s = status();
    check(
      !(s & Status.DRIVER_OK) || s & Status.FEATURES_OK || s & Status.NEEDS_RESET,
      `status 0x${s.toString(16)}: DRIVER_OK without FEATURES_OK, and no reset asked`,
    );
    // Mostly the loop turns before the next access; sometimes the next one comes first.
    if (r.u8() < 240) await loopTurn(fds);
  }
  await loopTurn(fds);
}
