import assert from 'node:assert/strict';
import { test } from 'node:test';
import { QueueError, SplitQueue, type QueueState, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/virtio/queue.js';
import { AVAIL_RING, DESC_TABLE, RAM_SIZE, SimDriver, USED_RING } from '../support/virtio-driver.js';
import { rng } from '../support/seeded-random.js';

test('virtqueue: chains come out as readable then writable segments, and used entries go back in order', () => {
  const d = new SimDriver(8);
  const a = d.alloc(16);
  const b = d.alloc(512);
  const c = d.alloc(1);
  const h1 = d.post([
    { addr: a, len: 16 },
    { addr: b, len: 512, write: true },
    { addr: c, len: 1, write: true },
  ]);
  const h2 = d.postIndirect([
    { addr: a, len: 16 },
    { addr: c, len: 1, write: true },
  ]);
  const c1 = d.queue.pop(d.mem)!;
  assert.deepEqual(c1, {
    head: h1,
    readable: [{ addr: a, len: 16 }],
    writable: [
      { addr: b, len: 512 },
      { addr: c, len: 1 },
    ],
  });
  const c2 = d.queue.pop(d.mem)!;
  assert.deepEqual(c2, { head: h2, readable: [{ addr: a, len: 16 }], writable: [{ addr: c, len: 1 }] });
  assert.equal(d.queue.pop(d.mem), undefined);
  d.queue.pushUsed(d.mem, h2, 1);
  d.queue.pushUsed(d.mem, h1, 513);
  assert.deepEqual(d.takeUsed(), [
    { id: h2, len: 1 },
    { id: h1, len: 513 },
  ]);
});

test('virtqueue: indices wrap around the ring and around 65536', () => {
  const d = new SimDriver(4);
  const buf = d.alloc(8);
  for (let i = 0; i < 70_000; i++) {
    const head = d.post([{ addr: buf, len: 8, write: true }]);
    const chain = d.queue.pop(d.mem)!;
    assert.equal(chain.head, head);
    d.queue.pushUsed(d.mem, chain.head, 8);
    assert.equal(d.takeUsed().length, 1);
  }
});

test('virtqueue: the factory refuses bad sizes, misaligned rings, rings outside RAM and bad indices', () => {
  const d = new SimDriver(16);
  const good = d.queue.state();
  const refuses = (change: Partial<QueueState>, why: string) => assert.throws(() => SplitQueue.fromState(16, { ...good, ...change }, d.mem), QueueError, why);
  refuses({ size: 12 }, 'not a power of two');
  refuses({ size: 32 }, 'larger than the device allows');
  refuses({ descTable: DESC_TABLE + 8 }, 'misaligned descriptor table');
  refuses({ descTable: RAM_SIZE - 16 }, 'descriptor table past the end of RAM');
  refuses({ usedRing: USED_RING + 2 }, 'misaligned used ring');
  refuses({ availRing: Number.MAX_VALUE }, 'not an address');
  refuses({ nextAvail: 65536 }, 'index past 16 bits');
  refuses({ nextUsed: 1.5 }, 'index not an integer');
  assert.deepEqual(SplitQueue.fromState(16, good, d.mem).state(), good);
});

test('virtqueue: stopped mid-stream, its state as JSON and a fresh queue from it go on where it was, nothing lost or done twice', () => {
  const d = new SimDriver(8, true);
  const buf = d.alloc(8);
  const heads: number[] = [];
  let q = d.queue;
  for (let round = 0; round < 40; round++) {
    for (let i = 0; i < 5; i++) d.post([{ addr: buf, len: 8, write: true }]);
    // Take three, stop, restart from plain data, take the rest.
    for (let i = 0; i < 3; i++) {
      const c = q.pop(d.mem)!;
      heads.push(c.head);
      q.pushUsed(d.mem, c.head, 8);
    }
    q = SplitQueue.fromState(8, JSON.parse(JSON.stringify(q.state())) as QueueState, d.mem);
    for (let c = q.pop(d.mem); c; c = q.pop(d.mem)) {
      heads.push(c.head);
      q.pushUsed(d.mem, c.head, 8);
    }
    assert.equal(d.takeUsed().length, 5, `round ${round}: every chain came back once`);
  }
  assert.equal(heads.length, 200);
  assert.equal(q.state().nextAvail, 200);
  assert.equal(q.state().nextUsed, 200);
});

/** Hostile chains, each built by writing raw descriptors. */
const HOSTILE: [string, (d: SimDriver) => void][] = [
  [
    'a descriptor that links to itself',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: 0x10000, len: 4, flags: VIRTQ_DESC_F_NEXT, next: 0 });
      d.publish(0);
    },
  ],
  [
    'a two-descriptor loop',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: 0x10000, len: 4, flags: VIRTQ_DESC_F_NEXT, next: 1 });
      d.writeDesc(DESC_TABLE, 1, { addr: 0x10000, len: 4, flags: VIRTQ_DESC_F_NEXT, next: 0 });
      d.publish(0);
    },
  ],
  [
    'a next index outside the table',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: 0x10000, len: 4, flags: VIRTQ_DESC_F_NEXT, next: 999 });
      d.publish(0);
    },
  ],
  ['a head outside the table', (d) => d.publish(40)],
  [
    'a buffer outside guest RAM',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: RAM_SIZE + 0x1000, len: 4, flags: 0, next: 0 });
      d.publish(0);
    },
  ],
  [
    'a buffer that runs off the end of RAM',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: RAM_SIZE - 8, len: 16, flags: 0, next: 0 });
      d.publish(0);
    },
  ],
  [
    'a buffer at a 64-bit address',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: 2 ** 52, len: 1, flags: 0, next: 0 });
      d.mem.writeU64(DESC_TABLE, 0xffff_ffff_ffff_f000n);
      d.publish(0);
    },
  ],
  [
    'a length that wraps 32 bits',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: 0x10000, len: 0xffffffff, flags: 0, next: 0 });
      d.publish(0);
    },
  ],
  [
    'an indirect table inside an indirect table',
    (d) => {
      const inner = d.alloc(16);
      const outer = d.alloc(16);
      d.writeDesc(outer, 0, { addr: inner, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
      d.writeDesc(DESC_TABLE, 0, { addr: outer, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
      d.publish(0);
    },
  ],
  [
    'an indirect descriptor that also has NEXT',
    (d) => {
      const t = d.alloc(16);
      d.writeDesc(DESC_TABLE, 0, { addr: t, len: 16, flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, next: 1 });
      d.publish(0);
    },
  ],
  [
    'an indirect table of a length not a multiple of 16',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: d.alloc(32), len: 20, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
      d.publish(0);
    },
  ],
  [
    'an empty indirect table',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: d.alloc(16), len: 0, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
      d.publish(0);
    },
  ],
  [
    'an indirect table that loops',
    (d) => {
      const t = d.alloc(32);
      d.writeDesc(t, 0, { addr: 0x10000, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 1 });
      d.writeDesc(t, 1, { addr: 0x10000, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 0 });
      d.writeDesc(DESC_TABLE, 0, { addr: t, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
      d.publish(0);
    },
  ],
  [
    "a chain longer than the device's largest queue through an indirect table",
    (d) => {
      const n = 64;
      const t = d.alloc(n * 16);
      for (let i = 0; i < n; i++) d.writeDesc(t, i, { addr: 0x10000, len: 1, flags: i < n - 1 ? VIRTQ_DESC_F_NEXT : 0, next: i + 1 });
      d.writeDesc(DESC_TABLE, 0, { addr: t, len: n * 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
      d.publish(0);
    },
  ],
  [
    'a readable buffer after a writable one',
    (d) => {
      d.writeDesc(DESC_TABLE, 0, { addr: 0x10000, len: 4, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 1 });
      d.writeDesc(DESC_TABLE, 1, { addr: 0x10000, len: 4, flags: 0, next: 0 });
      d.publish(0);
    },
  ],
  ['an available index far ahead of the device', (d) => d.mem.writeU16(AVAIL_RING + 2, 1000)],
];

for (const [what, build] of HOSTILE) {
  test(`virtqueue: ${what} is refused with QueueError, and nothing outside the used ring changes`, () => {
    const d = new SimDriver(16);
    build(d);
    const before = d.mem.read(0, RAM_SIZE);
    assert.throws(() => d.queue.pop(d.mem), QueueError);
    assert.deepEqual(d.mem.read(0, RAM_SIZE), before, 'pop wrote nothing');
  });
}

test('virtqueue: an indirect table as long as the queue is accepted (Linux fills one for a maximal request)', () => {
  const d = new SimDriver(16);
  const bufs = Array.from({ length: 16 }, (_, i) => ({ addr: d.alloc(8), len: 8, write: i > 0 }));
  d.postIndirect(bufs);
  const c = d.queue.pop(d.mem)!;
  assert.equal(c.readable.length + c.writable.length, 16);
});

test("virtqueue: an indirect table longer than the ring but within the device's largest queue is accepted (QEMU's vhost-user-blk-pci picks 128-entry rings under a seg_max of 254)", () => {
  const d = new SimDriver(16);
  const bufs = Array.from({ length: 40 }, (_, i) => ({ addr: d.alloc(8), len: 8, write: i > 0 }));
  d.postIndirect(bufs);
  const q = SplitQueue.fromState(64, d.queue.state(), d.mem);
  const c = q.pop(d.mem)!;
  assert.equal(c.readable.length + c.writable.length, 40);
  // The same table on a device whose largest queue is the ring itself is refused.
  assert.throws(() => SplitQueue.fromState(16, d.queue.state(), d.mem).pop(d.mem), QueueError);
});

test('virtqueue: zero-length buffers are allowed and carry nothing', () => {
  const d = new SimDriver(4);
  d.post([
    { addr: 0x10000, len: 0 },
    { addr: 0x10000, len: 0, write: true },
  ]);
  const c = d.queue.pop(d.mem)!;
  assert.equal(c.readable[0]!.len + c.writable[0]!.len, 0);
});

test('virtqueue: random descriptor tables yield in-RAM, bounded chains or QueueError, never anything else', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const next = rng(seed);
    const size = [2, 4, 8, 16, 64][Math.floor(next() * 5)]!;
    const d = new SimDriver(size, next() < 0.5);
    const pick = (n: number) => Math.floor(next() * n);
    const addr = () => (next() < 0.8 ? pick(RAM_SIZE) : pick(2 ** 40));
    const flags = () => (next() < 0.5 ? VIRTQ_DESC_F_NEXT : 0) | (next() < 0.3 ? VIRTQ_DESC_F_WRITE : 0) | (next() < 0.1 ? VIRTQ_DESC_F_INDIRECT : 0);
    for (let i = 0; i < size; i++) d.writeDesc(DESC_TABLE, i, { addr: addr(), len: pick(next() < 0.5 ? 64 : 2 ** 32), flags: flags(), next: pick(size + 2) });
    // Some indirect tables in RAM, so INDIRECT descriptors sometimes point at real tables.
    for (let i = 0; i < 4; i++) {
      const t = 0x20000 + i * 0x1000;
      for (let j = 0; j < 16; j++) d.writeDesc(t, j, { addr: addr(), len: pick(64), flags: flags(), next: pick(18) });
    }
    for (let i = 0; i < size * 2; i++) {
      if (next() < 0.9) d.publish(pick(size + 1));
      try {
        const chain = d.queue.pop(d.mem);
        if (!chain) continue;
        const segs = [...chain.readable, ...chain.writable];
        // At most size-1 direct descriptors lead to one indirect table of at most size.
        assert.ok(segs.length < 2 * size, `seed ${seed}: chain of ${segs.length} in a queue of ${size}`);
        for (const s of segs) assert.ok(d.mem.contains(s.addr, s.len), `seed ${seed}: segment outside RAM`);
        d.queue.pushUsed(d.mem, chain.head, 0);
      } catch (e) {
        assert.ok(e instanceof QueueError, `seed ${seed}: ${(e as Error).stack}`);
      }
    }
    d.mem.close();
  }
});

test('virtqueue EVENT_IDX: interrupts only when the used index passes used_event; avail_event tells the driver where to kick', () => {
  const d = new SimDriver(8, true);
  const buf = d.alloc(4);
  d.setUsedEvent(2); // interrupt me after the third used entry
  for (let i = 0; i < 3; i++) d.post([{ addr: buf, len: 4, write: true }]);
  const interrupts: boolean[] = [];
  for (let i = 0; i < 3; i++) {
    const c = d.queue.pop(d.mem)!;
    d.queue.pushUsed(d.mem, c.head, 4);
    interrupts.push(d.queue.needsInterrupt(d.mem));
  }
  assert.deepEqual(interrupts, [false, false, true]);
  assert.equal(d.queue.enableNotifications(d.mem), false, 'nothing new arrived');
  assert.equal(d.availEvent, 3);
  d.post([{ addr: buf, len: 4, write: true }]);
  assert.equal(d.queue.enableNotifications(d.mem), true, 'a buffer arrived since the device looked');
});

test("virtqueue without EVENT_IDX: the driver's NO_INTERRUPT flag suppresses interrupts", () => {
  const d = new SimDriver(4);
  const buf = d.alloc(4);
  d.post([{ addr: buf, len: 4, write: true }]);
  const c = d.queue.pop(d.mem)!;
  d.queue.pushUsed(d.mem, c.head, 4);
  assert.equal(d.queue.needsInterrupt(d.mem), true);
  d.mem.writeU16(AVAIL_RING, 1);
  assert.equal(d.queue.needsInterrupt(d.mem), false);
});

test('virtqueue: a chain that fails its checks is not consumed, so the ring position stays exact', () => {
  const d = new SimDriver(8);
  const good = d.alloc(16);
  d.writeDesc(DESC_TABLE, 0, { addr: good, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 7 });
  d.writeDesc(DESC_TABLE, 7, { addr: RAM_SIZE, len: 16, flags: 0, next: 0 }); // outside RAM
  d.publish(0);
  assert.throws(() => d.queue.pop(d.mem), QueueError);
  d.writeDesc(DESC_TABLE, 7, { addr: good, len: 16, flags: 0, next: 0 });
  const chain = d.queue.pop(d.mem);
  assert.equal(chain?.head, 0, 'the same chain, once it is valid');
  assert.equal(d.queue.pop(d.mem), undefined);
});
