// Properties of the vhost-user wire codec (protocol.ts) and the message reader
// (connection.ts), with fast-check: every payload layout decodes to what was
// encoded and refuses any other size with a ProtocolError (never anything
// else); a stream of valid messages, cut into pieces of any size and written
// to a socketpair piece by piece, comes out of MessageReader as exactly those
// messages, each with its own fds.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import fc from 'fast-check';
import { closeFd, eventfd } from '../../src/host/libc.js';
import { sendWithFds, unixPair } from '../../src/host/unix-socket.js';
import { closeAll, MessageReader } from '../../src/vhost/user/connection.js';
import {
  configPayload,
  decodeConfig,
  decodeHeader,
  decodeMemRegion,
  decodeMemTable,
  decodeU64,
  decodeVringAddr,
  decodeVringFd,
  decodeVringState,
  encode,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  HEADER_SIZE,
  MAX_CONFIG_SIZE,
  MAX_FDS,
  MAX_PAYLOAD,
  MAX_REGIONS,
  memRegionPayload,
  memTablePayload,
  ProtocolError,
  Request,
  u64Payload,
  VERSION,
  VRING_NOFD,
  vringAddrPayload,
  vringStatePayload,
  type Message,
} from '../../src/vhost/user/protocol.js';

const SEED = 20240611;
const u32 = fc.nat({ max: 0xffffffff });
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const request = fc.constantFrom(...Object.values(Request));
const region = fc.record({ guestAddress: u64, size: u64, userAddress: u64, mmapOffset: u64 });
/** The payload as a message of `request` carries it. (fc.record makes objects without a prototype: compare copies.) */
const as = (payload: Uint8Array, req: number = Request.SET_FEATURES) => ({ request: req, payload });
const refused = (e: unknown) => e instanceof ProtocolError;
/** Bytes of any length but `size`. */
const otherSize = (size: number) => fc.uint8Array({ maxLength: size + 16 }).filter((b) => b.length !== size);

test('vhost-user codec: every payload layout decodes to what was encoded', () => {
  const opts = { seed: SEED, numRuns: 300 };
  fc.assert(
    fc.property(u64, (v) => decodeU64(as(u64Payload(v))) === v),
    opts,
  );
  fc.assert(
    fc.property(u32, u32, (index, num) => assert.deepEqual(decodeVringState(as(vringStatePayload({ index, num }))), { index, num })),
    opts,
  );
  fc.assert(
    fc.property(fc.record({ index: u32, flags: u32, desc: u64, used: u64, avail: u64, log: u64 }), (a) =>
      assert.deepEqual(decodeVringAddr(as(vringAddrPayload(a))), { ...a }),
    ),
    opts,
  );
  fc.assert(
    fc.property(fc.array(region, { maxLength: MAX_REGIONS }), (regions) =>
      assert.deepEqual(
        decodeMemTable(as(memTablePayload(regions), Request.SET_MEM_TABLE)),
        regions.map((r) => ({ ...r })),
      ),
    ),
    opts,
  );
  fc.assert(
    fc.property(region, (r) => assert.deepEqual(decodeMemRegion(as(memRegionPayload(r), Request.ADD_MEM_REG)), { ...r })),
    opts,
  );
  fc.assert(
    fc.property(u32, u32, fc.uint8Array({ maxLength: MAX_CONFIG_SIZE }), (offset, flags, data) =>
      assert.deepEqual(decodeConfig(as(configPayload({ offset, flags, data }), Request.GET_CONFIG)), { offset, flags, data }),
    ),
    opts,
  );
  fc.assert(
    fc.property(fc.nat({ max: 0xff }), fc.boolean(), (index, noFd) =>
      assert.deepEqual(decodeVringFd(as(u64Payload(BigInt(index) | (noFd ? VRING_NOFD : 0n)), Request.SET_VRING_KICK)), { index, noFd }),
    ),
    opts,
  );
  fc.assert(
    fc.property(u32, u32, fc.uint8Array({ maxLength: 64 }), (req, flags, payload) => {
      const bytes = encode(req, flags & ~3, payload);
      assert.equal(bytes.length, HEADER_SIZE + payload.length);
      assert.deepEqual(decodeHeader(bytes.subarray(0, HEADER_SIZE)), { request: req, flags: ((flags & ~3) | VERSION) >>> 0, size: payload.length });
      assert.deepEqual(bytes.subarray(HEADER_SIZE), payload);
    }),
    opts,
  );
});

test('vhost-user codec: a payload of any other size, too many regions or config bytes, unknown ring fd bits or a bad header is a ProtocolError', () => {
  const opts = { seed: SEED, numRuns: 300 };
  const fixed: [number, (m: { request: number; payload: Uint8Array }) => unknown][] = [
    [8, decodeU64],
    [8, decodeVringState],
    [40, decodeVringAddr],
    [40, decodeMemRegion],
    [8, decodeVringFd],
  ];
  for (const [size, decode] of fixed)
    fc.assert(
      fc.property(otherSize(size), (b) => assert.throws(() => decode(as(b)), refused)),
      opts,
    );
  // A memory table whose size does not match its count, or that counts more than MAX_REGIONS.
  fc.assert(
    fc.property(u32, fc.uint8Array({ maxLength: 8 + 32 * (MAX_REGIONS + 1) }), (count, rest) => {
      const b = new Uint8Array(8 + rest.length);
      new DataView(b.buffer).setUint32(0, count, true);
      b.set(rest, 8);
      fc.pre(count > MAX_REGIONS || b.length !== 8 + 32 * count);
      assert.throws(() => decodeMemTable(as(b, Request.SET_MEM_TABLE)), refused);
    }),
    opts,
  );
  fc.assert(
    fc.property(
      otherSize(8).filter((b) => b.length < 8),
      (b) => assert.throws(() => decodeMemTable(as(b, Request.SET_MEM_TABLE)), refused),
    ),
    opts,
  );
  // Config: a size past MAX_CONFIG_SIZE, or other than the bytes that follow.
  fc.assert(
    fc.property(u32, fc.uint8Array({ maxLength: 300 }), (size, data) => {
      fc.pre(size > MAX_CONFIG_SIZE || size !== data.length);
      const b = configPayload({ offset: 0, flags: 0, data });
      new DataView(b.buffer).setUint32(4, size, true);
      assert.throws(() => decodeConfig(as(b, Request.GET_CONFIG)), refused);
    }),
    opts,
  );
  fc.assert(
    fc.property(u64, (v) => {
      fc.pre((v & ~(0xffn | VRING_NOFD)) !== 0n);
      assert.throws(() => decodeVringFd(as(u64Payload(v), Request.SET_VRING_CALL)), refused);
    }),
    opts,
  );
  // A header: any version but 1, or a payload past MAX_PAYLOAD.
  fc.assert(
    fc.property(u32, u32, u32, (req, flags, size) => {
      fc.pre((flags & 3) !== VERSION || size > MAX_PAYLOAD);
      const h = new Uint8Array(HEADER_SIZE);
      const v = new DataView(h.buffer);
      v.setUint32(0, req, true);
      v.setUint32(4, flags, true);
      v.setUint32(8, size, true);
      assert.throws(() => decodeHeader(h), refused);
    }),
    opts,
  );
});

interface Sent {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number;
}

const message: fc.Arbitrary<Sent> = fc.record({
  request: fc.oneof(request, u32),
  flags: fc.constantFrom(0, FLAG_NEED_REPLY, FLAG_REPLY, 0xfffffff0),
  payload: fc.oneof({ arbitrary: fc.uint8Array({ maxLength: 48 }), weight: 4 }, { arbitrary: fc.uint8Array({ maxLength: MAX_PAYLOAD }), weight: 1 }),
  fds: fc.oneof({ arbitrary: fc.constant(0), weight: 3 }, { arbitrary: fc.integer({ min: 1, max: MAX_FDS }), weight: 1 }),
});

test('vhost-user MessageReader: a stream of valid messages, cut anywhere and written piece by piece, reads back as exactly those messages with their fds', () => {
  const before = fs.readdirSync('/proc/self/fd').length;
  fc.assert(
    fc.property(
      fc.array(message, { minLength: 1, maxLength: 12 }),
      fc.array(fc.integer({ min: 1, max: 4200 }), { minLength: 1, maxLength: 40 }),
      (msgs, sizes) => {
        const [a, b] = unixPair();
        const reader = new MessageReader(b);
        const got: Message[] = [];
        const read = () => {
          const r = reader.read();
          assert.notEqual(r, 'closed');
          got.push(...(r as Message[]));
        };
        try {
          // The stream, cut into pieces of the given sizes (cycled); a message with fds is cut at its own
          // edges too, so its fds ride on a piece of its own bytes (the kernel hands them to the read of that piece).
          const stream = msgs.map((m) => encode(m.request, m.flags, m.payload));
          const cuts = new Set<number>();
          const fdsAt = new Map<number, number>();
          let at = 0;
          stream.forEach((bytes, i) => {
            if (msgs[i]!.fds) {
              cuts.add(at);
              cuts.add(at + bytes.length);
              fdsAt.set(at, msgs[i]!.fds);
            }
            at += bytes.length;
          });
          const all = new Uint8Array(at);
          at = 0;
          for (const bytes of stream) {
            all.set(bytes, at);
            at += bytes.length;
          }
          for (let p = 0, i = 0; p < all.length; i++) {
            cuts.add(p);
            p += sizes[i % sizes.length]!;
          }
          const points = [...cuts, all.length].filter((p) => p <= all.length).sort((x, y) => x - y);
          for (let i = 0; i + 1 < points.length; i++) {
            if (points[i] === points[i + 1]) continue;
            const fds = Array.from({ length: fdsAt.get(points[i]!) ?? 0 }, () => eventfd());
            try {
              sendWithFds(a, all.subarray(points[i], points[i + 1]), fds);
            } finally {
              closeAll(fds);
            }
            read();
          }
          read();
          assert.equal(got.length, msgs.length);
          got.forEach((m, i) => {
            const s = msgs[i]!;
            assert.equal(m.request, s.request);
            assert.equal(m.flags, (s.flags | VERSION) >>> 0);
            assert.equal(m.size, s.payload.length);
            assert.deepEqual(m.payload, s.payload);
            assert.equal(m.fds.length, s.fds, `message ${i}: its fds`);
            for (const fd of m.fds) assert.equal(fs.readlinkSync(`/proc/self/fd/${fd}`), 'anon_inode:[eventfd]');
          });
          // The writer hangs up: the reader says so.
          closeFd(a);
          assert.equal(reader.read(), 'closed');
        } finally {
          for (const m of got) closeAll(m.fds);
          try {
            closeFd(a);
          } catch {
            // Closed above.
          }
          closeFd(b);
        }
      },
    ),
    { seed: SEED, numRuns: 200 },
  );
  assert.equal(fs.readdirSync('/proc/self/fd').length, before, 'every fd received was handed on and closed');
});

test('vhost-user MessageReader: more than MAX_FDS fds for one message, or a bad header, is refused and the fds that came are closed', () => {
  const before = fs.readdirSync('/proc/self/fd').length;
  fc.assert(
    fc.property(fc.integer({ min: MAX_FDS + 1, max: 16 }), fc.boolean(), (n, badHeader) => {
      const [a, b] = unixPair();
      const reader = new MessageReader(b);
      const fds = Array.from({ length: badHeader ? 2 : n }, () => eventfd());
      try {
        const bytes = encode(Request.SET_MEM_TABLE, 0, new Uint8Array(8));
        if (badHeader) new DataView(bytes.buffer).setUint32(4, 2, true); // protocol version 2
        sendWithFds(a, bytes, fds);
      } finally {
        closeAll(fds);
      }
      assert.throws(() => reader.read());
      closeFd(a);
      closeFd(b);
    }),
    { seed: SEED, numRuns: 30 },
  );
  assert.equal(fs.readdirSync('/proc/self/fd').length, before);
});
