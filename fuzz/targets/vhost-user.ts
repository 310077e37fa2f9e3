// The vhost-user back-end (BackendSession) under a hostile front-end: each input
// is a conversation over a socketpair with one session running a real VirtioBlock
// (its device worker thread and all) over a temp image. The actions are
// messages (a request biased to the real ones, sometimes NEED_REPLY, a payload
// that is mostly well formed for its request from fuzz bytes: memory tables whose
// regions are the guest's memfd or files too small for them, overlapping,
// unaligned, huge; ring addresses inside and outside the regions; ring fds of
// every kind, 0..10 fds a message), messages spelled out byte for byte (the
// seeds), messages cut into pieces with their fds on any piece, raw garbage and
// half messages, the honest QEMU handshake as one step, guest ring writes and
// virtio-blk requests (the rings live in the memfd the session maps) and kicks.
//
// Waiting is by reply: after an action the harness sends GET_QUEUE_NUM (which
// the back-end answers in order, whatever came before) and reads replies
// without blocking until its answer comes or the session hangs up, so each
// message was handled to the end, awaited stops of the device worker included;
// a kick waits (briefly) for the worker to use the ring. The conversation ends
// as a front-end ends it (hangs up) or as the daemon does (session.end(), with
// the last message as likely as not still in hand).
//
// Oracles: the process lives (a region larger than its file would end it with
// SIGBUS at the first touch); nothing reaches the EventLoop's onError and
// nothing is thrown from a callback or a promise nobody awaits; every reply is
// a REPLY to a request that was sent, in order; a message is answered in
// bounded time; every refusal or hang-up gives a protocol, system or ring
// error as its reason, not the session's own state gone wrong, and the device
// worker never dies; the session ends once the front-end hangs up, and after
// it ended it does nothing more: it logs nothing, fails nothing, and closes no
// fd (decoy eventfds take the numbers it just freed). Afterwards the process
// has as many fds open as before, no mapping of a guest memory file, and no
// more threads (the device worker is gone).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openImage } from '../../src/backends/raw-image.js';
import { closeFd, EFD_CLOEXEC, eventfd, eventfdSignal, memfdCreate, O_RDWR, openFile, SysError } from '../../src/host/libc.js';
import { sendWithFds, unixPair } from '../../src/host/unix-socket.js';
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { BACKEND_PROTOCOL_FEATURES, BackendSession } from '../../src/vhost/user/backend.js';
import { closeAll, MessageReader } from '../../src/vhost/user/connection.js';
import {
  ANSWERED,
  configPayload,
  decodeU64,
  encode,
  F_PROTOCOL_FEATURES,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  HEADER_SIZE,
  MAX_PAYLOAD,
  memRegionPayload,
  memTablePayload,
  ProtocolFeature,
  Request,
  u64Payload,
  VERSION,
  VRING_NOFD,
  vringAddrPayload,
  vringStatePayload,
  type MemRegion,
  type Message,
} from '../../src/vhost/user/protocol.js';
import { BlkType, SECTOR_SIZE, VirtioBlock } from '../../src/virtio/block.js';
import { bit, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1 } from '../../src/virtio/device.js';
import { EventLoop } from '../../src/vmm/event-loop.js';
import { ByteReader, encodeOps, firstArgs, INTERESTING, le, operations, opsArbitrary } from '../lib/bytes.js';
import { HIGH, LOW, sharedGuestMemory } from '../lib/guest.js';
import { HostileDriver, ringLayout } from '../lib/rings.js';
import { OracleError, type FuzzTarget } from '../lib/target.js';

/** Actions per input (the first operation is the setup). */
const MAX_ACTIONS = 32;
export const Op = { MESSAGE: 0, SPLIT: 1, RAW: 2, HANDSHAKE: 3, RING: 4, KICK: 5, WAIT: 6, LITERAL: 7 } as const;
const KINDS = 8;
/** How long a handled message may take to be answered (a stop waits for the device worker, which may be starting). */
const REPLY_MS = 3000;
/** How long a kick waits for the device worker to use what the driver made available. */
const SERVE_MS = 100;
/** How long the session may take to end once the front-end hung up. */
const END_MS = 3000;
/** Bytes sent without waiting for the back-end: far below what the socket holds, so a send never blocks the only thread. */
const UNSYNCED_LIMIT = 48 * 1024;
const DISK_SECTORS = 64;
const SMALL_FILE = 4096;

/** The front-end's addresses of the two RAM regions (not contiguous, as QEMU's are not). */
const UVA = [0x7f12_3400_0000n, 0x7f12_3480_0000n] as const;
const RAM = [LOW, HIGH] as const;

const REQUESTS = Object.values(Request);

interface Ctx {
  dir: string;
  image: string;
  /** A small regular file, sent as an fd of the wrong kind. */
  small: string;
  loop: EventLoop;
  loopErrors: unknown[];
}

/**
 * check() under a name of its own per property, so a campaign records one input
 * per property broken (it tells crashes apart by the error's name and stack).
 */
function expect(ok: unknown, property: string, what: string): asserts ok {
  if (ok) return;
  const e = new OracleError(what);
  e.name = `OracleError[${property}]`;
  throw e;
}

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;
/** Mappings of the memfds and files the front-end sends (the worker's too: threads share them). */
const mappings = (dir: string): number =>
  fs
    .readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes('/memfd:') || l.includes(dir)).length;
/**
 * Reasons a session may give for refusing a message or hanging up: the
 * protocol's errors, the system's (a send to a front-end that is gone, an fd
 * that cannot be mapped), the device's (a broken ring), and GuestMemory's
 * layout check. Anything else is the back-end's own state gone wrong.
 */
const EXPECTED_REASON = /^(ProtocolError|SysError|QueueError|GuestMemoryError): |^Error: guest memory regions overlap$/;
/** A log line with the reason for a refusal, a hang-up or a device failure. */
const REASON = /^(?:refused [A-Za-z_ 0-9]+|disconnected: (?:bad message|[A-Za-z_ 0-9]+)|device failed: (?:queue \d+(?:: start)?)?): (.*)$/;

/** Decoy fds: more than the numbers a session frees when it ends with a few rings and regions. */
const DECOYS = 24;

function isEventfd(fd: number): boolean {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventfd]';
  } catch {
    return false;
  }
}
const threads = (): number => fs.readdirSync('/proc/self/task').length;
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Whether `p` settled within `ms`. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([p.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A guest-physical address in the front-end's address space (the region holding it), or undefined outside RAM. */
function uvaOf(gpa: number): bigint | undefined {
  const i = RAM.findIndex((m) => gpa >= m.start && gpa < m.start + m.size);
  return i < 0 ? undefined : UVA[i]! + BigInt(gpa - RAM[i]!.start);
}

function honestRegions(): MemRegion[] {
  return RAM.map((m, i) => ({ guestAddress: BigInt(m.start), size: BigInt(m.size), userAddress: UVA[i]!, mmapOffset: BigInt(m.start === 0 ? 0 : LOW.size) }));
}

/** A 64-bit value that breaks arithmetic, or one near `near`. */
function wild(r: ByteReader, near: bigint): bigint {
  switch (r.u8() % 8) {
    case 0:
      return near + 0x1000n;
    case 1:
      return near > 0x1000n ? near - 0x1000n : 0n;
    case 2:
      return near + BigInt(1 + (r.u8() % 0xfff)); // unaligned
    case 3:
      return near * 2n;
    case 4:
      return BigInt(r.pick(INTERESTING));
    case 5:
      return (1n << 64n) - BigInt(r.u16()) * 0x1000n;
    case 6:
      return (1n << 53n) + BigInt(r.u8()) * 0x1000n;
    default:
      return r.u64();
  }
}

/** A region, honest (region `i` of the guest's RAM) or with fields changed. */
function region(r: ByteReader, i: number): MemRegion {
  const honest = honestRegions()[i % 2]!;
  const mode = r.u8();
  if (mode < 140) return honest;
  const out = { ...honest };
  const fields = ['guestAddress', 'size', 'userAddress', 'mmapOffset'] as const;
  for (let n = 1 + (mode % 3); n > 0; n--) {
    const f = r.pick(fields);
    // A region bigger than its file by a page is the one that would end in SIGBUS; one of a page fits the small files.
    if (f === 'size' && r.bool()) out.size = r.bool() ? honest.size + 0x1000n * BigInt(1 + (r.u8() % 16)) : 0x1000n * BigInt(1 + (r.u8() % 2));
    else out[f] = wild(r, out[f]);
  }
  return out;
}

/** Where ring `q`'s parts are, in the front-end's addresses: at home, moved, or outside every region. */
function ringAddresses(r: ByteReader, q: number): { desc: bigint; avail: bigint; used: bigint } {
  const home = ringLayout(q);
  const at = (gpa: number): bigint => {
    const mode = r.u8();
    if (mode < 170) return uvaOf(gpa)!;
    switch (mode % 6) {
      case 0:
        return UVA[0] + BigInt(LOW.size - (r.u8() % 16)); // at the end of the region: the used ring does not fit
      case 1:
        return UVA[0] + BigInt(LOW.size + r.u16()); // between the regions
      case 2:
        return UVA[1] + BigInt(r.below(HIGH.size)); // in the other region
      case 3:
        return BigInt(gpa); // a guest address, not the front-end's
      case 4:
        return uvaOf(gpa)! + BigInt(r.u8() % 8); // unaligned
      default:
        return r.u64();
    }
  };
  return { desc: at(home.desc), avail: at(home.avail), used: at(home.used) };
}

const EPIPE = 32;
const ECONNRESET = 104;
/** Whether `e` says the back-end is gone. */
const gone = (e: unknown): boolean => e instanceof SysError && (e.errno === EPIPE || e.errno === ECONNRESET);

/** An fd a message carries: the kind decides how the harness makes it and whether it keeps its own copy. */
type FdKind = 'eventfd' | 'blocking-eventfd' | 'guest-ram' | 'small-memfd' | 'ram-sized-memfd' | 'file' | 'read-only-file';
const FD_KINDS: readonly FdKind[] = ['eventfd', 'blocking-eventfd', 'guest-ram', 'small-memfd', 'ram-sized-memfd', 'file', 'read-only-file'];

interface Planned {
  request: number;
  /** Sent as they are when `exactFlags`, else with the version ORed in. */
  flags: number;
  exactFlags?: boolean;
  payload: Uint8Array;
  fds: FdKind[];
  /** For ring fd messages: the ring, so the harness keeps the kick eventfd it sent. */
  kickOf?: number;
}

class FrontEnd {
  private readonly reader: MessageReader;
  /** Requests sent whole, in order, that a reply may answer. */
  private readonly asked: number[] = [];
  private pings = 0;
  private answeredPings = 0;
  private unsynced = 0;
  /** Our copies of the kick eventfds the back-end has, per ring. */
  readonly kicks: (number | undefined)[];
  /** The back-end hung up, or a send found it gone. */
  closed = false;
  /** Bytes went out that do not frame as messages: replies can no longer be expected. */
  desynced = false;
  readonly driver: HostileDriver;
  readonly offered: bigint;
  replies = 0;
  /** Messages sent whole. */
  sent = 0;

  constructor(
    readonly fd: number,
    private readonly ctx: Ctx,
    readonly mem: GuestMemory,
    readonly queues: number,
    readonly ringSize: number,
    private readonly device: VirtioBlock,
  ) {
    this.reader = new MessageReader(fd);
    this.kicks = Array.from({ length: queues }, () => undefined);
    this.driver = new HostileDriver(
      mem,
      Array.from({ length: queues }, () => ringSize),
    );
    this.offered = device.features | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_INDIRECT_DESC) | bit(VIRTIO_F_RING_EVENT_IDX) | bit(F_PROTOCOL_FEATURES);
  }

  /** Makes the fds of one message; `temp` are the ones made for it (the guest's memfd is not), closed once it went. */
  private makeFds(kinds: readonly FdKind[]): { fds: number[]; temp: number[] } {
    const fds: number[] = [];
    const temp: number[] = [];
    for (const kind of kinds) {
      let fd: number;
      switch (kind) {
        case 'eventfd':
          fd = eventfd();
          break;
        case 'blocking-eventfd':
          fd = eventfd(EFD_CLOEXEC);
          break;
        case 'guest-ram':
          fds.push(this.mem.table().regions[0]!.fd);
          continue;
        case 'small-memfd':
          fd = memfdCreate('fuzz-small', SMALL_FILE);
          break;
        case 'ram-sized-memfd':
          fd = memfdCreate('fuzz-ram', LOW.size + HIGH.size);
          break;
        case 'file':
          fd = openFile(this.ctx.small, O_RDWR);
          break;
        default:
          fd = openFile(this.ctx.small, 0);
      }
      fds.push(fd);
      temp.push(fd);
    }
    return { fds, temp };
  }

  /** Writes `bytes` with `fds`; a back-end that is gone ends the conversation, nothing else may fail. */
  private write(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (this.closed) return;
    try {
      sendWithFds(this.fd, bytes, fds);
      this.unsynced += bytes.length + 512;
    } catch (e) {
      if (!gone(e)) throw e;
      this.closed = true;
    }
  }

  /** Sends a whole message with its fds, in pieces cut at `cuts` (the fds ride on piece `fdPiece`); keeps a kick eventfd it sent. */
  async send(m: Planned, cuts: number[] = [], fdPiece = 0): Promise<void> {
    if (this.closed) return;
    const bytes = encode(m.request, m.flags, m.payload);
    if (m.exactFlags) new DataView(bytes.buffer).setUint32(4, m.flags, true);
    const { fds, temp } = this.makeFds(m.fds);
    const keep = m.kickOf !== undefined && m.fds.length === 1 && m.fds[0] === 'eventfd' ? temp[0] : undefined;
    try {
      const points = [...new Set([0, ...cuts.map((c) => Math.max(1, Math.min(bytes.length - 1, c))), bytes.length])].sort((a, b) => a - b);
      for (let p = 0; p + 1 < points.length; p++) {
        this.write(bytes.subarray(points[p], points[p + 1]), p === Math.min(fdPiece, points.length - 2) ? fds : []);
        if (p + 2 < points.length) for (let t = 0; t < 3; t++) await turn();
      }
      // A header of another protocol version is not answered: the back-end hangs up.
      if (!this.closed && (!m.exactFlags || (m.flags & 3) === VERSION)) {
        this.sent++;
        this.asked.push(m.request);
        if (m.request === Request.GET_QUEUE_NUM) this.pings++;
      }
    } finally {
      for (const fd of temp) if (fd !== keep) closeFd(fd);
      if (keep !== undefined) {
        const old = this.kicks[m.kickOf!];
        if (old !== undefined) closeFd(old);
        this.kicks[m.kickOf!] = keep;
      }
    }
    if (this.unsynced > UNSYNCED_LIMIT) await this.sync();
  }

  /** Bytes that need not frame as messages; `framed` says whether the stream stays in step. */
  raw(bytes: Uint8Array, framed: boolean, fdKinds: readonly FdKind[] = []): void {
    if (bytes.length === 0) return;
    const { fds, temp } = this.makeFds(fdKinds);
    try {
      this.write(bytes, fds);
    } finally {
      closeAll(temp);
    }
    if (!framed) this.desynced = true;
  }

  /** Reads the replies waiting, checking each. */
  drain(): void {
    if (this.closed) return;
    let got: Message[] | 'closed';
    try {
      got = this.reader.read();
    } catch (e) {
      // A back-end that hangs up with our messages unread resets the connection.
      if (gone(e)) {
        this.closed = true;
        return;
      }
      expect(false, 'reply', `the back-end sent a message its own codec refuses: ${e instanceof Error ? e.message : e}`);
    }
    if (got === 'closed') {
      this.closed = true;
      return;
    }
    for (const m of got) {
      this.replies++;
      closeAll(m.fds);
      expect(m.fds.length === 0, 'reply', `a reply to ${m.request} carried ${m.fds.length} fds`);
      expect(m.flags === (VERSION | FLAG_REPLY), 'reply', `a reply to ${m.request} has flags 0x${m.flags.toString(16)}`);
      // Replies answer requests in the order they were sent; requests that got none are skipped.
      // Out of step, the back-end may answer what it read as a header anywhere in the bytes.
      if (this.desynced) continue;
      const at = this.asked.indexOf(m.request);
      expect(at >= 0, 'reply', `a reply to request ${m.request}, which was not asked (asked: ${this.asked.join(',')})`);
      this.asked.splice(0, at + 1);
      if (m.request === Request.GET_QUEUE_NUM) {
        this.answeredPings++;
        expect(decodeU64(m) === BigInt(this.queues), 'reply', `GET_QUEUE_NUM answered ${decodeU64(m)}, the device has ${this.queues}`);
      }
    }
  }

  /** Waits until the back-end handled everything sent (answered a GET_QUEUE_NUM sent after it) or hung up. */
  async sync(): Promise<void> {
    this.unsynced = 0;
    if (this.closed) return;
    if (this.desynced) {
      // Replies cannot be told apart from a stream out of step: give it a few turns.
      for (let i = 0; i < 20 && !this.closed; i++, await turn()) this.drain();
      return;
    }
    await this.send({ request: Request.GET_QUEUE_NUM, flags: 0, payload: new Uint8Array(0), fds: [] });
    const deadline = performance.now() + REPLY_MS;
    for (let i = 0; ; i++) {
      this.drain();
      if (this.closed || this.answeredPings >= this.pings) return;
      expect(performance.now() <= deadline, 'answer', `the back-end answered nothing within ${REPLY_MS} ms (still waiting for ${this.asked.join(',')})`);
      // Mostly a thread hop (the event loop's epoll thread, the device worker): turns first, then sleep.
      await (i < 200 ? turn() : sleep(1));
    }
  }

  /** Waits a little (the device worker runs on) until ring `q` used what is available, if the device has a worker at all. */
  async served(q: number): Promise<void> {
    if (!this.device.worker()) return;
    const { avail, used } = ringLayout(q);
    const deadline = performance.now() + SERVE_MS;
    for (let i = 0; this.mem.readU16(used + 2) !== this.mem.readU16(avail + 2) && performance.now() < deadline; i++) await (i < 50 ? turn() : sleep(1));
  }

  close(): void {
    closeAll(this.kicks.filter((fd) => fd !== undefined));
    this.kicks.fill(undefined);
  }
}

/** A ring index: mostly one of the device's, sometimes past them. */
function ringIndex(r: ByteReader, queues: number): number {
  return r.u8() < 220 ? r.u8() % queues : r.pick([queues, queues + 1, 255, 256, 0x10000, 0xffffffff, r.u32()]);
}

/** A message for a request, its payload and fds from `r`: mostly well formed, sometimes not. */
function plan(fe: FrontEnd, r: ByteReader): Planned {
  const sel = r.u8();
  const request = sel < 236 ? r.pick(REQUESTS) : r.pick([0, 26, 33, 41, 99, 0x7fffffff, r.u32()]);
  const flagSel = r.u8();
  // NEED_REPLY often; now and then anything (REPLY set, a version other than 1: the back-end hangs up).
  const flags = flagSel < 240 ? (flagSel & 1 ? FLAG_NEED_REPLY : 0) : r.u32() & ~VERSION;
  const m: Planned = { request, flags, payload: new Uint8Array(0), fds: [] };
  const fdKind = (): FdKind => {
    const k = r.u8();
    return k < 200 ? 'eventfd' : FD_KINDS[k % FD_KINDS.length]!;
  };
  const ramFd = (): FdKind => {
    const k = r.u8();
    return k < 190 ? 'guest-ram' : FD_KINDS[k % FD_KINDS.length]!;
  };
  const q = ringIndex(r, fe.queues);
  const form = r.u8();
  if (form >= 215) {
    // Any bytes of any length, and any fds.
    const len = form < 250 ? r.u8() % 64 : r.below(MAX_PAYLOAD + 1);
    m.payload = r.bytes(len);
    m.fds = Array.from({ length: r.u8() % 11 }, fdKind);
    return m;
  }
  switch (request) {
    case Request.SET_FEATURES: {
      const v = r.u8();
      m.payload = u64Payload(v < 200 ? fe.offered & ~(r.bool() ? 0n : r.u64()) : v < 230 ? r.u64() & fe.offered : r.u64());
      break;
    }
    case Request.SET_PROTOCOL_FEATURES: {
      const v = r.u8();
      const mask = r.bool() ? BACKEND_PROTOCOL_FEATURES : r.u64() & BACKEND_PROTOCOL_FEATURES;
      m.payload = u64Payload(v < 230 ? mask | (r.u8() < 200 ? bit(ProtocolFeature.REPLY_ACK) : 0n) : r.u64());
      break;
    }
    case Request.SET_VRING_NUM:
      m.payload = vringStatePayload({ index: q, num: r.u8() < 180 ? fe.ringSize : r.pick([1, 2, 128, 256, 0, 3, 257, 512, 0x8000, 0xffffffff, r.u32()]) });
      break;
    case Request.SET_VRING_BASE:
    case Request.GET_VRING_BASE:
    case Request.SET_VRING_ENABLE:
      m.payload = vringStatePayload({ index: q, num: r.u8() < 200 ? r.u8() % (request === Request.SET_VRING_BASE ? 8 : 2) : r.pick(INTERESTING) });
      break;
    case Request.SET_VRING_ADDR:
      m.payload = vringAddrPayload({ index: q, flags: r.u8() < 230 ? 0 : r.u32(), ...ringAddresses(r, q), log: r.u8() < 230 ? 0n : r.u64() });
      break;
    case Request.SET_VRING_KICK:
    case Request.SET_VRING_CALL:
    case Request.SET_VRING_ERR: {
      const noFd = r.u8() > 220;
      const extra = r.u8() < 240 ? 0n : BigInt(r.u32()) << 9n;
      m.payload = u64Payload(BigInt(q & 0xff) | (noFd ? VRING_NOFD : 0n) | extra);
      m.fds = noFd ? [] : [fdKind()];
      if (request === Request.SET_VRING_KICK && q < fe.queues) m.kickOf = q;
      break;
    }
    case Request.SET_MEM_TABLE: {
      const v = r.u8();
      const count = v < 200 ? 2 : v < 230 ? v % 9 : r.pick([9, 255, r.u32()]);
      const regions = Array.from({ length: Math.min(count, 8) }, (_, i) => region(r, i));
      const payload = memTablePayload(regions);
      new DataView(payload.buffer).setUint32(0, count, true);
      m.payload = payload;
      m.fds = Array.from({ length: r.u8() < 220 ? regions.length : r.u8() % 11 }, ramFd);
      break;
    }
    case Request.ADD_MEM_REG:
    case Request.REM_MEM_REG:
      m.payload = memRegionPayload(region(r, r.u8()));
      m.fds = Array.from({ length: r.u8() < 220 ? (request === Request.ADD_MEM_REG ? 1 : 0) : r.u8() % 11 }, ramFd);
      break;
    case Request.GET_CONFIG:
    case Request.SET_CONFIG: {
      const offset = r.u8() < 200 ? r.u8() % 64 : r.pick(INTERESTING);
      const size = r.u8() < 200 ? r.u8() % 61 : r.pick([0, 255, 256, 257, r.u16()]);
      const c = configPayload({ offset, flags: r.u8() < 230 ? 0 : r.u32(), data: r.bytes(Math.min(size, 300)) });
      new DataView(c.buffer).setUint32(4, size, true);
      m.payload = c;
      break;
    }
    case Request.SET_LOG_BASE:
    case Request.SET_LOG_FD:
    case Request.SET_INFLIGHT_FD:
      m.payload = u64Payload(r.u64());
      m.fds = Array.from({ length: r.u8() % 2 }, fdKind);
      break;
    default:
      // GET_* ask with no payload; the rest take a u64 or nothing.
      m.payload = r.u8() < 200 ? new Uint8Array(0) : u64Payload(r.u64());
  }
  return m;
}

/** The messages QEMU sends to set a vhost-user-blk back-end up, for `queues` rings of `size`. */
function handshake(fe: FrontEnd, r: ByteReader): { m: Planned; wait: boolean }[] {
  const ack = r.u8() < 200;
  const proto = BACKEND_PROTOCOL_FEATURES & ~(ack ? 0n : bit(ProtocolFeature.REPLY_ACK));
  const nr = ack ? FLAG_NEED_REPLY : 0;
  const msg = (request: number, payload: Uint8Array = new Uint8Array(0), fds: FdKind[] = [], flags = nr, kickOf?: number) => ({
    m: { request, flags, payload, fds, kickOf },
    wait: ANSWERED.has(request) || r.u8() < 128,
  });
  const out = [
    msg(Request.GET_FEATURES, undefined, [], 0),
    msg(Request.GET_PROTOCOL_FEATURES, undefined, [], 0),
    msg(Request.SET_PROTOCOL_FEATURES, u64Payload(proto), [], 0),
    msg(Request.SET_OWNER),
    msg(Request.GET_QUEUE_NUM, undefined, [], 0),
    msg(Request.GET_CONFIG, configPayload({ offset: 0, flags: 0, data: new Uint8Array(60) }), [], 0),
    msg(Request.SET_FEATURES, u64Payload(fe.offered & ~(r.bool() ? bit(VIRTIO_F_RING_EVENT_IDX) : 0n))),
    msg(Request.SET_MEM_TABLE, memTablePayload(honestRegions()), ['guest-ram', 'guest-ram']),
  ];
  for (let q = 0; q < fe.queues; q++) {
    const home = ringLayout(q);
    out.push(
      msg(Request.SET_VRING_NUM, vringStatePayload({ index: q, num: fe.ringSize })),
      msg(Request.SET_VRING_BASE, vringStatePayload({ index: q, num: 0 })),
      msg(
        Request.SET_VRING_ADDR,
        vringAddrPayload({ index: q, flags: 0, desc: uvaOf(home.desc)!, used: uvaOf(home.used)!, avail: uvaOf(home.avail)!, log: 0n }),
      ),
      msg(Request.SET_VRING_KICK, u64Payload(BigInt(q)), ['eventfd'], nr, q),
      msg(Request.SET_VRING_CALL, u64Payload(BigInt(q)), ['eventfd']),
      msg(Request.SET_VRING_ENABLE, vringStatePayload({ index: q, num: 1 })),
    );
  }
  return out;
}

/** An honest virtio-blk request on ring `q`: header, data, status. */
function request(fe: FrontEnd, q: number, r: ByteReader): void {
  const type = r.pick([BlkType.IN, BlkType.OUT, BlkType.FLUSH, BlkType.GET_ID]);
  const header = new Uint8Array(16);
  header.set(le(type, 4));
  header.set(le(r.below(DISK_SECTORS), 8), 8);
  const len = SECTOR_SIZE * (1 + (r.u8() % 2));
  const bufs = [{ addr: fe.driver.alloc(16, header), len: 16, write: false }];
  if (type !== BlkType.FLUSH) bufs.push({ addr: fe.driver.alloc(len), len, write: type === BlkType.IN || type === BlkType.GET_ID });
  bufs.push({ addr: fe.driver.alloc(1), len: 1, write: true });
  fe.driver.post(q, bufs, r.u8() < 40);
}

async function step(fe: FrontEnd, kind: number, r: ByteReader): Promise<void> {
  switch (kind % KINDS) {
    case Op.MESSAGE: {
      const m = plan(fe, r);
      await fe.send(m);
      if (r.u8() < 215) await fe.sync();
      return;
    }
    case Op.SPLIT: {
      // A message in pieces, its fds riding on any piece: the reader must put them together.
      const m = plan(fe, r);
      const cuts = Array.from({ length: 1 + (r.u8() % 3) }, () => r.below(HEADER_SIZE + m.payload.length + 1));
      await fe.send(m, cuts, r.u8() % 4);
      if (r.u8() < 215) await fe.sync();
      return;
    }
    case Op.RAW: {
      const mode = r.u8() % 5;
      const request = r.pick(REQUESTS);
      const header = (flags: number, size: number) => {
        const h = new Uint8Array(HEADER_SIZE);
        const v = new DataView(h.buffer);
        v.setUint32(0, request, true);
        v.setUint32(4, flags, true);
        v.setUint32(8, size, true);
        return h;
      };
      if (mode === 0)
        fe.raw(header(r.pick([0, 2, 3]) | (r.u32() & ~3), 0), true); // a version other than 1
      else if (mode === 1)
        fe.raw(header(VERSION, MAX_PAYLOAD + 1 + r.below(1 << 24)), true, r.bool() ? ['eventfd'] : []); // too long
      else if (mode === 2) {
        // A header that promises more than comes, then whatever follows: the stream is out of step.
        const size = 1 + r.below(MAX_PAYLOAD);
        fe.raw(Uint8Array.from([...header(VERSION, size), ...r.bytes(r.below(size))]), false, r.bool() ? ['eventfd'] : []);
      } else if (mode === 3)
        fe.raw(r.rest(256), false); // garbage
      else fe.raw(encode(request, 0).subarray(0, 1 + (r.u8() % (HEADER_SIZE - 1))), false, r.bool() ? ['eventfd'] : []); // a partial header
      if (r.u8() < 200) await fe.sync();
      return;
    }
    case Op.HANDSHAKE:
      for (const { m, wait } of handshake(fe, r)) {
        await fe.send(m);
        if (wait) await fe.sync();
      }
      return;
    case Op.RING: {
      const q = r.u8() % fe.queues;
      if (r.u8() < 160) request(fe, q, r);
      else fe.driver.apply(r.u8(), q, r);
      return;
    }
    case Op.KICK: {
      const q = r.u8() % fe.queues;
      const fd = fe.kicks[q];
      if (fd !== undefined) eventfdSignal(fd);
      if (r.u8() < 200) await fe.served(q);
      else for (let n = r.u8() % 16; n > 0; n--) await turn();
      return;
    }
    case Op.LITERAL: {
      // A message spelled out: request, flags (exact), fd kinds, whether to wait, payload. The seeds are made of these.
      const request = r.u32();
      const flags = r.u32();
      const fds = Array.from({ length: r.u8() % 11 }, () => FD_KINDS[r.u8() % FD_KINDS.length]!);
      const wait = r.u8() < 215;
      const payload = r.rest(MAX_PAYLOAD);
      const ringFd = request === Request.SET_VRING_KICK && payload.length === 8;
      await fe.send({ request, flags, exactFlags: true, payload, fds, kickOf: ringFd && payload[0]! < fe.queues ? payload[0] : undefined });
      if (wait) await fe.sync();
      return;
    }
    default:
      if (r.bool()) await fe.sync();
      else for (let n = r.u8() % 32; n > 0; n--) await turn();
  }
}

export const vhostUser: FuzzTarget<Ctx> = {
  name: 'vhost-user',
  description: 'the vhost-user back-end session (virtio-blk and its worker) under a hostile front-end: messages, fds, split and raw bytes, kicks',
  arbitrary: opsArbitrary(KINDS, { weights: [12, 2, 1, 2, 3, 3, 1, 2], maxOps: MAX_ACTIONS, maxArgs: 96 }),
  budgetMs: 20_000,
  setup() {
    const tmp = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
    const dir = fs.mkdtempSync(path.join(tmp, 'tsvisor-fuzz-vhost-user-'));
    const small = path.join(dir, 'small');
    fs.writeFileSync(small, Buffer.alloc(SMALL_FILE, 0x5a));
    const loopErrors: unknown[] = [];
    const loop = new EventLoop((e) => loopErrors.push(e));
    // The loop waits on a pool thread from its first add(): start it now, not inside a case that counts threads.
    const fd = eventfd();
    loop.remove(loop.add(fd, () => {}));
    closeFd(fd);
    return { dir, image: path.join(dir, 'disk.img'), small, loop, loopErrors };
  },
  async teardown(ctx) {
    ctx.loop.close();
    for (let i = 0; i < 10; i++) await turn();
    fs.rmSync(ctx.dir, { recursive: true, force: true });
  },
  async run(ctx, data) {
    // An error thrown from a callback of the session's (a worker's message, a promise nobody awaits) is this case's first failure.
    const strays: unknown[] = [];
    const stray = (e: unknown): void => void strays.push(e);
    process.on('uncaughtException', stray);
    process.on('unhandledRejection', stray);
    try {
      await conversation(ctx, data, strays);
    } finally {
      process.off('uncaughtException', stray);
      process.off('unhandledRejection', stray);
    }
  },
};

async function conversation(ctx: Ctx, data: Uint8Array, strays: unknown[]): Promise<void> {
  const fdsBefore = openFds();
  const threadsBefore = threads();
  const mapsBefore = mappings(ctx.dir);
  ctx.loopErrors.length = 0;
  const ops = operations(data, MAX_ACTIONS + 1);
  const r0 = firstArgs(ops);
  const queues = 1 + (r0.u8() % 2);
  const ringSize = 1 << (r0.u8() % 9);
  const readOnly = r0.u8() > 230;
  const daemonEnds = r0.u8() > 200;
  const turnsBeforeEnd = r0.u8() % 8;

  fs.writeFileSync(ctx.image, Buffer.alloc(DISK_SECTORS * SECTOR_SIZE, 0xa5));
  const blk = new VirtioBlock({ name: 'vhost-user-blk', image: openImage({ path: ctx.image, readOnly, cache: 'writeback' }), queues });
  const [ours, theirs] = unixPair();
  let onEnd: () => void = () => {};
  const endedP = new Promise<void>((resolve) => (onEnd = resolve));
  const log: string[] = [];
  /** What the session had done when it ended: it must do nothing more. */
  let atEnd: { lines: number; errors: number } | undefined;
  /** Fds made the moment the session ended, on the numbers it had just closed: it must not close them. */
  let decoys: number[] = [];
  const session = new BackendSession(
    theirs,
    blk,
    ctx.loop,
    (l) => log.push(l),
    (s) => {
      atEnd = { lines: log.length, errors: s.counters.protocolErrors };
      decoys = Array.from({ length: DECOYS }, () => eventfd());
      onEnd();
    },
  );
  const mem = sharedGuestMemory();
  const fe = new FrontEnd(ours, ctx, mem, queues, ringSize, blk);
  let failure: unknown;
  try {
    for (const { kind, args } of ops) {
      await step(fe, kind, args);
      expect(ctx.loopErrors.length === 0, 'event-loop', `the event loop caught: ${ctx.loopErrors[0]}`);
    }
    if (!fe.closed && !fe.desynced) fe.drain();
  } catch (e) {
    failure = e;
  }
  // The conversation ends as a front-end ends it, or as the daemon does (stopping while a message may be in hand).
  if (daemonEnds) {
    // Best when the last message is in hand: the session has taken up every message sent (bounded), then a few turns more or less.
    for (let i = 0; i < 400 && !fe.desynced && session.counters.messages < fe.sent && !atEnd; i++) await (i < 100 ? turn() : sleep(1));
    for (let i = 0; i < turnsBeforeEnd; i++) await turn();
  }
  const stopping = daemonEnds ? session.end('the daemon is stopping') : undefined;
  fe.close();
  closeFd(ours);
  const late = !(await within(Promise.all([endedP, stopping]), END_MS));
  mem.close();
  if (strays.length) throw strays[0];
  if (failure) throw failure;
  expect(!late, 'end', `the session did not end within ${END_MS} ms of the front-end hanging up (log: ${log.slice(-3).join(' | ')})`);
  expect(atEnd, 'end', 'the session ended without telling its owner');
  // Whatever the session left running (a message in hand when it ended) gets a few turns to show itself.
  for (let i = 0; i < 10; i++) await turn();
  if (strays.length) throw strays[0];
  const lost = decoys.filter((fd) => !isEventfd(fd));
  closeAll(decoys.filter((fd) => !lost.includes(fd)));
  expect(lost.length === 0, 'double-close', `the session closed fds it no longer owned after it ended (fds ${lost.join(', ')}, which had been its own)`);
  expect(
    log.length === atEnd.lines && session.counters.protocolErrors === atEnd.errors,
    'after-end',
    `the session went on after it ended: ${log.slice(atEnd.lines).join(' | ') || `${session.counters.protocolErrors - atEnd.errors} errors`}`,
  );
  expect(ctx.loopErrors.length === 0, 'event-loop', `the event loop caught: ${ctx.loopErrors[0]}`);
  const fdsAfter = openFds();
  expect(fdsAfter === fdsBefore, 'fd-leak', `${fdsAfter - fdsBefore} fds more open after the session ended (${fdsBefore} before, ${fdsAfter} after)`);
  const mapsAfter = mappings(ctx.dir);
  expect(mapsAfter <= mapsBefore, 'mapping-leak', `${mapsAfter - mapsBefore} mappings of guest memory files left after the session ended`);
  for (const line of log) {
    expect(!/device worker exited/.test(line), 'worker-died', `the device worker died: ${line}`);
    const reason = REASON.exec(line)?.[1];
    expect(reason === undefined || EXPECTED_REASON.test(reason), 'internal-error', `the session's own state went wrong: ${line}`);
  }
  const threadsAfter = threads();
  expect(
    threadsAfter <= threadsBefore,
    'thread-leak',
    `${threadsAfter - threadsBefore} threads more after the session ended: a device worker was left running`,
  );
}

const FD = Object.fromEntries(FD_KINDS.map((k, i) => [k, i])) as Record<FdKind, number>;

/**
 * The seed corpus (fuzz/corpus/vhost-user/seed-*), as LITERAL messages: the
 * honest QEMU handshake and variations. `offered` is what GET_FEATURES answers
 * for the device of `queues` rings.
 */
export function vhostUserSeeds(offered: (queues: number) => bigint): Record<string, Uint8Array> {
  const NR = VERSION | FLAG_NEED_REPLY;
  const lit = (request: number, payload: Uint8Array = new Uint8Array(0), fds: FdKind[] = [], flags = NR, wait = true) => ({
    kind: Op.LITERAL,
    args: Uint8Array.from([...le(request, 4), ...le(flags, 4), fds.length, ...fds.map((k) => FD[k]), wait ? 0 : 255, ...payload]),
  });
  const setup = (queues: number, ringSize: number, opts: { daemonEnds?: boolean; turns?: number } = {}) => ({
    kind: Op.WAIT,
    args: Uint8Array.from([queues - 1, Math.log2(ringSize), 0, opts.daemonEnds ? 255 : 0, opts.turns ?? 0]),
  });
  const state = (index: number, num: number) => vringStatePayload({ index, num });
  const ring = (q: number, desc = ringLayout(q)) =>
    vringAddrPayload({ index: q, flags: 0, desc: uvaOf(desc.desc)!, used: uvaOf(desc.used)!, avail: uvaOf(desc.avail)!, log: 0n });
  /** An honest read or write of sector `sector` on ring `q`. */
  const blkRequest = (q: number, type: number, sector: number) => ({
    kind: Op.RING,
    args: Uint8Array.from([q, 0, ([BlkType.IN, BlkType.OUT, BlkType.FLUSH, BlkType.GET_ID] as number[]).indexOf(type), ...le(sector, 4), 0, 255]),
  });
  const kick = (q: number) => ({ kind: Op.KICK, args: Uint8Array.from([q, 0]) });
  const sync = { kind: Op.WAIT, args: Uint8Array.from([1]) };
  const protocol = BACKEND_PROTOCOL_FEATURES;
  const negotiate = (queues: number, features: bigint, proto = protocol) => [
    lit(Request.GET_FEATURES, undefined, [], VERSION),
    lit(Request.GET_PROTOCOL_FEATURES, undefined, [], VERSION),
    lit(Request.SET_PROTOCOL_FEATURES, u64Payload(proto), [], VERSION),
    lit(Request.SET_OWNER),
    lit(Request.GET_QUEUE_NUM, undefined, [], VERSION),
    ...(proto & bit(ProtocolFeature.CONFIG) ? [lit(Request.GET_CONFIG, configPayload({ offset: 0, flags: 0, data: new Uint8Array(60) }), [], VERSION)] : []),
    lit(Request.SET_FEATURES, u64Payload(features)),
    lit(Request.SET_MEM_TABLE, memTablePayload(honestRegions()), ['guest-ram', 'guest-ram']),
    ...Array.from({ length: queues }, (_, q) => [
      lit(Request.SET_VRING_NUM, state(q, 16)),
      lit(Request.SET_VRING_BASE, state(q, 0)),
      lit(Request.SET_VRING_ADDR, ring(q)),
      lit(Request.SET_VRING_KICK, u64Payload(BigInt(q)), ['eventfd']),
      lit(Request.SET_VRING_CALL, u64Payload(BigInt(q)), ['eventfd']),
      ...(features & bit(F_PROTOCOL_FEATURES) ? [lit(Request.SET_VRING_ENABLE, state(q, 1))] : []),
    ]).flat(),
  ];
  const io = (q: number) => [blkRequest(q, BlkType.OUT, 3), blkRequest(q, BlkType.IN, 3), blkRequest(q, BlkType.FLUSH, 0), kick(q), sync];
  const seed = (...ops: { kind: number; args: Uint8Array }[]) => encodeOps(ops);
  return {
    // QEMU's handshake, requests served, the ring stopped (its base comes back).
    'seed-handshake': seed(setup(1, 16), ...negotiate(1, offered(1)), ...io(0), lit(Request.GET_VRING_BASE, state(0, 0), [], VERSION)),
    // Two rings; the memory table replaced while they run (they stop and start again); a reset.
    'seed-two-rings-new-table': seed(
      setup(2, 16),
      ...negotiate(2, offered(2)),
      ...io(0),
      ...io(1),
      lit(Request.SET_MEM_TABLE, memTablePayload(honestRegions()), ['guest-ram', 'guest-ram']),
      ...io(1),
      lit(Request.SET_VRING_CALL, u64Payload(0n), ['eventfd']),
      lit(Request.GET_VRING_BASE, state(1, 0), [], VERSION),
      lit(Request.RESET_DEVICE),
    ),
    // No protocol features: the kick enables the ring; RESET_OWNER.
    'seed-legacy': seed(setup(1, 16), ...negotiate(1, offered(1) & ~bit(F_PROTOCOL_FEATURES), 0n), ...io(0), lit(Request.RESET_OWNER, undefined, [], VERSION)),
    // Regions a back-end must refuse (REPLY_ACK makes them error replies): larger than their file, overlapping, unaligned, the wrong fd kind.
    'seed-bad-regions': seed(
      setup(1, 16),
      lit(Request.SET_PROTOCOL_FEATURES, u64Payload(protocol), [], VERSION),
      lit(Request.SET_MEM_TABLE, memTablePayload([{ guestAddress: 0n, size: 0x10000n, userAddress: UVA[0], mmapOffset: 0n }]), ['small-memfd']),
      lit(Request.SET_MEM_TABLE, memTablePayload([{ ...honestRegions()[1]!, size: 0x11000n }]), ['guest-ram']),
      lit(Request.SET_MEM_TABLE, memTablePayload([honestRegions()[0]!, { ...honestRegions()[1]!, userAddress: UVA[0] + 0x8000n }]), ['guest-ram', 'guest-ram']),
      lit(Request.SET_MEM_TABLE, memTablePayload([{ ...honestRegions()[0]!, mmapOffset: 0x800n }]), ['guest-ram']),
      lit(Request.SET_MEM_TABLE, memTablePayload([honestRegions()[0]!]), ['eventfd']),
      lit(Request.SET_MEM_TABLE, memTablePayload([honestRegions()[0]!]), ['read-only-file']),
      lit(Request.SET_MEM_TABLE, memTablePayload(honestRegions()), ['guest-ram']),
      lit(Request.GET_QUEUE_NUM, undefined, [], VERSION),
    ),
    // Rings outside the regions, then fds of the wrong kind for a running ring: its start fails in the worker, the error fd is told.
    'seed-bad-rings': seed(
      setup(1, 16),
      ...negotiate(1, offered(1)).slice(0, 8),
      lit(Request.SET_VRING_NUM, state(0, 16)),
      lit(Request.SET_VRING_ADDR, vringAddrPayload({ index: 0, flags: 0, desc: UVA[0] + 0x10000n, used: UVA[0] + 0xfff8n, avail: 0n, log: 0n })),
      lit(Request.SET_VRING_ADDR, ring(0)),
      lit(Request.SET_VRING_ERR, u64Payload(0n), ['eventfd']),
      lit(Request.SET_VRING_KICK, u64Payload(0n), ['file']),
      lit(Request.SET_VRING_ENABLE, state(0, 1)),
      sync,
      lit(Request.SET_VRING_KICK, u64Payload(0n), ['eventfd']),
      ...io(0),
      lit(Request.SET_VRING_KICK, u64Payload(0n | VRING_NOFD)),
    ),
    // A table whose second region cannot be mapped (a read-only file): the first region's mapping goes too.
    'seed-region-unmappable': seed(
      setup(1, 16),
      lit(Request.SET_PROTOCOL_FEATURES, u64Payload(protocol), [], VERSION),
      lit(Request.SET_MEM_TABLE, memTablePayload([honestRegions()[0]!, { ...honestRegions()[1]!, size: 0x1000n, mmapOffset: 0n }]), [
        'guest-ram',
        'read-only-file',
      ]),
      lit(Request.ADD_MEM_REG, memRegionPayload(honestRegions()[0]!), ['guest-ram']),
      lit(Request.ADD_MEM_REG, memRegionPayload({ ...honestRegions()[1]!, size: 0x1000n, mmapOffset: 0n }), ['read-only-file']),
      lit(Request.GET_QUEUE_NUM, undefined, [], VERSION),
    ),
    // The error fd a file the back-end cannot write: a device failure must not take the back-end down.
    'seed-unwritable-err-fd': seed(
      setup(1, 16),
      ...negotiate(1, offered(1)).slice(0, 8),
      lit(Request.SET_VRING_NUM, state(0, 16)),
      lit(Request.SET_VRING_ADDR, ring(0)),
      lit(Request.SET_VRING_ERR, u64Payload(0n), ['read-only-file']),
      lit(Request.SET_VRING_KICK, u64Payload(0n), ['file']),
      lit(Request.SET_VRING_ENABLE, state(0, 1)),
      sync,
      lit(Request.GET_QUEUE_NUM, undefined, [], VERSION),
    ),
    // Memory slots: regions added one by one (one twice: refused), the region of the buffers removed under a running ring.
    'seed-mem-slots': seed(
      setup(1, 16),
      lit(Request.SET_PROTOCOL_FEATURES, u64Payload(protocol), [], VERSION),
      lit(Request.GET_MAX_MEM_SLOTS, undefined, [], VERSION),
      lit(Request.SET_FEATURES, u64Payload(offered(1))),
      lit(Request.ADD_MEM_REG, memRegionPayload(honestRegions()[0]!), ['guest-ram']),
      lit(Request.ADD_MEM_REG, memRegionPayload(honestRegions()[1]!), ['guest-ram']),
      lit(Request.ADD_MEM_REG, memRegionPayload(honestRegions()[1]!), ['guest-ram']),
      ...negotiate(1, offered(1)).slice(8),
      ...io(0),
      lit(Request.REM_MEM_REG, memRegionPayload(honestRegions()[1]!)),
      ...io(0),
      lit(Request.GET_VRING_BASE, state(0, 0), [], VERSION),
    ),
    // The daemon stops while a stop of the ring is in hand (GET_VRING_BASE sent, not waited for).
    'seed-daemon-stops': seed(
      setup(1, 16, { daemonEnds: true }),
      ...negotiate(1, offered(1)),
      ...io(0),
      lit(Request.GET_VRING_BASE, state(0, 0), [], VERSION, false),
    ),
    // Half a message with an fd (its header promises 100 bytes, 10 come), then the daemon stops: the fd goes too.
    'seed-half-message-daemon-stops': seed(setup(1, 16, { daemonEnds: true }), lit(Request.GET_QUEUE_NUM, undefined, [], VERSION), {
      kind: Op.RAW,
      args: Uint8Array.from([2, 0, ...le(99, 4), ...le(10, 4), ...new Uint8Array(10), 1, 0]),
    }),
    // The front-end hangs up with messages in flight that ask for acks.
    'seed-hang-up-in-flight': seed(
      setup(1, 16),
      ...negotiate(1, offered(1)),
      lit(Request.SET_VRING_CALL, u64Payload(0n), ['eventfd'], NR, false),
      lit(Request.SET_VRING_ENABLE, state(0, 0), [], NR, false),
      lit(Request.SET_VRING_ENABLE, state(0, 1), [], NR, false),
    ),
  };
}
