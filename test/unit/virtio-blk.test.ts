import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { openImage, type ImageFile } from '../../src/backends/raw-image.js';
import { closeFd, eventfd, eventfdDrain, eventfdSignal, openFile } from '../../src/host/libc.js';
import { BlkStatus, BlkType, VirtioBlock } from '../../src/virtio/block.js';
import type { QueueState } from '../../src/virtio/queue.js';
import { until } from '../support/until.js';
import { SimDriver, type Buf } from '../support/virtio-driver.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-blk-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const SECTORS = 64;

function imageFile(): string {
  const file = path.join(dir, `disk-${Math.random().toString(36).slice(2)}.img`);
  const initial = Buffer.alloc(SECTORS * 512);
  for (let i = 0; i < initial.length; i++) initial[i] = i % 251;
  fs.writeFileSync(file, initial);
  return file;
}

/** A virtio-blk device with queue 0 started in its worker through the per-queue contract, as the transport does it. */
function setup(opts: { readOnly?: boolean; serial?: string; cache?: 'none' | 'writeback'; queueSize?: number; image?: ImageFile } = {}) {
  const file = opts.image?.path ?? imageFile();
  const image = opts.image ?? openImage({ path: file, readOnly: opts.readOnly ?? false, cache: opts.cache ?? 'writeback' });
  const blk = new VirtioBlock({ name: 'blk', image, serial: opts.serial });
  const d = new SimDriver(opts.queueSize ?? 16, true);
  const failures: string[] = [];
  const fds = { kick: eventfd(), call: eventfd() };
  blk.activate(0n, d.mem.table(), { fail: (reason) => failures.push(reason), configChanged: () => {} });
  const start = (state: QueueState) => blk.startQueue({ index: 0, state, kickFd: fds.kick, callFd: fds.call });
  start(d.queue.state());
  const close = async () => {
    await blk.close();
    closeFd(fds.kick);
    closeFd(fds.call);
  };
  return { file, blk, d, failures, fds, start, kick: () => eventfdSignal(fds.kick), close };
}

type Setup = ReturnType<typeof setup>;

/** Posts one request (header, then `data` buffers, then a status byte) and waits for it to complete. */
async function request(s: Setup, type: number, sector: number, data: Buf[]): Promise<{ status: number; len: number }> {
  const header = s.d.alloc(16);
  s.d.mem.writeU32(header, type);
  s.d.mem.writeU64(header + 8, BigInt(sector));
  const status = s.d.alloc(1, 0xee);
  const head = s.d.post([{ addr: header, len: 16 }, ...data, { addr: status, len: 1, write: true }]);
  s.kick();
  let used: { id: number; len: number }[] = [];
  await until('the request completed', () => (used = s.d.takeUsed()).length > 0);
  assert.equal(used[0]!.id, head);
  return { status: s.d.mem.readU8(status), len: used[0]!.len };
}

/** Posts a write of sector `i` filled with `i + 1`; returns its head. */
function postWrite(s: Setup, i: number): number {
  const header = s.d.alloc(16);
  s.d.mem.writeU32(header, BlkType.OUT);
  s.d.mem.writeU64(header + 8, BigInt(i % SECTORS));
  return s.d.post([
    { addr: header, len: 16 },
    { addr: s.d.alloc(512, (i % 250) + 1), len: 512 },
    { addr: s.d.alloc(1), len: 1, write: true },
  ]);
}

test('virtio-blk: writes land in the file, reads come from it, byte for byte', async () => {
  const s = setup();
  const out = s.d.alloc(1024, 0x5a);
  assert.deepEqual(await request(s, BlkType.OUT, 3, [{ addr: out, len: 1024 }]), { status: BlkStatus.OK, len: 1 });
  const file = fs.readFileSync(s.file);
  assert.ok(file.subarray(3 * 512, 5 * 512).every((b) => b === 0x5a));
  assert.equal(file[3 * 512 - 1], (3 * 512 - 1) % 251, 'the sector before is untouched');
  // A read split over two buffers of odd sizes.
  const a = s.d.alloc(300);
  const b = s.d.alloc(724);
  assert.deepEqual(
    await request(s, BlkType.IN, 2, [
      { addr: a, len: 300, write: true },
      { addr: b, len: 724, write: true },
    ]),
    { status: BlkStatus.OK, len: 1025 },
  );
  const got = Buffer.concat([s.d.mem.read(a, 300), s.d.mem.read(b, 724)]);
  assert.deepEqual(got, file.subarray(2 * 512, 4 * 512));
  assert.deepEqual(await request(s, BlkType.FLUSH, 0, []), { status: BlkStatus.OK, len: 1 });
  await s.close();
});

test('virtio-blk: out-of-range sectors, partial sectors and unknown types get IOERR or UNSUPP, never touching the file', async () => {
  const s = setup();
  const before = fs.readFileSync(s.file);
  const buf = s.d.alloc(1024, 0x77);
  assert.equal((await request(s, BlkType.OUT, SECTORS - 1, [{ addr: buf, len: 1024 }])).status, BlkStatus.IOERR);
  assert.equal((await request(s, BlkType.IN, SECTORS, [{ addr: buf, len: 512, write: true }])).status, BlkStatus.IOERR);
  assert.equal((await request(s, BlkType.IN, 2 ** 60, [{ addr: buf, len: 512, write: true }])).status, BlkStatus.IOERR);
  assert.equal((await request(s, BlkType.OUT, 0, [{ addr: buf, len: 100 }])).status, BlkStatus.IOERR);
  assert.equal((await request(s, 0x7777, 0, [])).status, BlkStatus.UNSUPP);
  // A discard with flags it must not have, and one with a truncated range list.
  const range = s.d.alloc(16);
  s.d.mem.writeU32(range + 12, 1);
  assert.equal((await request(s, BlkType.DISCARD, 0, [{ addr: range, len: 16 }])).status, BlkStatus.UNSUPP);
  assert.equal((await request(s, BlkType.DISCARD, 0, [{ addr: range, len: 10 }])).status, BlkStatus.UNSUPP);
  assert.deepEqual(fs.readFileSync(s.file), before);
  await s.close();
});

test('virtio-blk: a request with no status byte or a short header is answered without a crash', async () => {
  const s = setup();
  // No writable byte at all: nothing can be reported, the chain just goes back.
  const header = s.d.alloc(16);
  const head = s.d.post([{ addr: header, len: 16 }]);
  s.kick();
  let used: { id: number; len: number }[] = [];
  await until('the chain came back', () => (used = s.d.takeUsed()).length > 0);
  assert.deepEqual(used, [{ id: head, len: 0 }]);
  // An 8-byte header.
  const short = s.d.alloc(8);
  const status = s.d.alloc(1, 0xee);
  s.d.post([
    { addr: short, len: 8 },
    { addr: status, len: 1, write: true },
  ]);
  s.kick();
  await until('the request completed', () => s.d.takeUsed().length > 0);
  assert.equal(s.d.mem.readU8(status), BlkStatus.IOERR);
  await s.close();
});

test('virtio-blk: a read-only drive refuses writes, discards and zeroing', async () => {
  const s = setup({ readOnly: true });
  const before = fs.readFileSync(s.file);
  const buf = s.d.alloc(512, 1);
  assert.equal((await request(s, BlkType.OUT, 0, [{ addr: buf, len: 512 }])).status, BlkStatus.IOERR);
  const range = s.d.alloc(16);
  s.d.mem.writeU32(range + 8, 1);
  assert.equal((await request(s, BlkType.WRITE_ZEROES, 0, [{ addr: range, len: 16 }])).status, BlkStatus.IOERR);
  assert.equal((await request(s, BlkType.IN, 0, [{ addr: buf, len: 512, write: true }])).status, BlkStatus.OK);
  assert.deepEqual(fs.readFileSync(s.file), before);
  await s.close();
});

test('virtio-blk: GET_ID returns the serial; WRITE_ZEROES and DISCARD leave zeros', async () => {
  const s = setup({ serial: 'tsv-1' });
  const id = s.d.alloc(20, 0xff);
  assert.equal((await request(s, BlkType.GET_ID, 0, [{ addr: id, len: 20, write: true }])).status, BlkStatus.OK);
  assert.equal(Buffer.from(s.d.mem.read(id, 20)).toString('latin1'), 'tsv-1' + '\0'.repeat(15));
  const range = s.d.alloc(32);
  s.d.mem.writeU64(range, 4n);
  s.d.mem.writeU32(range + 8, 2);
  s.d.mem.writeU32(range + 12, 0);
  s.d.mem.writeU64(range + 16, 10n);
  s.d.mem.writeU32(range + 24, 1);
  s.d.mem.writeU32(range + 28, 1); // unmap allowed
  assert.equal((await request(s, BlkType.WRITE_ZEROES, 0, [{ addr: range, len: 32 }])).status, BlkStatus.OK);
  const discard = s.d.alloc(16);
  s.d.mem.writeU64(discard, 20n);
  s.d.mem.writeU32(discard + 8, 8);
  assert.equal((await request(s, BlkType.DISCARD, 0, [{ addr: discard, len: 16 }])).status, BlkStatus.OK);
  const file = fs.readFileSync(s.file);
  assert.ok(file.subarray(4 * 512, 6 * 512).every((b) => b === 0));
  assert.ok(file.subarray(10 * 512, 11 * 512).every((b) => b === 0));
  assert.ok(
    file.subarray(20 * 512, 28 * 512).every((b) => b === 0),
    'discarded sectors read as zeros (hole punched)',
  );
  assert.equal(file[6 * 512], (6 * 512) % 251, 'outside the ranges nothing changed');
  assert.equal(file.length, SECTORS * 512, 'the file keeps its size');
  await s.close();
});

test('virtio-blk: a batch of requests completes with one interrupt, and a hostile chain fails the device instead of the VMM', async () => {
  const s = setup();
  for (let i = 0; i < 8; i++) {
    const header = s.d.alloc(16);
    s.d.mem.writeU32(header, BlkType.OUT);
    s.d.mem.writeU64(header + 8, BigInt(i));
    s.d.postIndirect([
      { addr: header, len: 16 },
      { addr: s.d.alloc(512, i + 1), len: 512 },
      { addr: s.d.alloc(1), len: 1, write: true },
    ]);
  }
  s.kick();
  await until('8 writes were done', () => s.blk.stats().writes === 8);
  await until('the driver was interrupted', () => eventfdDrain(s.fds.call) > 0);
  assert.equal(s.blk.stats().calls, 1, 'one interrupt for the batch');
  const file = fs.readFileSync(s.file);
  for (let i = 0; i < 8; i++) assert.ok(file.subarray(i * 512, (i + 1) * 512).every((b) => b === i + 1));
  s.d.publish(99); // a head outside the table
  s.kick();
  await until('the device failed', () => s.failures.length > 0);
  assert.match(s.failures[0]!, /chain head 99/);
  // The worker is still there: a restarted queue serves requests.
  s.d.takeUsed();
  await s.blk.stopQueue(0);
  const fresh = new SimDriver(16, true, { mem: s.d.mem, ringOffset: 0x8000, dataStart: 0x60000 });
  s.d = fresh;
  s.start(fresh.queue.state());
  assert.equal((await request(s, BlkType.IN, 0, [{ addr: fresh.alloc(512), len: 512, write: true }])).status, BlkStatus.OK);
  await s.close();
});

test('virtio-blk: stopped mid-stream, the queue state restarts it where it was: every request done once, none lost', async () => {
  const s = setup({ queueSize: 256 });
  const heads = Array.from({ length: 200 }, (_, i) => postWrite(s, i));
  s.kick();
  const state = await s.blk.stopQueue(0);
  assert.ok(state, 'a running queue gives its state back');
  const doneBeforeStop = s.d.takeUsed();
  assert.equal(state.nextUsed, doneBeforeStop.length, 'the state says how far the device got');
  assert.equal(state.nextAvail, state.nextUsed, 'no chain was held back');
  // More requests while stopped, then a restart from the state (as after a migration or a back-end swap).
  const more = Array.from({ length: 40 }, (_, i) => postWrite(s, 200 + i));
  s.start(state);
  const used = [...doneBeforeStop];
  await until('every request completed', () => (used.push(...s.d.takeUsed()), used.length >= 240));
  await new Promise((r) => setTimeout(r, 20));
  used.push(...s.d.takeUsed());
  assert.deepEqual(
    used.map((u) => u.id),
    [...heads, ...more],
    'each request completed once, in ring order',
  );
  const file = fs.readFileSync(s.file);
  for (let i = 176; i < 240; i++)
    assert.ok(
      file.subarray((i % SECTORS) * 512, ((i % SECTORS) + 1) * 512).every((b) => b === (i % 250) + 1),
      `sector ${i % SECTORS} has the last write`,
    );
  await s.close();
});

test('virtio-blk: a back-end that fails its reads gives the guest I/O errors, not a hang', async () => {
  const file = imageFile();
  // A write-only descriptor: every read the data plane tries fails in the kernel (EBADF).
  const s = setup({ image: { path: file, fd: openFile(file, 1 /* O_WRONLY */), size: SECTORS * 512, readOnly: false, cache: 'writeback' } });
  const buf = s.d.alloc(512);
  assert.equal((await request(s, BlkType.IN, 0, [{ addr: buf, len: 512, write: true }])).status, BlkStatus.IOERR);
  assert.equal((await request(s, BlkType.OUT, 0, [{ addr: buf, len: 512 }])).status, BlkStatus.OK, 'writes still work');
  assert.equal(s.blk.stats().ioErrors, 1);
  assert.deepEqual(s.failures, [], "an I/O error is the request's, not the device's");
  await s.close();
});

test('virtio-blk: a device worker that dies fails its device, and the next start gets a new worker', async () => {
  const s = setup();
  assert.equal((await request(s, BlkType.IN, 0, [{ addr: s.d.alloc(512), len: 512, write: true }])).status, BlkStatus.OK);
  await s.blk.worker()!.kill();
  await until('the device failed', () => s.failures.length > 0);
  assert.match(s.failures[0]!, /device worker exited/);
  assert.equal(await s.blk.stopQueue(0), undefined, 'a dead worker has no state to give');
  const fresh = new SimDriver(16, true, { mem: s.d.mem, ringOffset: 0x8000, dataStart: 0x60000 });
  s.d = fresh;
  s.start(fresh.queue.state());
  assert.equal((await request(s, BlkType.IN, 1, [{ addr: fresh.alloc(512), len: 512, write: true }])).status, BlkStatus.OK);
  assert.equal(s.blk.stats().reads, 2, "the dead worker's counters are kept");
  await s.close();
});

test('virtio-blk: two queues share the device worker; one stopped or failed leaves the other serving', async () => {
  const file = imageFile();
  const blk = new VirtioBlock({ name: 'blk', image: openImage({ path: file, readOnly: false, cache: 'writeback' }), queues: 2 });
  const first = new SimDriver(16, true);
  const second = new SimDriver(16, true, { mem: first.mem, ringOffset: 0x8000, dataStart: 0x60000 });
  const failures: string[] = [];
  const fds = [0, 1].map(() => ({ kick: eventfd(), call: eventfd() }));
  blk.activate(0n, first.mem.table(), { fail: (reason) => failures.push(reason), configChanged: () => {} });
  [first, second].forEach((d, index) => blk.startQueue({ index, state: d.queue.state(), kickFd: fds[index]!.kick, callFd: fds[index]!.call }));
  const read = async (index: number, d: SimDriver, sector: number) => {
    const s = { d, kick: () => eventfdSignal(fds[index]!.kick) } as Setup;
    const buf = d.alloc(512);
    const r = await request(s, BlkType.IN, sector, [{ addr: buf, len: 512, write: true }]);
    return { status: r.status, first: d.mem.readU8(buf) };
  };
  assert.deepEqual(await read(0, first, 1), { status: BlkStatus.OK, first: 512 % 251 });
  assert.deepEqual(await read(1, second, 2), { status: BlkStatus.OK, first: 1024 % 251 });
  assert.ok(eventfdDrain(fds[0]!.call) && eventfdDrain(fds[1]!.call), "each queue's interrupt goes to its own call fd");
  const state = await blk.stopQueue(0);
  assert.equal(state?.nextAvail, 1);
  assert.deepEqual(await read(1, second, 3), { status: BlkStatus.OK, first: 1536 % 251 }, 'queue 1 serves on');
  second.publish(99); // a head outside the table fails queue 1 only
  eventfdSignal(fds[1]!.kick);
  await until('queue 1 failed', () => failures.length > 0);
  assert.match(failures[0]!, /^queue 1: /);
  blk.startQueue({ index: 0, state: state!, kickFd: fds[0]!.kick, callFd: fds[0]!.call });
  assert.deepEqual(await read(0, first, 4), { status: BlkStatus.OK, first: 2048 % 251 }, 'queue 0 restarts where it stopped');
  assert.equal(blk.stats().reads, 4);
  await blk.close();
  for (const f of fds) (closeFd(f.kick), closeFd(f.call));
});

test('virtio-blk cache=none: O_DIRECT I/O, also from guest buffers too misaligned for it (bounced), moves the right bytes', async () => {
  const s = setup({ cache: 'none' });
  const out = s.d.alloc(4096 + 3, 0x6b) + 3; // not even 4-byte aligned
  assert.equal((await request(s, BlkType.OUT, 8, [{ addr: out, len: 4096 }])).status, BlkStatus.OK);
  const into = s.d.alloc(4096 + 1) + 1;
  assert.equal((await request(s, BlkType.IN, 7, [{ addr: into, len: 4096, write: true }])).status, BlkStatus.OK);
  const file = fs.readFileSync(s.file);
  assert.ok(file.subarray(8 * 512, 16 * 512).every((b) => b === 0x6b));
  assert.deepEqual(Buffer.from(s.d.mem.read(into, 4096)), file.subarray(7 * 512, 15 * 512));
  await s.close();
});

test('virtio-blk: DISCARD and WRITE_ZEROES check every range before doing any', async () => {
  const s = setup();
  for (const type of [BlkType.DISCARD, BlkType.WRITE_ZEROES]) {
    const ranges = s.d.alloc(32);
    s.d.mem.writeU64(ranges, 4n); // a good range first
    s.d.mem.writeU32(ranges + 8, 2);
    s.d.mem.writeU64(ranges + 16, BigInt(SECTORS)); // then one past the end of the disk
    s.d.mem.writeU32(ranges + 24, 1);
    assert.equal((await request(s, type, 0, [{ addr: ranges, len: 32 }])).status, BlkStatus.IOERR);
  }
  const file = fs.readFileSync(s.file);
  for (let i = 4 * 512; i < 6 * 512; i++) assert.equal(file[i], i % 251, `byte ${i} of the good range is untouched`);
  await s.close();
});
