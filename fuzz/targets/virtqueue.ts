// SplitQueue alone, under a driver that writes whatever it likes into its
// descriptor table and rings. QueueError is how the queue refuses a broken ring
// (the transport turns it into DEVICE_NEEDS_RESET); anything else escaping, a
// GuestMemoryError included, is a crash. Oracles: a popped chain lies in RAM,
// has a head inside the table and no more descriptors than the queue allows;
// the device writes only its used ring.
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { QueueError, SplitQueue, USED_ELEM_SIZE } from '../../src/virtio/queue.js';
import { operations, opsArbitrary, type ByteReader } from '../lib/bytes.js';
import { guestAddress, guestMemory, scribble } from '../lib/guest.js';
import { HostileDriver, RING_OPS, ringLayout } from '../lib/rings.js';
import { check, type FuzzTarget } from '../lib/target.js';

const MAX_SIZE = 256;
const Op = { CONFIG: 0, RING: 1, POP: 2, PUSH_USED: 3, UNPOP: 4, NOTIFY_STATE: 5, SCRIBBLE: 6 } as const;
const KINDS = 7;

/** Records the guest memory the queue writes, by wrapping the instance's store methods. */
function watchWrites(mem: GuestMemory): { ranges: [number, number][] } {
  const log = { ranges: [] as [number, number][] };
  const wrap = <K extends 'writeU16' | 'writeU32' | 'storeU16Release'>(name: K, width: number): void => {
    const original = mem[name].bind(mem) as (addr: number, v: number) => void;
    (mem[name] as (addr: number, v: number) => void) = (addr, v) => {
      log.ranges.push([addr, addr + width]);
      original(addr, v);
    };
  };
  wrap('writeU16', 2);
  wrap('writeU32', 4);
  wrap('storeU16Release', 2);
  return log;
}

/** Runs a queue operation that may refuse the ring; true when it did. */
function refused(body: () => void): boolean {
  try {
    body();
    return false;
  } catch (e) {
    if (e instanceof QueueError) return true;
    throw e;
  }
}

/** The driver programs the queue: mostly at the rings' home, sometimes anywhere; no queue when it does not validate. */
function configure(mem: GuestMemory, r?: ByteReader): { size: number; queue: SplitQueue | undefined } {
  const home = ringLayout(0);
  const place = (at: number): number => (!r || r.u8() < 200 ? at : Number(guestAddress(r)));
  const size = !r ? 16 : r.bool() ? 1 << r.below(10) : r.u16();
  const state = {
    size,
    descTable: place(home.desc),
    availRing: place(home.avail),
    usedRing: place(home.used),
    eventIdx: r?.bool() ?? false,
    nextAvail: 0,
    nextUsed: 0,
  };
  let queue: SplitQueue | undefined;
  refused(() => (queue = SplitQueue.fromState(MAX_SIZE, state, mem)));
  return { size, queue };
}

export const virtqueue: FuzzTarget = {
  name: 'virtqueue',
  description: 'SplitQueue pop/pushUsed/notifications over hostile descriptor tables and rings',
  arbitrary: opsArbitrary(KINDS, { weights: [1, 8, 4, 2, 1, 1, 1] }),
  run(_ctx, data) {
    const mem = guestMemory();
    let q = configure(mem).queue!;
    let driver = new HostileDriver(mem, [16]);
    let usable = true;
    const popped: number[] = [];
    let lastPopped = false;
    const writes = watchWrites(mem);
    const deviceOp = (body: () => void): void => {
      writes.ranges = [];
      if (refused(body)) usable = false; // the transport would fail the device; a driver reset starts over
      const end = q.usedRing + 6 + USED_ELEM_SIZE * q.size;
      for (const [from, to] of writes.ranges)
        check(from >= q.usedRing && to <= end, `the device wrote [0x${from.toString(16)}, 0x${to.toString(16)}) outside its used ring`);
    };
    for (const { kind, args: r } of operations(data)) {
      const op = kind % KINDS;
      if (op === Op.CONFIG) {
        const programmed = configure(mem, r);
        usable = programmed.queue !== undefined;
        if (programmed.queue) q = programmed.queue;
        driver = new HostileDriver(mem, [Math.min(MAX_SIZE, programmed.size) || 1]);
      } else if (op === Op.RING) driver.apply(r.u8() % RING_OPS, 0, r);
      else if (op === Op.SCRIBBLE) scribble(mem, r);
      else if (!usable) continue;
      else if (op === Op.POP) {
        lastPopped = false;
        deviceOp(() => {
          const chain = q.pop(mem);
          if (!chain) return;
          lastPopped = true;
          popped.push(chain.head);
          check(chain.head < q.size, `chain head ${chain.head} is outside the queue (size ${q.size})`);
          // An indirect table may be as long as the device's largest queue (MAX_SIZE), not just the ring.
          check(
            chain.readable.length + chain.writable.length <= MAX_SIZE,
            `a chain of ${chain.readable.length + chain.writable.length} descriptors on a device whose largest queue is ${MAX_SIZE}`,
          );
          for (const s of [...chain.readable, ...chain.writable])
            check(mem.contains(s.addr, s.len), `segment [0x${s.addr.toString(16)}, +${s.len}) is outside guest RAM`);
        });
      } else if (op === Op.PUSH_USED) {
        const head = popped.length && r.bool() ? popped.shift()! : r.u16();
        deviceOp(() => q.pushUsed(mem, head, r.u32()));
      } else if (op === Op.UNPOP) {
        // Only what was just popped can be put back.
        if (lastPopped) q.unpop();
        lastPopped = false;
      } else {
        deviceOp(() => {
          q.needsInterrupt(mem);
          if (r.bool()) q.disableNotifications(mem);
          else q.enableNotifications(mem);
        });
      }
    }
  },
};
