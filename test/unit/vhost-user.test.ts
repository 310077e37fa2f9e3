// vhost-user, both ways, without KVM: tsvisor's front-end device (the one the VMM
// puts behind PCI) driven by a simulated virtio-blk driver over memfd guest RAM,
// talking to tsvisor's own back-end daemon and to qemu-storage-daemon; and the
// daemon facing a hostile front-end that speaks raw messages.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { closeFd, eventfd, eventfdSignal } from '../../src/host/libc.js';
import { sendWithFds, unixConnect } from '../../src/host/unix-socket.js';
import { VhostUserDevice, VhostUserError, type VhostUserBlkSpec } from '../../src/vhost/vhost-user-device.js';
import { MessageReader } from '../../src/vhost/user/connection.js';
import {
  decodeU64,
  encode,
  FLAG_NEED_REPLY,
  memTablePayload,
  ProtocolFeature,
  Request,
  u64Payload,
  vringAddrPayload,
  vringStatePayload,
} from '../../src/vhost/user/protocol.js';
import { BlkType } from '../../src/virtio/block.js';
import { bit, VIRTIO_F_VERSION_1 } from '../../src/virtio/device.js';
import { EventLoop } from '../../src/vmm/event-loop.js';
import { until } from '../support/until.js';
import { SimDriver } from '../support/virtio-driver.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-vhost-user-'));
const loop = new EventLoop((e) => {
  throw e;
});
/** Every process a test started, so a failing test leaves none behind. */
const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
  loop.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const spawnTracked = (...args: Parameters<typeof spawn>): ChildProcess => {
  const child = spawn(...args);
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
};

const SECTORS = 128;
let files = 0;

function imageFile(): string {
  const file = path.join(dir, `disk-${++files}.img`);
  const initial = Buffer.alloc(SECTORS * 512);
  for (let i = 0; i < initial.length; i++) initial[i] = i % 251;
  fs.writeFileSync(file, initial);
  return file;
}

const DAEMON = new URL('../support/vhost-user-daemon.js', import.meta.url).pathname;

/** `tsvisor vhost-user-blk` over `file`, in a process of its own; its log lines are collected. */
async function ourDaemon(file: string, socket = path.join(dir, `blk-${++files}.sock`), extra: string[] = []) {
  const child = spawnTracked(process.execPath, [DAEMON, 'vhost-user-blk', '--socket', socket, '--drive', `file=${file}`, ...extra], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const lines: string[] = [];
  let partial = '';
  child.stderr!.on('data', (d) => {
    const parts = (partial + d).split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  await waitFor('the daemon listens', () => lines.some((l) => l.includes(`on ${socket}`)));
  return {
    socket,
    lines,
    pid: child.pid!,
    /** SIGTERM: the daemon finishes its clients' requests and exits 0. */
    close: async () => {
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
    },
  };
}

/** Waits up to about 5 s: a daemon process starts, a worker thread serves. */
const waitFor = (what: string, done: () => boolean) => until(what, done, 1000);

/** tsvisor's front-end device over `socket`, activated and with queue 0 started as the transport does it. */
function frontEnd(socket: string, extra: Partial<VhostUserBlkSpec> = {}) {
  const d = new SimDriver(16, true);
  const failures: string[] = [];
  const logs: string[] = [];
  const watch = (fd: number, onReadable: () => void) => {
    const token = loop.add(fd, onReadable);
    return () => loop.remove(token);
  };
  const blk = new VhostUserDevice({ kind: 'vhost-user-blk', path: socket, queues: 1, ...extra }, 'vhost-user-blk0', {
    memory: d.mem,
    watch,
    log: (l) => logs.push(l),
  });
  const fds = { kick: eventfd(), call: eventfd() };
  blk.activate(bit(VIRTIO_F_VERSION_1) | (blk.features & bit(9)), d.mem.table(), { fail: (r) => failures.push(r), configChanged: () => {} });
  const start = () => blk.startQueue({ index: 0, state: d.queue.state(), kickFd: fds.kick, callFd: fds.call });
  start();
  const close = async () => {
    await blk.close();
    closeFd(fds.kick);
    closeFd(fds.call);
  };
  return { d, blk, failures, logs, fds, close };
}

type FrontEnd = ReturnType<typeof frontEnd>;

/** One request: header, data buffers, status; waits for its completion and returns the status byte. */
async function request(f: FrontEnd, type: number, sector: number, data: { addr: number; len: number; write?: boolean }[]): Promise<number> {
  const header = f.d.alloc(16);
  f.d.mem.writeU32(header, type);
  f.d.mem.writeU64(header + 8, BigInt(sector));
  const status = f.d.alloc(1, 0xee);
  f.d.post([{ addr: header, len: 16 }, ...data, { addr: status, len: 1, write: true }]);
  eventfdSignal(f.fds.kick);
  await waitFor('the request completed', () => f.d.takeUsed().length > 0);
  return f.d.mem.readU8(status);
}

/** Writes sectors `first`.. with a pattern, flushes, reads them back through the device; returns what was written. */
async function writeAndRead(f: FrontEnd, first: number, count: number, seed: number): Promise<Buffer> {
  const pattern = Buffer.alloc(count * 512);
  for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + seed) & 0xff;
  const src = f.d.alloc(pattern.length);
  f.d.mem.write(src, pattern);
  assert.equal(await request(f, BlkType.OUT, first, [{ addr: src, len: pattern.length }]), 0);
  assert.equal(await request(f, BlkType.FLUSH, 0, []), 0);
  const dst = f.d.alloc(pattern.length, 0x55);
  assert.equal(await request(f, BlkType.IN, first, [{ addr: dst, len: pattern.length, write: true }]), 0);
  assert.deepEqual(Buffer.from(f.d.mem.read(dst, pattern.length)), pattern);
  return pattern;
}

test('vhost-user-blk: tsvisor front-end and tsvisor back-end, bytes land in the file, a ring survives stop and restart', async () => {
  const file = imageFile();
  const daemon = await ourDaemon(file);
  const f = frontEnd(daemon.socket);
  assert.equal(f.blk.configSize, 60);
  const cfg = new Uint8Array(8);
  f.blk.readConfig(0, cfg);
  assert.equal(new DataView(cfg.buffer).getBigUint64(0, true), BigInt(SECTORS), 'capacity comes from the back-end');
  const a = await writeAndRead(f, 3, 4, 1);
  // GET_VRING_BASE stops the ring in the back-end; it starts again where it stood.
  const state = await f.blk.stopQueue(0);
  assert.equal(state?.nextAvail, 3);
  f.blk.startQueue({ index: 0, state: state!, kickFd: f.fds.kick, callFd: f.fds.call });
  const b = await writeAndRead(f, 20, 2, 9);
  await f.close();
  await daemon.close();
  const disk = fs.readFileSync(file);
  assert.deepEqual(disk.subarray(3 * 512, 7 * 512), a);
  assert.deepEqual(disk.subarray(20 * 512, 22 * 512), b);
  assert.equal(disk[0], 0, 'untouched sectors keep their bytes');
  assert.deepEqual(f.failures, []);
});

function hasQsd(): boolean {
  return spawnSync('qemu-storage-daemon', ['--version']).status === 0;
}

async function qsd(file: string, socket: string): Promise<ChildProcess> {
  const child = spawnTracked(
    'qemu-storage-daemon',
    [
      '--blockdev',
      `driver=file,node-name=file0,filename=${file}`,
      '--export',
      `type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path=${socket},writable=on`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  await waitFor('qemu-storage-daemon listens', () => fs.existsSync(socket));
  return child;
}

test('vhost-user-blk: tsvisor front-end against qemu-storage-daemon', { skip: !hasQsd() && 'qemu-storage-daemon is not installed' }, async () => {
  const file = imageFile();
  const socket = path.join(dir, 'qsd.sock');
  const child = await qsd(file, socket);
  try {
    const f = frontEnd(socket);
    const a = await writeAndRead(f, 8, 8, 3);
    const state = await f.blk.stopQueue(0);
    assert.equal(state?.nextAvail, 3);
    await f.close();
    assert.deepEqual(fs.readFileSync(file).subarray(8 * 512, 16 * 512), a);
    assert.deepEqual(f.failures, []);
  } finally {
    child.kill();
  }
});

test('vhost-user-blk: a back-end that goes away fails the device, or with reconnect= is reached again and the ring goes on', async () => {
  const file = imageFile();
  const socket = path.join(dir, 'reconnect.sock');
  let daemon = await ourDaemon(file, socket);
  const plain = frontEnd(socket);
  const f = frontEnd(socket, { reconnect: 0.1 });
  await writeAndRead(f, 1, 1, 5);
  await daemon.close();
  await waitFor('the front-end without reconnect failed', () => plain.failures.length > 0);
  assert.match(plain.failures[0]!, /hung up/);
  await waitFor('the front-end with reconnect noticed', () => f.blk.stats().disconnects === 1);
  assert.deepEqual(f.failures, []);
  daemon = await ourDaemon(file, socket);
  await waitFor('it reconnected', () => f.blk.stats().reconnects === 1);
  const b = await writeAndRead(f, 40, 2, 7);
  await f.close();
  await plain.close();
  await daemon.close();
  assert.deepEqual(fs.readFileSync(file).subarray(40 * 512, 42 * 512), b);
  assert.ok(f.logs.some((l) => /reconnected/.test(l)));
});

/** A raw front-end: sends what it is told, reads replies. */
function rawClient(socket: string) {
  const fd = unixConnect(socket);
  const reader = new MessageReader(fd);
  return {
    fd,
    send: (request: number, payload?: Uint8Array, fds: number[] = [], flags = 0) => sendWithFds(fd, encode(request, flags, payload), fds),
    reply: () => reader.readOne(2000, 'test'),
    /** True when the daemon has hung up on us. */
    hungUp: () => {
      try {
        return reader.read() === 'closed';
      } catch {
        return true;
      }
    },
    close: () => closeFd(fd),
  };
}

test('vhost-user daemon: a hostile front-end gets an error reply or a disconnect, the daemon serves the next client, no fd leaks', async () => {
  const file = imageFile();
  const daemon = await ourDaemon(file);
  const { socket, lines } = daemon;
  const openFds = () => fs.readdirSync(`/proc/${daemon.pid}/fd`).length;
  const before = openFds();
  /** `n` fresh eventfds for one message: the daemon gets copies, ours are closed after the send. */
  const tempFds = (n: number) => Array.from({ length: n }, () => eventfd());
  const sent: number[] = [];
  type Raw = ReturnType<typeof rawClient>;
  const withAck = (c: Raw) => {
    c.send(Request.GET_PROTOCOL_FEATURES);
    const offered = decodeU64(c.reply());
    assert.ok(offered & bit(ProtocolFeature.REPLY_ACK));
    c.send(Request.SET_PROTOCOL_FEATURES, u64Payload(bit(ProtocolFeature.REPLY_ACK)));
  };
  const refused = (c: Raw, request: number, payload?: Uint8Array, fds: number[] = []) => {
    c.send(request, payload, fds, FLAG_NEED_REPLY);
    sent.push(...fds.filter((fd) => fd !== small));
    assert.notEqual(decodeU64(c.reply()), 0n, `request ${request} is refused`);
  };
  const small = fs.openSync(path.join(dir, 'small'), 'w+');
  fs.ftruncateSync(small, 4096);
  const cases: ((c: Raw) => Promise<void> | void)[] = [
    // Messages that ask for an acknowledgement get a failure status and the connection stays.
    (c) => {
      withAck(c);
      refused(c, Request.SET_VRING_NUM, vringStatePayload({ index: 0, num: 100 }));
      refused(c, Request.SET_VRING_NUM, vringStatePayload({ index: 7, num: 16 }));
      refused(c, Request.SET_FEATURES, u64Payload(1n << 60n));
      refused(c, Request.SET_MEM_TABLE, memTablePayload([{ guestAddress: 0n, size: 1n << 20n, userAddress: 0n, mmapOffset: 0n }]), []);
      // A region larger than its file: mapping it would end in SIGBUS.
      refused(c, Request.SET_MEM_TABLE, memTablePayload([{ guestAddress: 0n, size: 1n << 20n, userAddress: 0n, mmapOffset: 0n }]), [small]);
      refused(c, Request.SET_MEM_TABLE, memTablePayload([{ guestAddress: 0n, size: 4096n, userAddress: 0n, mmapOffset: 0n }]), tempFds(1));
      refused(c, Request.SET_VRING_ADDR, vringAddrPayload({ index: 0, flags: 1, desc: 0n, used: 0n, avail: 0n, log: 0n }));
      refused(c, Request.SET_LOG_BASE, u64Payload(0n));
      refused(c, 99, u64Payload(0n));
      // A blocking eventfd filled to its limit would block whoever signals it: the daemon makes it non-blocking.
      const blocking = eventfd(0);
      const nonBlocking = () => (parseInt(/flags:\s+(\d+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${blocking}`, 'utf8'))![1]!, 8) & 0o4000) !== 0;
      assert.equal(nonBlocking(), false);
      c.send(Request.SET_VRING_ERR, u64Payload(0n), [blocking], FLAG_NEED_REPLY);
      assert.equal(decodeU64(c.reply()), 0n);
      assert.equal(nonBlocking(), true, 'the error fd the daemon keeps is non-blocking');
      closeFd(blocking);
      c.send(Request.GET_QUEUE_NUM);
      assert.equal(decodeU64(c.reply()), 1n, 'the connection is still served');
    },
    // Without an acknowledgement asked for, a bad message ends the connection.
    (c) => c.send(Request.SET_VRING_BASE, new Uint8Array(3)),
    (c) => c.send(Request.SET_VRING_KICK, u64Payload(0n), []),
    (c) => sendWithFds(c.fd, Buffer.from([1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0])), // protocol version 2
    (c) =>
      sendWithFds(
        c.fd,
        encode(Request.SET_MEM_TABLE, 0, new Uint8Array(8))
          .subarray(0, 12)
          .map((b, i) => (i === 10 ? 0xff : b)),
      ), // a 16 MiB payload
    (c) => {
      const fds = tempFds(3);
      sent.push(...fds);
      c.send(Request.SET_VRING_CALL, u64Payload(0n), fds);
    },
  ];
  for (const [i, run] of cases.entries()) {
    const c = rawClient(socket);
    await run(c);
    if (i > 0) await waitFor(`case ${i}: the daemon hung up`, () => c.hungUp());
    c.close();
  }
  fs.closeSync(small);
  for (const fd of sent.splice(0)) closeFd(fd);
  // An honest front-end is served after all that.
  const f = frontEnd(socket);
  await writeAndRead(f, 60, 1, 11);
  await f.close();
  await waitFor('every session ended', () => lines.filter((l) => /disconnected/.test(l)).length === cases.length + 1);
  assert.ok(lines.some((l) => /refused SET_VRING_NUM/.test(l)));
  // Every fd the daemon was sent or opened for those clients is closed again.
  assert.equal(openFds(), before, `fds: ${before} before, ${openFds()} after`);
  await daemon.close();
});

test('vhost-user daemon: more clients than --max-clients are refused, the others are served', async () => {
  const file = imageFile();
  const daemon = await ourDaemon(file, path.join(dir, 'limit.sock'), ['--max-clients', '1']);
  const socket = daemon.socket;
  const f = frontEnd(socket);
  const extra = rawClient(socket);
  await waitFor('the second client was refused', () => extra.hungUp());
  extra.close();
  // The log line comes through the daemon's stderr pipe, which may trail the socket's hang-up.
  await waitFor('the daemon logged the refusal', () => daemon.lines.some((l) => /refused a client: 1 are connected/.test(l)));
  await writeAndRead(f, 2, 1, 13);
  await f.close();
  await daemon.close();
});

const HOSTILE = new URL('../support/hostile-vhost-user-backend.js', import.meta.url).pathname;

/** A back-end process that misbehaves at `request` in the way `mode` says. */
async function hostileBackend(request: string, mode: string): Promise<{ socket: string; child: ChildProcess }> {
  const socket = path.join(dir, `hostile-${++files}.sock`);
  const child = spawnTracked(process.execPath, [HOSTILE, socket, request, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  await waitFor('the hostile back-end listens', () => out.includes('listening'));
  return { socket, child };
}

test('vhost-user front-end: a back-end that refuses, answers garbage or short, or hangs up fails the device with one reason, and nothing escapes', async () => {
  const cases = [
    ['SET_MEM_TABLE', 'nack'],
    ['SET_VRING_ADDR', 'garbage'],
    ['SET_VRING_KICK', 'hangup'],
    ['SET_VRING_ENABLE', 'nack'],
    ['GET_VRING_BASE', 'short'],
  ] as const;
  for (const [request, mode] of cases) {
    const { socket, child } = await hostileBackend(request, mode);
    // Construction, activation, queue start and stop: none of them may throw.
    const f = frontEnd(socket);
    await f.blk.stopQueue(0);
    assert.equal(f.failures.length, 1, `${request} ${mode}: ${JSON.stringify(f.failures)}`);
    assert.match(f.failures[0]!, /vhost-user back-end: /);
    assert.equal(f.blk.stats().connected, 0, `${request} ${mode}: the connection is dropped`);
    await f.close();
    child.kill();
  }
  // Before the VM starts, a back-end that answers garbage is one clear error.
  const { socket, child } = await hostileBackend('GET_CONFIG', 'garbage');
  assert.throws(
    () => frontEnd(socket),
    (e: Error) => e instanceof VhostUserError && /GET_QUEUE_NUM came back for GET_CONFIG/.test(e.message),
  );
  child.kill();
});
