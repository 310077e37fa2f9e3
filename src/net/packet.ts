// Ethernet, IPv4, TCP and UDP header layouts and the Internet checksum: the
// pieces the user-mode network stack and the e1000's offloads share. Offsets are
// into a frame that starts with the Ethernet header.

export const ETH_HLEN = 14;
export const ETH_ALEN = 6;
/** Largest frame without offloads: 1500-byte MTU, Ethernet header, one VLAN tag. */
export const MAX_FRAME = 1518;
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

export const BROADCAST_MAC = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

export function parseMac(text: string): Uint8Array | undefined {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(text)) return undefined;
  return Uint8Array.from(text.split(':').map((h) => parseInt(h, 16)));
}

export function formatMac(mac: Uint8Array): string {
  return [...mac.subarray(0, ETH_ALEN)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

export function sameMac(a: Uint8Array, aOff: number, b: Uint8Array): boolean {
  for (let i = 0; i < ETH_ALEN; i++) if (a[aOff + i] !== b[i]) return false;
  return true;
}

/** An IPv4 address as an unsigned 32-bit number. */
export function parseIpv4(text: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m) return undefined;
  const parts = m.slice(1).map(Number);
  if (parts.some((p) => p > 255)) return undefined;
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

export function formatIpv4(ip: number): string {
  return [ip >>> 24, (ip >>> 16) & 255, (ip >>> 8) & 255, ip & 255].join('.');
}

/** The ones'-complement sum of [start, end) folded into 16 bits, added to `acc`. */
export function sum16(data: Uint8Array, start: number, end: number, acc = 0): number {
  let sum = acc;
  let i = start;
  for (; i + 1 < end; i += 2) sum += (data[i]! << 8) | data[i + 1]!;
  if (i < end) sum += data[i]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** The Internet checksum of [start, end), starting from a partial sum. */
export function checksum(data: Uint8Array, start: number, end: number, acc = 0): number {
  return ~sum16(data, start, end, acc) & 0xffff;
}

/** The TCP/UDP pseudo-header sum for an IPv4 packet whose header starts at `ip`. */
export function ipv4PseudoSum(frame: Uint8Array, ip: number, proto: number, length: number): number {
  return sum16(frame, ip + 12, ip + 20, proto + length);
}

export function readU16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

export function writeU16(b: Uint8Array, at: number, v: number): void {
  b[at] = (v >>> 8) & 255;
  b[at + 1] = v & 255;
}

export function readU32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

export function writeU32(b: Uint8Array, at: number, v: number): void {
  b[at] = (v >>> 24) & 255;
  b[at + 1] = (v >>> 16) & 255;
  b[at + 2] = (v >>> 8) & 255;
  b[at + 3] = v & 255;
}

/** Writes an Ethernet header. */
export function writeEthernet(frame: Uint8Array, dst: Uint8Array, src: Uint8Array, type: number): void {
  frame.set(dst.subarray(0, ETH_ALEN), 0);
  frame.set(src.subarray(0, ETH_ALEN), ETH_ALEN);
  writeU16(frame, 12, type);
}

export interface Ipv4Fields {
  src: number;
  dst: number;
  proto: number;
  id?: number;
  ttl?: number;
}

/** Writes a 20-byte IPv4 header at `at` for a packet of `totalLength` bytes, checksum included. */
export function writeIpv4(frame: Uint8Array, at: number, totalLength: number, f: Ipv4Fields): void {
  frame[at] = 0x45;
  frame[at + 1] = 0;
  writeU16(frame, at + 2, totalLength);
  writeU16(frame, at + 4, f.id ?? 0);
  writeU16(frame, at + 6, 0x4000); // don't fragment
  frame[at + 8] = f.ttl ?? 64;
  frame[at + 9] = f.proto;
  writeU16(frame, at + 10, 0);
  writeU32(frame, at + 12, f.src);
  writeU32(frame, at + 16, f.dst);
  writeU16(frame, at + 10, checksum(frame, at, at + 20));
}
