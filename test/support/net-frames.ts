// Frames a guest's network stack would send, and a reader for what comes back:
// enough Ethernet/ARP/IPv4/UDP/TCP/ICMP for tests to play the guest against a
// network back-end or device.
import { VNET_HDR_LEN, type NetPort } from '../../src/net/backend.js';
import {
  checksum,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  ipv4PseudoSum,
  readU16,
  readU32,
  sum16,
  writeEthernet,
  writeIpv4,
  writeU16,
  writeU32,
} from '../../src/net/packet.js';

export const GUEST_MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
export const BROADCAST = Uint8Array.of(255, 255, 255, 255, 255, 255);

export const ip = (text: string): number => text.split('.').reduce((a, b) => ((a << 8) | Number(b)) >>> 0, 0);

/** The addresses of user-mode networking's default subnet, as the guest sees them. */
export const Slirp = { GUEST: ip('10.0.2.15'), HOST: ip('10.0.2.2'), DNS: ip('10.0.2.3') } as const;
/** TCP header flags. */
export const Tcp = { FIN: 1, SYN: 2, RST: 4, PSH: 8, ACK: 16 } as const;

/** Prefixes a zeroed vnet header. */
export function packet(frame: Uint8Array): Uint8Array {
  const p = new Uint8Array(VNET_HDR_LEN + frame.length);
  p.set(frame, VNET_HDR_LEN);
  return p;
}

export function arpRequest(senderIp: number, targetIp: number): Uint8Array {
  const f = new Uint8Array(42);
  writeEthernet(f, BROADCAST, GUEST_MAC, ETHERTYPE_ARP);
  writeU16(f, 14, 1);
  writeU16(f, 16, ETHERTYPE_IPV4);
  f[18] = 6;
  f[19] = 4;
  writeU16(f, 20, 1);
  f.set(GUEST_MAC, 22);
  writeU32(f, 28, senderIp);
  writeU32(f, 38, targetIp);
  return f;
}

export function ipv4Frame(proto: number, src: number, dst: number, body: Uint8Array, dstMac = BROADCAST): Uint8Array {
  const f = new Uint8Array(34 + body.length);
  writeEthernet(f, dstMac, GUEST_MAC, ETHERTYPE_IPV4);
  writeIpv4(f, 14, 20 + body.length, { src, dst, proto });
  f.set(body, 34);
  return f;
}

export function udpFrame(src: number, srcPort: number, dst: number, dstPort: number, payload: Uint8Array): Uint8Array {
  const u = new Uint8Array(8 + payload.length);
  writeU16(u, 0, srcPort);
  writeU16(u, 2, dstPort);
  writeU16(u, 4, u.length);
  u.set(payload, 8);
  const f = ipv4Frame(17, src, dst, u);
  writeU16(f, 40, checksum(f, 34, f.length, ipv4PseudoSum(f, 14, 17, u.length)) || 0xffff);
  return f;
}

export interface TcpFields {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window?: number;
  mss?: number;
  payload?: Uint8Array;
}

export function tcpFrame(src: number, dst: number, t: TcpFields): Uint8Array {
  const opt = t.mss !== undefined ? 4 : 0;
  const payload = t.payload ?? new Uint8Array(0);
  const seg = new Uint8Array(20 + opt + payload.length);
  writeU16(seg, 0, t.srcPort);
  writeU16(seg, 2, t.dstPort);
  writeU32(seg, 4, t.seq >>> 0);
  writeU32(seg, 8, t.ack >>> 0);
  seg[12] = ((20 + opt) / 4) << 4;
  seg[13] = t.flags;
  writeU16(seg, 14, t.window ?? 65535);
  if (opt) {
    seg[20] = 2;
    seg[21] = 4;
    writeU16(seg, 22, t.mss!);
  }
  seg.set(payload, 20 + opt);
  const f = ipv4Frame(6, src, dst, seg);
  writeU16(f, 34 + 16, checksum(f, 34, f.length, ipv4PseudoSum(f, 14, 6, seg.length)));
  return f;
}

/** A frame as the guest would see it, headers decoded; checksums are verified. */
export interface Parsed {
  frame: Uint8Array;
  dstMac: Uint8Array;
  type: number;
  src?: number;
  dst?: number;
  proto?: number;
  body?: Uint8Array;
  ipChecksumOk?: boolean;
  l4ChecksumOk?: boolean;
  tcp?: { srcPort: number; dstPort: number; seq: number; ack: number; flags: number; window: number; payload: Uint8Array };
  udp?: { srcPort: number; dstPort: number; payload: Uint8Array };
}

export function parse(frame: Uint8Array): Parsed {
  const p: Parsed = { frame, dstMac: frame.slice(0, 6), type: readU16(frame, 12) };
  if (p.type !== ETHERTYPE_IPV4) return p;
  const ihl = (frame[14]! & 15) * 4;
  const total = readU16(frame, 16);
  p.src = readU32(frame, 26);
  p.dst = readU32(frame, 30);
  p.proto = frame[23];
  p.body = frame.subarray(14 + ihl, 14 + total);
  p.ipChecksumOk = sum16(frame, 14, 14 + ihl) === 0xffff;
  const b = p.body;
  if (p.proto === 6 || p.proto === 17) p.l4ChecksumOk = sum16(frame, 14 + ihl, 14 + total, ipv4PseudoSum(frame, 14, p.proto, b.length)) === 0xffff;
  if (p.proto === 6) {
    p.tcp = {
      srcPort: readU16(b, 0),
      dstPort: readU16(b, 2),
      seq: readU32(b, 4),
      ack: readU32(b, 8),
      flags: b[13]!,
      window: readU16(b, 14),
      payload: b.subarray((b[12]! >> 4) * 4),
    };
  }
  if (p.proto === 17) p.udp = { srcPort: readU16(b, 0), dstPort: readU16(b, 2), payload: b.subarray(8, readU16(b, 4)) };
  return p;
}

/**
 * The guest's side of a back-end: keeps the frames it receives, decoded.
 * `accept = false` plays a guest without receive buffers. More than
 * `maxPerTurn` frames in one turn of the event loop is a back-end stuck in a
 * loop: receive() throws instead of letting it freeze the test.
 */
export class SimGuest implements NetPort {
  frames: Parsed[] = [];
  accept = true;
  private waiters: (() => void)[] = [];
  private thisTurn = 0;

  constructor(private readonly maxPerTurn = Infinity) {}

  receive(_queue: number, p: Uint8Array): boolean {
    if (!this.accept) return false;
    if (this.thisTurn++ === 0) setImmediate(() => (this.thisTurn = 0));
    if (this.thisTurn > this.maxPerTurn) throw new Error(`more than ${this.maxPerTurn} frames without yielding`);
    this.frames.push(parse(p.slice(VNET_HDR_LEN)));
    for (const w of this.waiters.splice(0)) w();
    return true;
  }

  /** Waits for (and removes) the first frame matching. */
  async next(match: (p: Parsed) => boolean, ms = 3000): Promise<Parsed> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.frames.findIndex(match);
      if (i >= 0) return this.frames.splice(i, 1)[0]!;
      if (Date.now() > deadline) throw new Error('no matching frame');
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }
}
