import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Bus } from '../../src/devices/bus.js';
import { CoalescedRing, RING_ENTRIES } from '../../src/vmm/coalesced-ring.js';

const NO_ERRORS = { onError: (e: unknown) => assert.fail(String(e)) };

/** Lays out a ring page the way KVM fills it. */
function page(first: number, entries: { slot: number; addr: number; pio: boolean; data: number[] }[], last: number): ArrayBuffer {
  const buf = new ArrayBuffer(2 * 4096);
  const v = new DataView(buf, 4096);
  v.setUint32(0, first, true);
  v.setUint32(4, last, true);
  for (const e of entries) {
    const at = 8 + e.slot * 24;
    v.setBigUint64(at, BigInt(e.addr), true);
    v.setUint32(at + 8, e.data.length, true);
    v.setUint32(at + 12, e.pio ? 1 : 0, true);
    e.data.forEach((b, i) => v.setUint8(at + 16 + i, b));
  }
  return buf;
}

test('coalesced ring: queued writes reach their bus in order, wrapping, and free their slots', () => {
  const seen: string[] = [];
  const pio = new Bus('pio');
  const mmio = new Bus('mmio');
  pio.insert({ name: 'cf8', read: (_o, d) => d.fill(0), write: (o, d) => seen.push(`pio+${o}:${[...d]}`) }, 0xcf8, 4);
  mmio.insert({ name: 'm', read: (_o, d) => d.fill(0), write: (o, d) => seen.push(`mmio+${o}:${[...d]}`) }, 0x1000, 16);
  const last = RING_ENTRIES - 1;
  const buf = page(
    last,
    [
      { slot: last, addr: 0xcf8, pio: true, data: [0, 8, 0, 0x80] },
      { slot: 0, addr: 0x1004, pio: false, data: [7] },
    ],
    1,
  );
  const ring = new CoalescedRing(buf, 4096);
  assert.equal(ring.drain(pio, mmio, NO_ERRORS), true);
  assert.deepEqual(seen, ['pio+0:0,8,0,128', 'mmio+4:7']);
  assert.equal(new DataView(buf, 4096).getUint32(0, true), 1);
  assert.equal(ring.drained, 2);
  ring.drain(pio, mmio, NO_ERRORS);
  assert.equal(seen.length, 2, 'an empty ring does nothing');
});

test('coalesced ring: indices beyond the ring are ignored', () => {
  const pio = new Bus('pio');
  const ring = new CoalescedRing(page(0, [], RING_ENTRIES + 5), 4096);
  ring.drain(pio, new Bus('mmio'), NO_ERRORS);
  assert.equal(ring.drained, 0);
});

test('coalesced ring: a drainer stops at the first entry it may not apply, leaving it and the rest in order; a device that throws costs only its entry', () => {
  const seen: string[] = [];
  const pio = new Bus('pio');
  const mmio = new Bus('mmio');
  pio.insert({ name: 'cf8', read: (_o, d) => d.fill(0), write: (_o, d) => seen.push(`pio:${d[0]}`) }, 0xcf8, 4);
  mmio.insert(
    {
      name: 'nic',
      read: (_o, d) => d.fill(0),
      write: (_o, d) => {
        if (d[0] === 0xee) throw new Error('guest-triggered');
        seen.push(`mmio:${d[0]}`);
      },
    },
    0x1000,
    16,
  );
  const entries = [
    { slot: 0, addr: 0xcf8, pio: true, data: [1, 0, 0, 0x80] },
    { slot: 1, addr: 0x1000, pio: false, data: [2, 0, 0, 0] },
    { slot: 2, addr: 0xcf8, pio: true, data: [3, 0, 0, 0x80] },
    { slot: 3, addr: 0x1000, pio: false, data: [0xee, 0, 0, 0] },
    { slot: 4, addr: 0x1000, pio: false, data: [5, 0, 0, 0] },
  ];
  const buf = page(0, entries, 5);
  const ring = new CoalescedRing(buf, 4096);
  const errors: unknown[] = [];
  // A vCPU thread: only port writes are its own.
  assert.equal(ring.drain(pio, mmio, { take: (isPio) => isPio, onError: (e) => errors.push(e) }), false);
  assert.deepEqual(seen, ['pio:1']);
  // The main thread then takes everything, in order.
  assert.equal(ring.drain(pio, mmio, { onError: (e) => errors.push(e) }), true);
  assert.deepEqual(seen, ['pio:1', 'mmio:2', 'pio:3', 'mmio:5']);
  assert.equal(errors.length, 1);
  assert.equal(ring.drained, 5);
  assert.equal(mmio.counters().get('nic')!.queued, 3);
  assert.equal(mmio.counters().get('nic')!.writes, 0, 'queued writes are not exits');
});
