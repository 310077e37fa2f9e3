// What the 82540EM does to a packet on its way out when the driver asks for it:
// insert IP and TCP/UDP checksums at the offsets a context descriptor gave, and
// TCP segmentation (TSO): cut the payload into MSS-sized segments, each with a
// copy of the headers, its IP length and ID, TCP sequence number and flags fixed,
// and fresh checksums.
import { checksum, readU16, readU32, writeU16, writeU32 } from '../../net/packet.js';

/** A transmit context descriptor's fields. */
export interface TxContext {
  ipcss: number;
  ipcso: number;
  /** Last byte of the IP checksum range, inclusive; 0: to the end of the packet. */
  ipcse: number;
  tucss: number;
  tucso: number;
  tucse: number;
  /** IPv4 (true) or IPv6 packets, for segmentation. */
  ipv4: boolean;
  tcp: boolean;
  hdrLen: number;
  mss: number;
}

export interface ChecksumRequest {
  ip: boolean;
  l4: boolean;
}

const TCP_FIN = 0x01;
const TCP_PSH = 0x08;

function inside(frame: Uint8Array, ...offsets: number[]): boolean {
  return offsets.every((o) => o >= 0 && o < frame.length);
}

/** Fills in the checksums the descriptor asked for; fields out of the frame are left alone. */
export function insertChecksums(frame: Uint8Array, ctx: TxContext, req: ChecksumRequest, l4Length?: number): void {
  if (req.ip && inside(frame, ctx.ipcss, ctx.ipcso + 1)) {
    const end = ctx.ipcse ? Math.min(ctx.ipcse + 1, frame.length) : frame.length;
    writeU16(frame, ctx.ipcso, 0);
    writeU16(frame, ctx.ipcso, checksum(frame, ctx.ipcss, end));
  }
  if (req.l4 && inside(frame, ctx.tucss, ctx.tucso + 1)) {
    const end = ctx.tucse ? Math.min(ctx.tucse + 1, frame.length) : frame.length;
    // The driver left the pseudo-header sum in the field; for segments it lacks the length.
    const extra = l4Length === undefined ? 0 : (l4Length >>> 16) + (l4Length & 0xffff);
    const sum = checksum(frame, ctx.tucss, end, extra);
    writeU16(frame, ctx.tucso, !ctx.tcp && sum === 0 ? 0xffff : sum);
  }
}

/** The legacy descriptor's single checksum: from `css` to the end, stored at `cso`. */
export function insertLegacyChecksum(frame: Uint8Array, css: number, cso: number): void {
  if (!inside(frame, css, cso + 1)) return;
  writeU16(frame, cso, checksum(frame, css, frame.length));
}

/**
 * Cuts a TSO packet into frames, made one at a time as they are taken so that the
 * caller can stop between any two; undefined when the context cannot describe it:
 * the IP and TCP/UDP headers every segment copies and fixes must lie inside the
 * header bytes.
 */
export function segment(packet: Uint8Array, ctx: TxContext, req: ChecksumRequest): Iterator<Uint8Array> | undefined {
  const { hdrLen } = ctx;
  if (hdrLen < 14 || hdrLen > packet.length || ctx.mss === 0) return undefined;
  if (!inside(packet.subarray(0, hdrLen), ctx.ipcss + 19, ctx.tucss + (ctx.tcp ? 19 : 7))) return undefined;
  return segments(packet, ctx, req);
}

function* segments(packet: Uint8Array, ctx: TxContext, req: ChecksumRequest): Generator<Uint8Array, void> {
  const { hdrLen, mss } = ctx;
  const header = packet.subarray(0, hdrLen);
  const payload = packet.subarray(hdrLen);
  const count = Math.max(1, Math.ceil(payload.length / mss));
  const ipId = readU16(header, ctx.ipcss + 4);
  const seq = ctx.tcp ? readU32(header, ctx.tucss + 4) : 0;
  for (let i = 0; i < count; i++) {
    const chunk = payload.subarray(i * mss, Math.min(payload.length, (i + 1) * mss));
    const frame = new Uint8Array(hdrLen + chunk.length);
    frame.set(header);
    frame.set(chunk, hdrLen);
    if (ctx.ipv4) {
      writeU16(frame, ctx.ipcss + 2, frame.length - ctx.ipcss);
      writeU16(frame, ctx.ipcss + 4, (ipId + i) & 0xffff);
    } else writeU16(frame, ctx.ipcss + 4, frame.length - ctx.ipcss - 40);
    if (ctx.tcp) {
      writeU32(frame, ctx.tucss + 4, (seq + i * mss) >>> 0);
      if (i < count - 1) frame[ctx.tucss + 13]! &= ~(TCP_FIN | TCP_PSH);
    } else writeU16(frame, ctx.tucss + 4, frame.length - ctx.tucss);
    insertChecksums(frame, ctx, req, frame.length - ctx.tucss);
    yield frame;
  }
}
