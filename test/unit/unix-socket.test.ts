import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { closeFd, eventfd, eventfdDrain, eventfdSignal, SysError } from '../../src/host/libc.js';
import { recvWithFds, sendWithFds, unixAccept, unixConnect, unixListen, unixPair, waitReadable } from '../../src/host/unix-socket.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-unix-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const openFds = () => fs.readdirSync('/proc/self/fd').length;
const isCloexec = (fd: number) => (parseInt(/^flags:\s+(\d+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8) & 0o2000000) !== 0;
const isErrno = (code: string) => (err: unknown) => err instanceof SysError && err.message.includes(code);

test('listen / connect / accept over a path; a stale socket file is replaced; a missing or dead peer is reported', () => {
  const sock = path.join(dir, 'a.sock');
  assert.throws(() => unixConnect(sock), isErrno('ENOENT'));

  const stale = unixListen(sock);
  closeFd(stale); // leaves the socket file behind: connecting now is refused
  assert.throws(() => unixConnect(sock), isErrno('ECONNREFUSED'));

  const listener = unixListen(sock);
  assert.equal(unixAccept(listener), undefined, 'nothing waiting yet');
  const client = unixConnect(sock);
  assert.ok(waitReadable(listener, 1000), 'the listener becomes readable when a connection is waiting');
  const server = unixAccept(listener)!;
  assert.ok(server >= 0);
  assert.ok(isCloexec(listener) && isCloexec(client) && isCloexec(server));

  sendWithFds(client, Buffer.from('hello'));
  const buf = new Uint8Array(16);
  const got = recvWithFds(server, buf, 4)!;
  assert.deepEqual(got.fds, []);
  assert.equal(Buffer.from(buf.subarray(0, got.bytes)).toString(), 'hello');
  [client, server, listener].forEach(closeFd);
});

test('fds travel with the bytes, arrive close-on-exec and refer to the same files', () => {
  const [a, b] = unixPair();
  const sent = [eventfd(), eventfd(), eventfd()];
  const data = new Uint8Array(3000).map((_, i) => i % 251);
  sendWithFds(a, data, sent);

  const buf = new Uint8Array(4096);
  const got = recvWithFds(b, buf, 8)!;
  assert.equal(got.bytes, data.length);
  assert.deepEqual(buf.subarray(0, got.bytes), data);
  assert.equal(got.fds.length, 3);
  for (const fd of got.fds) assert.ok(isCloexec(fd), `received fd ${fd} is close-on-exec`);
  for (let i = 0; i < 3; i++) {
    assert.ok(!sent.includes(got.fds[i]!), 'a new descriptor, not the sender\u2019s number');
    eventfdSignal(got.fds[i]!);
    eventfdSignal(got.fds[i]!);
    assert.equal(eventfdDrain(sent[i]!), 2, `received fd ${i} is the same eventfd as sent fd ${i}`);
  }
  [...got.fds, ...sent, a, b].forEach(closeFd);
});

test('a send larger than the socket buffer goes out whole, its fds with the first bytes', async () => {
  const [a, b] = unixPair();
  const efd = eventfd();
  const size = 4 << 20;
  // The sender blocks until the receiver drains the socket, so it runs on another thread.
  const module = new URL('../../src/host/unix-socket.js', import.meta.url).href;
  const sender = new Worker(
    `import(${JSON.stringify(module)}).then((m) => {
      const { workerData: w } = require('node:worker_threads');
      m.sendWithFds(w.fd, new Uint8Array(w.size).map((_, i) => i % 253), [w.efd]);
    });`,
    { eval: true, workerData: { fd: a, efd, size } },
  );
  let exited = false;
  const done = new Promise((resolve, reject) => (sender.on('exit', resolve), sender.on('error', reject))).finally(() => (exited = true));
  const received = new Uint8Array(size);
  const fds: number[] = [];
  for (let at = 0; at < size;) {
    if (!waitReadable(b, 0)) {
      if (exited) break; // the sender failed or stopped short: the checks below say how
      await new Promise((r) => setTimeout(r, 1));
      continue;
    }
    const got = recvWithFds(b, received.subarray(at), 4, true);
    if (!got) continue;
    assert.ok(got.bytes > 0);
    if (got.fds.length) assert.equal(at, 0, 'the fds come with the first bytes');
    fds.push(...got.fds);
    at += got.bytes;
  }
  assert.equal(await done, 0);
  assert.ok(received.every((v, i) => v === i % 253));
  assert.equal(fds.length, 1);
  [...fds, efd, a, b].forEach(closeFd);
});

test('a peer sending more fds than allowed: the receiver throws and keeps none of them', () => {
  const before = openFds();
  const [a, b] = unixPair();
  const efd = eventfd();
  assert.throws(() => sendWithFds(a, Uint8Array.of(1), new Array(33).fill(efd)), /at most 32/);
  // 40 fds in all: 32 with the first byte, 8 with the second.
  sendWithFds(a, Uint8Array.of(1), new Array(32).fill(efd));
  sendWithFds(a, Uint8Array.of(2), new Array(8).fill(efd));
  const inFlight = openFds();
  const buf = new Uint8Array(64);
  assert.throws(
    () => recvWithFds(b, buf, 8),
    (err: unknown) => err instanceof SysError && /truncated/.test(err.message),
  );
  assert.equal(openFds(), inFlight, 'the 8 fds that did arrive with the truncated message were closed');
  // The next message, within the limit, still comes through on its own.
  const next = recvWithFds(b, buf, 8)!;
  assert.equal(next.bytes, 1);
  assert.equal(buf[0], 2);
  assert.equal(next.fds.length, 8);
  [...next.fds, efd, a, b].forEach(closeFd);
  assert.equal(openFds(), before, 'no fd leaked');
});

test('maxFds 0 refuses any fd', () => {
  const before = openFds();
  const [a, b] = unixPair();
  const efd = eventfd();
  sendWithFds(a, Uint8Array.of(7), [efd]);
  assert.throws(() => recvWithFds(b, new Uint8Array(8), 0), /truncated/);
  [efd, a, b].forEach(closeFd);
  assert.equal(openFds(), before);
});

test('non-blocking recv with nothing waiting is undefined; after the peer closes recv reads 0; sending to a closed peer is EPIPE', () => {
  const [a, b] = unixPair();
  const buf = new Uint8Array(8);
  assert.equal(recvWithFds(b, buf, 4, true), undefined);
  closeFd(a);
  assert.ok(waitReadable(b, 1000), 'a hang-up counts as readable');
  assert.deepEqual(recvWithFds(b, buf, 4), { bytes: 0, fds: [] });
  assert.throws(() => sendWithFds(b, Uint8Array.of(1)), isErrno('EPIPE'));
  closeFd(b);
});

test('waitReadable times out when nothing comes, and sees data that is waiting', () => {
  const [a, b] = unixPair();
  const start = Date.now();
  assert.equal(waitReadable(b, 50), false);
  assert.ok(Date.now() - start >= 45, 'it did wait');
  assert.equal(waitReadable(b, 0), false);
  sendWithFds(a, Uint8Array.of(1));
  assert.equal(waitReadable(b, 0), true);
  assert.throws(() => waitReadable(999_999, 0), isErrno('EBADF'));
  [a, b].forEach(closeFd);
});

test('a socket path longer than sun_path holds is a clear error', () => {
  const long = path.join(dir, 'x'.repeat(120));
  assert.throws(() => unixListen(long), /unix socket path must be 1\.\.107 bytes/);
  assert.throws(() => unixConnect(long), /unix socket path must be 1\.\.107 bytes/);
  const exact = path.join(dir, 'y'.repeat(107 - dir.length - 1)); // 107 bytes: still fits
  const fd = unixListen(exact);
  closeFd(fd);
  fs.rmSync(exact);
});
