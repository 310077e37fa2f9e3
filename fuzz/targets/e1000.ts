// The e1000 under register traffic through both BARs, with descriptor rings and
// buffers in guest memory: legacy, context (checksum and TSO) and data
// descriptors with any lengths, offsets and MSS, whole TSO packets laid at TDT
// (tiny MSS, payloads up to 64 KiB over several descriptors), receive of host
// frames into any ring, over a back-end that sometimes refuses a frame (throws).
// Oracles: no register access or receive throws; what one operation makes the
// card send stays within a bound: MAX_FRAMES_PER_OP frames.
import { MacReg } from '../../src/devices/net/e1000.js';
import { withVnetHdr } from '../../src/net/backend.js';
import { tcpFrame } from '../../test/support/net-frames.js';
import { dword, le, operations, opsArbitrary, type ByteReader } from '../lib/bytes.js';
import { frame, GATEWAY, GUEST } from '../lib/frames.js';
import { DATA_START, guestAddress, guestLength, guestMemory, LOW, registerValue, scribble } from '../lib/guest.js';
import { e1000 } from '../lib/pc.js';
import { check, guardedRead, WIDTHS, type FuzzTarget } from '../lib/target.js';

const Op = { REG_WRITE: 0, REG_READ: 1, IO: 2, TX_DESC: 3, RX_DESC: 4, RECEIVE: 5, SCRIBBLE: 6, SET_UP: 7, TSO: 8 } as const;
const KINDS = 9;
const TX_RING = 0x1000;
const RX_RING = 0x3000;
const RING_BYTES = 0x2000;
const REGS = Object.values(MacReg);
/**
 * Frames one register write may send before the rest waits for later turns of the
 * event loop: sixteen times the card's per-doorbell budget (TX_BUDGET.frames, 256),
 * four 64 KiB TSO packets at the MSS floor (MIN_TSO_MSS). A ring lap of TSO at
 * MSS 1 sends hundreds of thousands.
 */
const MAX_FRAMES_PER_OP = 4096;
/** Context and data descriptor commands: DEXT, TSE, TUCMD's IP and TCP; EOP and RS on a packet's last. */
const TSO_CONTEXT = 0x27;
const TSO_DATA = 0x24;
const EOP_RS = 0x09;

export const e1000Target: FuzzTarget = {
  name: 'e1000',
  description: 'e1000 registers via MMIO and I/O BARs, descriptor rings (legacy, context/TSO, data), host frames',
  arbitrary: opsArbitrary(KINDS, { weights: [4, 1, 1, 5, 2, 2, 1, 2, 2], maxOps: 60 }),
  run(_ctx, data) {
    const mem = guestMemory();
    const { nic, backend } = e1000(mem);
    const mmio = nic.bars[0]!.region;
    const io = nic.bars[1]!.region;
    const wr = (reg: number, value: number): void => mmio.write(reg, le(value, 4));
    let nextData = DATA_START;
    /** A guest buffer holding `bytes`, in the high region. */
    const buffer = (bytes: Uint8Array): number => {
      if (nextData + bytes.length > DATA_START + 0xf000) nextData = DATA_START;
      const at = nextData;
      mem.write(at, bytes.subarray(0, 0xf000));
      nextData += (bytes.length + 15) & ~15;
      return at;
    };
    const desc = (ring: number, r: ByteReader): number => ring + 16 * (r.u16() % (RING_BYTES / 16));
    const txDescriptor = (r: ByteReader): void => {
      const at = desc(TX_RING, r);
      const cmd = r.u8();
      switch (r.u8() % 3) {
        case 0: // legacy: buffer, length, CSO/CSS
          mem.writeU64(at, r.u8() < 220 ? BigInt(buffer(frame(r))) : guestAddress(r));
          mem.writeU32(at + 8, (r.bool() ? r.u16() : guestLength(r) & 0xffff) | ((cmd & ~0x20) << 24));
          mem.writeU32(at + 12, r.u32());
          break;
        case 1: // context: IP and TCP/UDP offsets, header length, MSS
          mem.write(at, Uint8Array.from([14, 24, ...le(r.bool() ? 33 : r.u16(), 2), 34, 50, 0, 0]));
          if (r.u8() > 200) mem.write(at, r.bytes(8));
          mem.writeU32(at + 8, (r.u16() & 0xfffff) | (0 << 20) | ((cmd | 0x20) << 24));
          mem.writeU32(at + 12, ((r.bool() ? 54 : r.u8()) << 8) | ((r.bool() ? r.pick([0, 1, 8, 536, 1460]) : r.u16()) << 16));
          break;
        default: // data: buffer, 20-bit length, TSE, POPTS
          mem.writeU64(at, r.u8() < 220 ? BigInt(buffer(frame(r))) : guestAddress(r));
          mem.writeU32(at + 8, ((r.bool() ? r.u16() : r.u32()) & 0xfffff) | (1 << 20) | ((cmd | 0x20) << 24));
          mem.writeU32(at + 12, r.u8() << 8);
      }
    };
    const setUp = (r: ByteReader): void => {
      wr(MacReg.CTRL, 1 << 6);
      wr(MacReg.IMS, r.u32());
      wr(MacReg.TDBAL, TX_RING);
      wr(MacReg.TDBAH, 0);
      wr(MacReg.TDLEN, 128 * (1 + r.below(RING_BYTES / 128)));
      wr(MacReg.TDH, 0);
      wr(MacReg.TDT, 0);
      wr(MacReg.TCTL, 2);
      wr(MacReg.RDBAL, RX_RING);
      wr(MacReg.RDBAH, 0);
      wr(MacReg.RDLEN, 128 * (1 + r.below(RING_BYTES / 128)));
      wr(MacReg.RDH, 0);
      wr(MacReg.RDT, r.u16() % 512);
      wr(MacReg.RCTL, 0x2 | (r.u32() & 0x0603f038));
      backend.refuse(r);
    };
    /**
     * A TSO packet laid at TDT as a driver lays it: a context descriptor (TCP/IPv4,
     * mostly a tiny MSS), the headers, then payload descriptors over RAM up to about
     * 64 KiB; TDT then moves past them.
     */
    const tsoPacket = (r: ByteReader): void => {
      const slots = Math.floor(dword(guardedRead(mmio, MacReg.TDLEN, 4)) / 16);
      if (!slots) return;
      let tail = dword(guardedRead(mmio, MacReg.TDT, 4));
      const next = (): number => TX_RING + 16 * (tail++ % slots);
      const put = (at: number, bytes: Uint8Array): void => {
        if (mem.contains(at, 16)) mem.write(at, bytes);
      };
      /** A data descriptor (DTYP 1) asking for IP and TCP checksums (POPTS). */
      const dataDesc = (addr: number, len: number, cmd: number): Uint8Array =>
        Uint8Array.from([...le(addr, 8), ...le(len | (1 << 20) | (cmd << 24), 4), 0, 3, 0, 0]);
      const mss = r.u8() < 200 ? r.pick([1, 2, 3, 8, 63, 64, 536]) : r.u16();
      put(next(), Uint8Array.from([14, 24, ...le(33, 2), 34, 50, 0, 0, ...le(r.u16() | (TSO_CONTEXT << 24), 4), 0, 54, ...le(mss, 2)]));
      const headers = tcpFrame(GUEST, GATEWAY, { srcPort: 40000, dstPort: 80, seq: r.u32(), ack: r.u32(), flags: 0x18 });
      put(next(), dataDesc(buffer(headers), headers.length, TSO_DATA));
      for (let n = 1 + (r.u8() % 8), i = 0; i < n; i++) {
        const len = r.u8() < 128 ? 0x2000 * (1 + r.below(8)) : 1 + (r.u16() % LOW.size);
        const cmd = TSO_DATA | (i === n - 1 ? EOP_RS : 0);
        put(next(), dataDesc(LOW.start + r.below(LOW.size - len + 1), len, cmd));
      }
      wr(MacReg.TDT, tail % slots);
    };
    try {
      for (const { kind, args: r } of operations(data)) {
        switch (kind % KINDS) {
          case Op.REG_WRITE: {
            const reg = r.u8() < 220 ? r.pick(REGS) + (r.u8() < 240 ? 0 : r.u8() & 3) : r.below(0x20000);
            const width = r.u8() < 220 ? 4 : r.pick(WIDTHS);
            mmio.write(
              reg,
              le(
                reg === MacReg.TDBAL || reg === MacReg.RDBAL ? (r.bool() ? r.pick([TX_RING, RX_RING]) : Number(guestAddress(r)) >>> 0) : registerValue(r),
                width,
              ),
            );
            break;
          }
          case Op.REG_READ:
            guardedRead(mmio, r.u8() < 220 ? r.pick(REGS) : r.below(0x20000), r.pick(WIDTHS));
            break;
          case Op.IO:
            if (r.bool()) io.write(r.u8() & 0x3f, le(r.bool() ? r.pick(REGS) : r.u32(), r.pick(WIDTHS)));
            else guardedRead(io, r.u8() & 0x3f, r.pick(WIDTHS));
            break;
          case Op.TX_DESC:
            txDescriptor(r);
            if (r.bool()) wr(MacReg.TDT, r.u16() % 512);
            break;
          case Op.RX_DESC:
            mem.writeU64(desc(RX_RING, r), r.u8() < 220 ? BigInt(DATA_START + (r.u16() % 0xf000)) : guestAddress(r));
            break;
          case Op.RECEIVE:
            nic.receive(0, withVnetHdr(frame(r)));
            break;
          case Op.SCRIBBLE:
            scribble(mem, r);
            break;
          case Op.SET_UP:
            setUp(r);
            break;
          default:
            tsoPacket(r);
        }
        check(backend.sent.length <= MAX_FRAMES_PER_OP, `one operation made the card send ${backend.sent.length} frames`);
        backend.sent = [];
      }
    } finally {
      void nic.close(); // drops transmit chunks it scheduled for later turns, which would outlive the case
    }
  },
};
