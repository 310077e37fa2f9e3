// The vhost-user wire format (QEMU's docs/interop/vhost-user.rst): a 12-byte
// header (request, flags, payload size) and a payload whose layout the request
// decides, with file descriptors riding along as SCM_RIGHTS. Both ends of tsvisor
// (the front-end in the VMM, the back-end daemons) encode and decode here, and
// nothing else in them reads a raw message. Decoding checks every size against
// the request's layout: a peer is untrusted both ways.

export const HEADER_SIZE = 12;
/** The largest payload either side accepts (GET_CONFIG carries at most 256 bytes; a memory table of 8 regions 264). */
export const MAX_PAYLOAD = 4096;
/** File descriptors one message may carry (a memory table's regions). */
export const MAX_FDS = 8;
/** Regions SET_MEM_TABLE may describe. */
export const MAX_REGIONS = 8;
/** The largest config space GET_CONFIG moves. */
export const MAX_CONFIG_SIZE = 256;

export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

/** Requests the back-end answers with a message of their own (REPLY_ACK adds no acknowledgement to them). */
export const ANSWERED: ReadonlySet<number> = new Set([
  Request.GET_FEATURES,
  Request.GET_PROTOCOL_FEATURES,
  Request.GET_VRING_BASE,
  Request.GET_QUEUE_NUM,
  Request.GET_CONFIG,
  Request.GET_MAX_MEM_SLOTS,
]);

const REQUEST_NAMES = new Map<number, string>(Object.entries(Request).map(([name, n]) => [n, name]));

export function requestName(request: number): string {
  return REQUEST_NAMES.get(request) ?? `request ${request}`;
}

/** Header flags: the protocol version in the low two bits, then REPLY and NEED_REPLY. */
export const VERSION = 1;
export const FLAG_REPLY = 1 << 2;
export const FLAG_NEED_REPLY = 1 << 3;

/** The virtio feature bit that says the back-end speaks protocol features. */
export const F_PROTOCOL_FEATURES = 30n;

export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CONFIG: 9,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** In a ring fd message's u64: the ring index, and the flag that says no fd came. */
export const VRING_INDEX_MASK = 0xffn;
export const VRING_NOFD = 0x100n;

export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

export interface Header {
  request: number;
  flags: number;
  size: number;
}

export interface Message extends Header {
  payload: Uint8Array;
  /** Received file descriptors: the receiver owns them (and closes the ones it does not keep). */
  fds: number[];
}

export function decodeHeader(b: Uint8Array): Header {
  const v = view(b);
  const h = { request: v.getUint32(0, true), flags: v.getUint32(4, true), size: v.getUint32(8, true) };
  if ((h.flags & 3) !== VERSION) throw new ProtocolError(`${requestName(h.request)}: protocol version ${h.flags & 3}, not ${VERSION}`);
  if (h.size > MAX_PAYLOAD) throw new ProtocolError(`${requestName(h.request)}: a ${h.size}-byte payload (at most ${MAX_PAYLOAD})`);
  return h;
}

export function encode(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const v = view(out);
  v.setUint32(0, request, true);
  v.setUint32(4, flags | VERSION, true);
  v.setUint32(8, payload.length, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Checks that `m`'s payload is `size` bytes (the request's fixed layout). */
function expectSize(m: { request: number; payload: Uint8Array }, size: number): DataView {
  if (m.payload.length !== size) throw new ProtocolError(`${requestName(m.request)}: a ${m.payload.length}-byte payload, expected ${size}`);
  return view(m.payload);
}

export function u64Payload(value: bigint): Uint8Array {
  const b = new Uint8Array(8);
  view(b).setBigUint64(0, value, true);
  return b;
}

export function decodeU64(m: { request: number; payload: Uint8Array }): bigint {
  return expectSize(m, 8).getBigUint64(0, true);
}

/** struct vhost_vring_state: a ring index and a number (size, base, enable). */
export interface VringState {
  index: number;
  num: number;
}

export function vringStatePayload(s: VringState): Uint8Array {
  const b = new Uint8Array(8);
  view(b).setUint32(0, s.index, true);
  view(b).setUint32(4, s.num, true);
  return b;
}

export function decodeVringState(m: { request: number; payload: Uint8Array }): VringState {
  const v = expectSize(m, 8);
  return { index: v.getUint32(0, true), num: v.getUint32(4, true) };
}

/** struct vhost_vring_addr: the rings' addresses in the front-end's address space. */
export interface VringAddr {
  index: number;
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

const VRING_ADDR_SIZE = 40;

export function vringAddrPayload(a: VringAddr): Uint8Array {
  const b = new Uint8Array(VRING_ADDR_SIZE);
  const v = view(b);
  v.setUint32(0, a.index, true);
  v.setUint32(4, a.flags, true);
  v.setBigUint64(8, a.desc, true);
  v.setBigUint64(16, a.used, true);
  v.setBigUint64(24, a.avail, true);
  v.setBigUint64(32, a.log, true);
  return b;
}

export function decodeVringAddr(m: { request: number; payload: Uint8Array }): VringAddr {
  const v = expectSize(m, VRING_ADDR_SIZE);
  return {
    index: v.getUint32(0, true),
    flags: v.getUint32(4, true),
    desc: v.getBigUint64(8, true),
    used: v.getBigUint64(16, true),
    avail: v.getBigUint64(24, true),
    log: v.getBigUint64(32, true),
  };
}

/** A ring fd message (KICK, CALL, ERR): the ring, and whether an fd came (none: the NOFD flag). */
export function decodeVringFd(m: { request: number; payload: Uint8Array }): { index: number; noFd: boolean } {
  const u = decodeU64(m);
  if (u & ~(VRING_INDEX_MASK | VRING_NOFD)) throw new ProtocolError(`${requestName(m.request)}: unknown bits in 0x${u.toString(16)}`);
  return { index: Number(u & VRING_INDEX_MASK), noFd: (u & VRING_NOFD) !== 0n };
}

/** One region of guest RAM as the front-end shares it: guest-physical, size, its own address, and the offset in the fd sent along. */
export interface MemRegion {
  guestAddress: bigint;
  size: bigint;
  userAddress: bigint;
  mmapOffset: bigint;
}

const REGION_SIZE = 32;

function writeRegion(v: DataView, at: number, r: MemRegion): void {
  v.setBigUint64(at, r.guestAddress, true);
  v.setBigUint64(at + 8, r.size, true);
  v.setBigUint64(at + 16, r.userAddress, true);
  v.setBigUint64(at + 24, r.mmapOffset, true);
}

function readRegion(v: DataView, at: number): MemRegion {
  return {
    guestAddress: v.getBigUint64(at, true),
    size: v.getBigUint64(at + 8, true),
    userAddress: v.getBigUint64(at + 16, true),
    mmapOffset: v.getBigUint64(at + 24, true),
  };
}

/** SET_MEM_TABLE: u32 count, u32 padding, then the regions (their fds, in order, ride along). */
export function memTablePayload(regions: readonly MemRegion[]): Uint8Array {
  const b = new Uint8Array(8 + REGION_SIZE * regions.length);
  const v = view(b);
  v.setUint32(0, regions.length, true);
  regions.forEach((r, i) => writeRegion(v, 8 + i * REGION_SIZE, r));
  return b;
}

export function decodeMemTable(m: { request: number; payload: Uint8Array }): MemRegion[] {
  if (m.payload.length < 8) throw new ProtocolError(`SET_MEM_TABLE: a ${m.payload.length}-byte payload`);
  const count = view(m.payload).getUint32(0, true);
  if (count > MAX_REGIONS) throw new ProtocolError(`SET_MEM_TABLE: ${count} regions (at most ${MAX_REGIONS})`);
  const v = expectSize(m, 8 + REGION_SIZE * count);
  return Array.from({ length: count }, (_, i) => readRegion(v, 8 + i * REGION_SIZE));
}

/** ADD_MEM_REG and REM_MEM_REG: u64 padding, then one region. */
export function memRegionPayload(r: MemRegion): Uint8Array {
  const b = new Uint8Array(8 + REGION_SIZE);
  writeRegion(view(b), 8, r);
  return b;
}

export function decodeMemRegion(m: { request: number; payload: Uint8Array }): MemRegion {
  return readRegion(expectSize(m, 8 + REGION_SIZE), 8);
}

/** GET_CONFIG and SET_CONFIG: u32 offset, u32 size, u32 flags, then `size` bytes. */
export interface ConfigSpace {
  offset: number;
  flags: number;
  data: Uint8Array;
}

export function configPayload(c: ConfigSpace): Uint8Array {
  const b = new Uint8Array(12 + c.data.length);
  const v = view(b);
  v.setUint32(0, c.offset, true);
  v.setUint32(4, c.data.length, true);
  v.setUint32(8, c.flags, true);
  b.set(c.data, 12);
  return b;
}

export function decodeConfig(m: { request: number; payload: Uint8Array }): ConfigSpace {
  if (m.payload.length < 12) throw new ProtocolError(`${requestName(m.request)}: a ${m.payload.length}-byte payload`);
  const v = view(m.payload);
  const size = v.getUint32(4, true);
  if (size > MAX_CONFIG_SIZE) throw new ProtocolError(`${requestName(m.request)}: ${size} config bytes (at most ${MAX_CONFIG_SIZE})`);
  expectSize(m, 12 + size);
  return { offset: v.getUint32(0, true), flags: v.getUint32(8, true), data: m.payload.slice(12) };
}
