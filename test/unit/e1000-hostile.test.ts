// The e1000 against a hostile driver: TSO contexts that fan one packet out into
// tens of thousands of frames, rings a doorbell at a time too long to process in
// one go, a back-end that throws on a frame, errors escaping an entry point, and
// ring registers and context offsets outside what they describe.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { Icr, MIN_TSO_MSS, MacReg, TX_BUDGET } from '../../src/devices/net/e1000.js';
import { VNET_HDR_LEN } from '../../src/net/backend.js';
import { e1000Setup, TCP4_TSO, TuCmd, TxCmd } from '../support/e1000-driver.js';
import { FakeBackend } from '../support/fake-net-backend.js';
import { ip, parse, tcpFrame, udpFrame } from '../support/net-frames.js';

const PHY_STATUS_LINK = 0x0004;

/** Yields to the event loop until `done()` or `turns` turns have passed; returns the turns taken. */
async function turnsUntil(done: () => boolean, turns = 1000): Promise<number> {
  let n = 0;
  while (!done() && n < turns) {
    await nextTurn();
    n++;
  }
  return n;
}

function tsoPacket(seq: number, payloadLength: number): Uint8Array {
  const payload = new Uint8Array(payloadLength).map((_, i) => (i * 7 + seq) & 255);
  return tcpFrame(ip('10.0.2.15'), ip('10.0.2.2'), { srcPort: 1000, dstPort: 80, seq, ack: 1, flags: 0x18, payload });
}

/** A back-end like user-mode networking's for a UDP datagram to port 0: send() throws. */
class RefusingBackend extends FakeBackend {
  override send(queue: number, packet: Uint8Array): void {
    const udp = parse(packet.subarray(VNET_HDR_LEN)).udp;
    if (udp?.dstPort === 0) throw Object.assign(new RangeError('Port should be > 0 and < 65536. Received 0.'), { code: 'ERR_SOCKET_BAD_PORT' });
    super.send(queue, packet);
  }
}

/** Replaces `obj[key]` with a function that throws, until the returned function restores it. */
function breakMethod<T extends object>(obj: T, key: keyof T & string): () => void {
  const original = obj[key];
  Object.assign(obj, {
    [key]: () => {
      throw new Error(`${key} failed`);
    },
  });
  return () => Object.assign(obj, { [key]: original });
}

test('e1000: TSO with MSS 1 is cut at MIN_TSO_MSS; a TDT write sends at most TX_BUDGET.frames and the rest follows on later turns', async () => {
  const { mem, backend, nic, wr, rd, txRing, contextTx, dataTx, txDone } = e1000Setup();
  const PACKETS = 8;
  const PAYLOAD = 16 * 1024;
  txRing(0x1000, 16);
  contextTx(0, { ...TCP4_TSO, mss: 1 });
  const packets: Uint8Array[] = [];
  for (let i = 0; i < PACKETS; i++) {
    const packet = tsoPacket(i * PAYLOAD, PAYLOAD);
    const addr = 0x10000 + i * 0x5000;
    mem.write(addr, packet);
    dataTx(1 + i, addr, packet.length);
    packets.push(packet);
  }
  const frames = PACKETS * Math.ceil(PAYLOAD / MIN_TSO_MSS);
  wr(MacReg.TDT, 1 + PACKETS);
  const firstWrite = backend.sent.length;
  assert.ok(firstWrite < frames, `one TDT write sent ${firstWrite} frames, all of them`);
  assert.ok(firstWrite <= TX_BUDGET.frames, `one TDT write sent ${firstWrite} frames`);
  assert.notEqual(rd(MacReg.TDH), 1 + PACKETS);
  assert.equal(txDone(PACKETS), false, 'no DD before the packet is out');
  wr(MacReg.TDT, 1 + PACKETS);
  assert.equal(backend.sent.length, firstWrite, 'a doorbell while a chunk is scheduled adds no work of its own');

  const turns = await turnsUntil(() => rd(MacReg.TDH) === 1 + PACKETS);
  assert.equal(rd(MacReg.TDH), 1 + PACKETS);
  assert.ok(turns >= frames / TX_BUDGET.frames - 1, `${turns} turns`);
  assert.equal(backend.sent.length, frames);
  for (let i = 1; i <= PACKETS; i++) assert.ok(txDone(i), `DD on descriptor ${i}`);
  assert.equal(rd(MacReg.ICR) & (Icr.TXDW | Icr.TXQE), Icr.TXDW | Icr.TXQE);
  const segs = backend.sent.map((s) => parse(s.packet.subarray(VNET_HDR_LEN)));
  assert.ok(segs.every((s) => s.tcp!.payload.length === MIN_TSO_MSS && s.ipChecksumOk));
  const perPacket = frames / PACKETS;
  for (let i = 0; i < PACKETS; i++) {
    const mine = segs.slice(i * perPacket, (i + 1) * perPacket);
    assert.deepEqual(
      mine.map((s) => s.tcp!.seq),
      mine.map((_, k) => i * PAYLOAD + k * MIN_TSO_MSS),
    );
    assert.deepEqual([...Buffer.concat(mine.map((s) => s.tcp!.payload))], [...packets[i]!.subarray(TCP4_TSO.hdrLen)]);
  }
  const stats = nic.stats();
  assert.equal(stats.tsoMssRaised, PACKETS);
  assert.equal(stats.txPackets, frames);
  assert.ok(stats.txYields! >= turns);
});

test('e1000: a ring of 4096 context descriptors takes TX_BUDGET.descriptors per turn, not one doorbell', async () => {
  const { wr, rd, txRing, contextTx } = e1000Setup();
  txRing(0x40000, 4096);
  for (let i = 0; i < 4096; i++) contextTx(i, TCP4_TSO);
  wr(MacReg.TDT, 4095);
  assert.equal(rd(MacReg.TDH), TX_BUDGET.descriptors);
  await turnsUntil(() => rd(MacReg.TDH) === 4095);
  assert.equal(rd(MacReg.TDH), 4095);
});

test('e1000: a frame the back-end throws on is dropped and counted; its descriptor completes and the queue goes on', () => {
  const { mem, backend, nic, wr, rd, txRing, legacyTx, txDone } = e1000Setup(new RefusingBackend());
  txRing(0x1000, 8);
  const toPortZero = udpFrame(ip('10.0.2.15'), 5000, ip('10.0.2.2'), 0, Uint8Array.of(1, 2, 3));
  const fine = udpFrame(ip('10.0.2.15'), 5000, ip('10.0.2.2'), 53, Uint8Array.of(4, 5, 6));
  mem.write(0x8000, toPortZero);
  mem.write(0x9000, fine);
  legacyTx(0, 0x8000, toPortZero.length);
  legacyTx(1, 0x9000, fine.length);
  assert.doesNotThrow(() => wr(MacReg.TDT, 2));
  assert.equal(rd(MacReg.TDH), 2);
  assert.ok(txDone(0) && txDone(1));
  assert.equal(nic.drops.get('tx-backend-error'), 1);
  assert.equal(backend.sent.length, 1);
  legacyTx(2, 0x8000, toPortZero.length);
  legacyTx(3, 0x9000, fine.length);
  assert.doesNotThrow(() => wr(MacReg.TDT, 4));
  assert.equal(rd(MacReg.TDH), 4, 'the queue never wedges on the refused frame');
  assert.equal(backend.sent.length, 2);
  assert.equal(nic.drops.get('tx-backend-error'), 2);
  assert.equal(nic.stats().deviceErrors, 0, 'a refused frame is not a device error');
});

test('e1000: an error escaping a register write breaks the device (link down, LSC once, counted) until CTRL.RST', () => {
  const { mem, backend, nic, wr, rd, irq, txRing, legacyTx } = e1000Setup();
  wr(MacReg.IMS, Icr.LSC);
  wr(MacReg.RDBAL, 0x2000);
  wr(MacReg.RDLEN, 128);
  for (let i = 0; i < 8; i++) mem.writeU64(0x2000 + 16 * i, BigInt(0x20000 + i * 2048));
  wr(MacReg.RCTL, 0x2 | 0x8000);
  const broadcast = new Uint8Array(VNET_HDR_LEN + 60).fill(0xff);
  assert.equal(backend.port!.receive(0, broadcast), false, 'no buffers yet: held');
  const restore = breakMethod(backend, 'resume');
  assert.doesNotThrow(() => wr(MacReg.RDT, 7));
  restore();
  assert.equal(nic.stats().deviceErrors, 1);
  assert.equal(nic.stats().broken, 1);
  assert.match(nic.lastError ?? '', /MMIO write: Error: resume failed/);
  assert.equal(rd(MacReg.STATUS) & 0x2, 0, 'STATUS.LU cleared');
  wr(MacReg.MDIC, (2 << 26) | (1 << 21) | (1 << 16));
  assert.equal(rd(MacReg.MDIC) & PHY_STATUS_LINK, 0, 'the PHY reports the link down too');
  assert.equal(irq(), true);
  assert.equal(rd(MacReg.ICR) & Icr.LSC, Icr.LSC);

  // Broken: nothing moves, and a second error raises no second LSC.
  txRing(0x1000, 8);
  const frame = udpFrame(ip('10.0.2.15'), 5000, ip('10.0.2.2'), 53, Uint8Array.of(1));
  mem.write(0x8000, frame);
  legacyTx(0, 0x8000, frame.length);
  wr(MacReg.TDT, 1);
  assert.equal(backend.sent.length, 0);
  assert.equal(backend.port!.receive(0, broadcast), true);
  assert.equal(nic.drops.get('rx-link-down'), 1);
  nic.plugged({
    set: () => {
      throw new Error('interrupt line failed');
    },
  });
  assert.doesNotThrow(() => wr(MacReg.IMS, Icr.TXDW));
  nic.plugged({ set: () => {} });
  assert.equal(nic.stats().deviceErrors, 2);
  assert.equal(rd(MacReg.ICR) & Icr.LSC, 0, 'LSC is raised once');

  wr(MacReg.CTRL, 1 << 26);
  assert.equal(nic.stats().broken, 0);
  assert.equal(rd(MacReg.STATUS) & 0x2, 0x2, 'CTRL.RST brings the link back');
  txRing(0x1000, 8);
  wr(MacReg.TDT, 1);
  assert.equal(backend.sent.length, 1);
  assert.equal(nic.stats().deviceErrors, 2, 'the count survives the reset');
});

test('e1000: the I/O BAR, the back-end receive callback and a resumed transmit chunk contain their errors too', async () => {
  const { mem, backend, nic, wr, rd, txRing, contextTx, dataTx, legacyTx } = e1000Setup();
  const io = nic.bars[1]!.region;
  const ioWrite = (offset: number, v: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    io.write(offset, b);
  };
  txRing(0x1000, 8);
  legacyTx(0, 0x8000, 60);
  let restore = breakMethod(mem, 'readU32');
  assert.doesNotThrow(() => {
    ioWrite(0, MacReg.TDT);
    ioWrite(4, 1);
  });
  restore();
  assert.match(nic.lastError ?? '', /^I\/O write: Error: readU32 failed/);
  wr(MacReg.CTRL, 1 << 26);

  wr(MacReg.RDBAL, 0x2000);
  wr(MacReg.RDLEN, 128);
  wr(MacReg.RDT, 7);
  wr(MacReg.RCTL, 0x2 | 0x8000);
  restore = breakMethod(mem, 'write');
  let taken: boolean | undefined;
  assert.doesNotThrow(() => (taken = backend.port!.receive(0, new Uint8Array(VNET_HDR_LEN + 60).fill(0xff))));
  restore();
  assert.equal(taken, true, 'the frame is dropped, not held');
  assert.match(nic.lastError ?? '', /^receive: Error: write failed/);
  wr(MacReg.CTRL, 1 << 26);

  txRing(0x1000, 8);
  contextTx(0, { ...TCP4_TSO, mss: 1 });
  const packet = tsoPacket(0, 32 * 1024);
  mem.write(0x10000, packet);
  dataTx(1, 0x10000, packet.length);
  wr(MacReg.TDT, 2);
  restore = breakMethod(mem, 'readU8');
  await turnsUntil(() => nic.stats().deviceErrors === 3);
  restore();
  assert.equal(nic.stats().deviceErrors, 3);
  assert.match(nic.lastError ?? '', /^transmit: Error: readU8 failed/);
  assert.equal(rd(MacReg.STATUS) & 0x2, 0);
  const sent = backend.sent.length;
  await turnsUntil(() => false, 5);
  assert.equal(backend.sent.length, sent, 'a broken device schedules nothing more');
});

test('e1000: TDT or RDT beyond the ring and a zero TDLEN do no work and are counted or held', () => {
  const { mem, backend, nic, wr, rd, txRing, legacyTx } = e1000Setup();
  txRing(0x1000, 8);
  const frame = udpFrame(ip('10.0.2.15'), 5000, ip('10.0.2.2'), 53, Uint8Array.of(1));
  mem.write(0x8000, frame);
  for (let i = 0; i < 8; i++) legacyTx(i, 0x8000, frame.length);
  wr(MacReg.TDT, 100);
  assert.equal(backend.sent.length, 0, 'no lap of the ring for a tail it never reaches');
  assert.equal(rd(MacReg.TDH), 0);
  assert.equal(nic.drops.get('tx-bad-ring'), 1);
  wr(MacReg.TDLEN, 100); // below the 128-byte granule: an empty ring
  wr(MacReg.TDT, 3);
  assert.equal(backend.sent.length, 0);
  assert.equal(nic.drops.get('tx-bad-ring'), 2);

  wr(MacReg.RDBAL, 0x2000);
  wr(MacReg.RDLEN, 128);
  for (let i = 0; i < 8; i++) mem.writeU64(0x2000 + 16 * i, BigInt(0x20000 + i * 2048));
  wr(MacReg.RDH, 0);
  wr(MacReg.RDT, 20);
  wr(MacReg.RCTL, 0x2 | 0x8000);
  const broadcast = new Uint8Array(VNET_HDR_LEN + 60).fill(0xff);
  assert.equal(backend.port!.receive(0, broadcast), false, 'a tail outside the ring offers no buffers');
  assert.equal(mem.readU8(0x200c), 0, 'nothing written');
  assert.equal(nic.stats().rxNoBuffers, 1);
  wr(MacReg.RDT, 7);
  assert.deepEqual(backend.resumed, [0]);
  assert.equal(backend.port!.receive(0, broadcast), true);
});

test('e1000: a TSO context whose IP or TCP header lies past HDRLEN is refused; checksum offsets past the frame are ignored', () => {
  const { mem, backend, nic, wr, txRing, contextTx, dataTx, legacyTx, txDone } = e1000Setup();
  txRing(0x1000, 8);
  contextTx(0, { ...TCP4_TSO, hdrLen: 14, mss: 1000 });
  const packet = tsoPacket(0, 3000);
  mem.write(0x10000, packet);
  dataTx(1, 0x10000, packet.length);
  wr(MacReg.TDT, 2);
  assert.equal(backend.sent.length, 0);
  assert.equal(nic.drops.get('tx-bad-tso'), 1);
  assert.ok(txDone(1), 'the refused packet still completes');

  contextTx(2, { ...TCP4_TSO, ipcss: 250, ipcso: 255, tucss: 240, tucso: 254, tucmd: TuCmd.TCP | TuCmd.IP });
  const frame = udpFrame(ip('10.0.2.15'), 5000, ip('10.0.2.2'), 53, Uint8Array.of(1));
  mem.write(0x8000, frame);
  dataTx(3, 0x8000, frame.length, TxCmd.EOP | TxCmd.RS);
  legacyTx(4, 0x8000, frame.length, TxCmd.EOP | TxCmd.RS | TxCmd.IC);
  mem.writeU8(0x1000 + 16 * 4 + 10, 200); // CSO past the frame
  wr(MacReg.TDT, 5);
  assert.equal(backend.sent.length, 2);
  for (const s of backend.sent) assert.deepEqual([...s.packet.subarray(VNET_HDR_LEN)], [...frame]);
  assert.equal(nic.stats().deviceErrors, 0);
});
