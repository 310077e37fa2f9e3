import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GuestMemory, GuestMemoryError, gpa } from '../../src/memory/guest-memory.js';

const twoRegions = () =>
  GuestMemory.fromBuffers([
    { start: gpa(0), size: 0x10000 },
    { start: gpa(0x100000), size: 0x10000 },
  ]);

test('reads and writes every width, little-endian', () => {
  const m = twoRegions();
  m.writeU64(0x100008, 0x0102030405060708n);
  assert.equal(m.readU8(0x100008), 0x08);
  assert.equal(m.readU16(0x100008), 0x0708);
  assert.equal(m.readU32(0x100008), 0x05060708);
  assert.equal(m.readU64(0x100008), 0x0102030405060708n);
  m.writeU32(0x10, 0xffffffff);
  assert.equal(m.readU32(0x10), 0xffffffff);
});

test('refuses accesses outside RAM, across the hole, or with bad numbers', () => {
  const m = twoRegions();
  const bad: [number, number][] = [
    [0x10000, 1], // just past region 0
    [0xfffe, 4], // straddles the end of region 0
    [0x50000, 1], // in the hole
    [0x10fff8, 16], // runs off region 1
    [-1, 1],
    [Number.NaN, 1],
    [2 ** 60, 1],
    [0, -1],
  ];
  for (const [addr, len] of bad) {
    assert.equal(m.contains(addr, len), false, `${addr}+${len}`);
    assert.throws(() => m.read(addr, len), GuestMemoryError);
  }
  assert.throws(() => m.writeU64(0xfffc, 1n), GuestMemoryError);
  assert.throws(() => m.readU16(0x1ffff + 0x100000 - 0x10000), GuestMemoryError);
});

test('a refused write changes nothing', () => {
  const m = twoRegions();
  m.fill(0xfff0, 16, 0x5a);
  assert.throws(() => m.write(0xfff8, new Uint8Array(16)));
  assert.deepEqual([...m.read(0xfff0, 16)], new Array(16).fill(0x5a));
});

test('slices are live views; reads are copies', () => {
  const m = twoRegions();
  const view = m.slice(0x100, 4);
  view[0] = 9;
  assert.equal(m.readU8(0x100), 9);
  const copy = m.read(0x100, 4);
  copy[0] = 1;
  assert.equal(m.readU8(0x100), 9);
});

test('overlapping or unaligned layouts are refused', () => {
  assert.throws(
    () =>
      GuestMemory.fromBuffers([
        { start: gpa(0), size: 0x2000 },
        { start: gpa(0x1000), size: 0x1000 },
      ]),
    /overlap/,
  );
  assert.throws(() => GuestMemory.fromBuffers([{ start: gpa(0x10), size: 0x1000 }]), /aligned/);
});
