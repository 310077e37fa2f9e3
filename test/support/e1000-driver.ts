// An e1000 on a fake back-end in 1 MiB of guest RAM, driven as its driver does:
// registers through BAR 0 (or BAR 1's IOADDR/IODATA window), descriptors written
// into guest memory.
import { E1000, MacReg } from '../../src/devices/net/e1000.js';
import type { TxContext } from '../../src/devices/net/e1000-offload.js';
import { GuestMemory, gpa } from '../../src/memory/guest-memory.js';
import { FakeBackend, NO_POLLER } from './fake-net-backend.js';

export const E1000_MAC = Uint8Array.of(0x52, 0x54, 0x00, 0xab, 0xcd, 0xef);

/** Transmit descriptor command bits; IC (legacy: insert checksum) is TSE's bit. */
export const TxCmd = { EOP: 0x01, IFCS: 0x02, IC: 0x04, TSE: 0x04, RS: 0x08, DEXT: 0x20 } as const;
/** Context descriptor TUCMD bits (with DEXT and TSE from TxCmd). */
export const TuCmd = { TCP: 0x01, IP: 0x02 } as const;
/** Data descriptor POPTS bits. */
export const Popts = { IXSM: 0x01, TXSM: 0x02 } as const;

/** A context descriptor's fields, as Linux's e1000_tso fills them for a TCP/IPv4 packet without options. */
export type ContextFields = Omit<TxContext, 'ipv4' | 'tcp'> & { tucmd: number };

export const TCP4_TSO: ContextFields = {
  ipcss: 14,
  ipcso: 24,
  ipcse: 33,
  tucss: 34,
  tucso: 50,
  tucse: 0,
  hdrLen: 54,
  mss: 1448,
  tucmd: TuCmd.TCP | TuCmd.IP | TxCmd.TSE,
};

export function e1000Setup(backend = new FakeBackend()) {
  const mem = GuestMemory.create([{ start: gpa(0), size: 1 << 20 }]);
  const nic = new E1000(mem, backend, E1000_MAC);
  backend.attach(nic, NO_POLLER);
  let irq = false;
  nic.plugged({ set: (level) => (irq = level) });
  const mmio = nic.bars[0]!.region;
  const wr = (reg: number, v: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v >>> 0, true);
    mmio.write(reg, b);
  };
  const rd = (reg: number) => {
    const b = new Uint8Array(4);
    mmio.read(reg, b);
    return new DataView(b.buffer).getUint32(0, true);
  };
  let txBase = 0;
  /** A transmit ring of `count` descriptors at `base`, head and tail 0, transmit enabled. */
  const txRing = (base: number, count: number) => {
    txBase = base;
    wr(MacReg.TDBAL, base);
    wr(MacReg.TDBAH, 0);
    wr(MacReg.TDLEN, count * 16);
    wr(MacReg.TDH, 0);
    wr(MacReg.TDT, 0);
    wr(MacReg.TCTL, 2);
  };
  const txDesc = (index: number) => txBase + 16 * index;
  /** A legacy descriptor: one buffer, by default a whole frame that asks for DD. */
  const legacyTx = (index: number, addr: number, len: number, cmd: number = TxCmd.EOP | TxCmd.IFCS | TxCmd.RS) => {
    mem.writeU64(txDesc(index), BigInt(addr));
    mem.writeU32(txDesc(index) + 8, len | (cmd << 24));
    mem.writeU32(txDesc(index) + 12, 0);
  };
  const contextTx = (index: number, c: ContextFields) => {
    const d = txDesc(index);
    mem.writeU8(d, c.ipcss);
    mem.writeU8(d + 1, c.ipcso);
    mem.writeU16(d + 2, c.ipcse);
    mem.writeU8(d + 4, c.tucss);
    mem.writeU8(d + 5, c.tucso);
    mem.writeU16(d + 6, c.tucse);
    mem.writeU32(d + 8, (c.tucmd | TxCmd.DEXT) << 24);
    mem.writeU8(d + 12, 0);
    mem.writeU8(d + 13, c.hdrLen);
    mem.writeU16(d + 14, c.mss);
  };
  /** A data descriptor (DTYP 1): by default the whole of a TSO packet, checksums inserted, DD asked for. */
  const dataTx = (index: number, addr: number, len: number, cmd: number = TxCmd.EOP | TxCmd.TSE | TxCmd.RS, popts: number = Popts.IXSM | Popts.TXSM) => {
    const d = txDesc(index);
    mem.writeU64(d, BigInt(addr));
    mem.writeU32(d + 8, len | (1 << 20) | ((cmd | TxCmd.DEXT) << 24));
    mem.writeU8(d + 12, 0);
    mem.writeU8(d + 13, popts);
    mem.writeU16(d + 14, 0);
  };
  /** DD in descriptor `index`'s status. */
  const txDone = (index: number) => (mem.readU8(txDesc(index) + 12) & 1) === 1;
  return { mem, backend, nic, wr, rd, irq: () => irq, txRing, legacyTx, contextTx, dataTx, txDone };
}
