import assert from 'node:assert/strict';
import { test } from 'node:test';
import { writeCpio, withParentDirs, S_IFDIR, S_IFLNK, S_IFREG } from '../../src/guest/cpio.js';

/** Reads a newc archive back: what the kernel's unpacker would see. */
function readCpio(buf: Buffer): { name: string; mode: number; data: Buffer }[] {
  const out = [];
  let at = 0;
  for (;;) {
    assert.equal(buf.toString('ascii', at, at + 6), '070701');
    const field = (i: number) => parseInt(buf.toString('ascii', at + 6 + i * 8, at + 14 + i * 8), 16);
    const mode = field(1);
    const size = field(6);
    const nameSize = field(11);
    const name = buf.toString('utf8', at + 110, at + 110 + nameSize - 1);
    const dataAt = at + 110 + nameSize + ((4 - ((110 + nameSize) % 4)) % 4);
    const data = buf.subarray(dataAt, dataAt + size);
    at = dataAt + size + ((4 - (size % 4)) % 4);
    if (name === 'TRAILER!!!') return out;
    out.push({ name, mode, data });
  }
}

test('newc archive round-trips files, directories and symlinks with 4-byte alignment', () => {
  const archive = writeCpio(
    withParentDirs([
      { type: 'file', path: 'bin/busybox', data: Buffer.from('abcde'), mode: 0o755 },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
      { type: 'file', path: 'etc/x/y', data: Buffer.alloc(0) },
    ]),
  );
  const entries = readCpio(archive);
  assert.deepEqual(
    entries.map((e) => e.name),
    ['bin', 'bin/busybox', 'bin/sh', 'etc', 'etc/x', 'etc/x/y'],
  );
  assert.equal(entries[0]!.mode, S_IFDIR | 0o755);
  assert.equal(entries[1]!.mode, S_IFREG | 0o755);
  assert.equal(entries[1]!.data.toString(), 'abcde');
  assert.equal(entries[2]!.mode, S_IFLNK | 0o777);
  assert.equal(entries[2]!.data.toString(), 'busybox');
  assert.equal(archive.length % 4, 0);
});

test('paths that escape the archive root are refused', () => {
  assert.throws(() => writeCpio([{ type: 'dir', path: '../etc' }]), /bad cpio path/);
  assert.throws(() => writeCpio([{ type: 'dir', path: '/' }]), /bad cpio path/);
});
