// The two network cards against simulated drivers: e1000 programmed register by
// register with rings in guest memory (EEPROM, PHY, legacy and TSO transmit,
// receive, and a guest that points its rings outside RAM), virtio-net with real
// virtqueues (transmit, mergeable receive buffers, the control queue's filters
// and queue pairs, malformed frames).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { E1000, Icr, MacReg } from '../../src/devices/net/e1000.js';
import { GuestMemory, gpa } from '../../src/memory/guest-memory.js';
import { VNET_HDR_LEN } from '../../src/net/backend.js';
import { NetFeature } from '../../src/virtio/net.js';
import { TapBackend } from '../../src/net/tap.js';
import { VhostError, VhostNet } from '../../src/vhost/vhost-net.js';
import { InProcessNet } from '../support/in-process-net.js';
import { bit } from '../../src/virtio/device.js';
import { GUEST_MAC, ip, parse, tcpFrame } from '../support/net-frames.js';
import { rng } from '../support/seeded-random.js';
import { activeQueues, SimDriver } from '../support/virtio-driver.js';
import { FakeBackend } from '../support/fake-net-backend.js';
import { e1000Setup, E1000_MAC as MAC } from '../support/e1000-driver.js';

// -- e1000 -----------------------------------------------------------------

test('e1000: EEPROM through EERD and bit-banged EECD holds the MAC and the 0xBABA checksum; the PHY answers through MDIC', () => {
  const { wr, rd } = e1000Setup();
  const eerd = (addr: number) => {
    wr(MacReg.EERD, (addr << 8) | 1);
    const v = rd(MacReg.EERD);
    assert.equal(v & 0x10, 0x10);
    return v >>> 16;
  };
  assert.deepEqual([eerd(0), eerd(1), eerd(2)], [0x5452, 0xab00, 0xefcd]);
  let sum = 0;
  for (let i = 0; i < 64; i++) sum += eerd(i);
  assert.equal(sum & 0xffff, 0xbaba);
  // Microwire, as Linux's e1000 does it: request, chip select, opcode 110 and a 6-bit address, 16 bits out.
  const SK = 1,
    CS = 2,
    DI = 4,
    DO = 8,
    REQ = 0x40,
    GNT = 0x80;
  wr(MacReg.EECD, REQ);
  assert.equal(rd(MacReg.EECD) & GNT, GNT);
  const clockOut = (bit: number) => {
    const base = REQ | CS | (bit ? DI : 0);
    wr(MacReg.EECD, base);
    wr(MacReg.EECD, base | SK);
    wr(MacReg.EECD, base);
  };
  const readWord = (addr: number) => {
    wr(MacReg.EECD, REQ | CS);
    for (const b of [1, 1, 0]) clockOut(b);
    for (let i = 5; i >= 0; i--) clockOut((addr >> i) & 1);
    let word = 0;
    for (let i = 0; i < 16; i++) {
      wr(MacReg.EECD, REQ | CS | SK);
      word = (word << 1) | (rd(MacReg.EECD) & DO ? 1 : 0);
      wr(MacReg.EECD, REQ | CS);
    }
    wr(MacReg.EECD, REQ);
    return word;
  };
  assert.equal(readWord(1), 0xab00);
  assert.equal(readWord(2), 0xefcd);
  const mdicRead = (phy: number, reg: number) => {
    wr(MacReg.MDIC, (2 << 26) | (phy << 21) | (reg << 16));
    return rd(MacReg.MDIC);
  };
  assert.equal(mdicRead(1, 2) & 0xffff, 0x0141);
  assert.equal(mdicRead(1, 1) & 0x24, 0x24, 'link up, auto-negotiation complete');
  assert.ok(mdicRead(2, 2) & 0x40000000, 'no PHY at address 2: error bit');
});

test('e1000: legacy transmit, TSO segmentation with fixed headers and checksums, and receive with interrupts', async () => {
  const { mem, backend, wr, rd, irq } = e1000Setup();
  wr(MacReg.IMS, Icr.TXDW | Icr.RXT0);
  wr(MacReg.TDBAL, 0x1000);
  wr(MacReg.TDLEN, 128);
  wr(MacReg.TDH, 0);
  wr(MacReg.TDT, 0);
  wr(MacReg.TCTL, 2);
  // Legacy descriptor: one 60-byte frame.
  const frame = new Uint8Array(60).map((_, i) => i);
  mem.write(0x8000, frame);
  mem.writeU64(0x1000, 0x8000n);
  mem.writeU32(0x1008, 60 | ((0x01 | 0x02 | 0x08) << 24)); // EOP IFCS RS
  wr(MacReg.TDT, 1);
  assert.equal(backend.sent.length, 1);
  assert.deepEqual([...backend.sent[0]!.packet.subarray(VNET_HDR_LEN)], [...frame]);
  assert.equal(mem.readU8(0x100c) & 1, 1, 'DD written back');
  assert.equal(rd(MacReg.TDH), 1);
  assert.equal(irq(), true);
  assert.equal(rd(MacReg.ICR) & Icr.TXDW, Icr.TXDW);
  assert.equal(irq(), false, 'reading ICR clears it');

  // TSO: a context descriptor, then one data descriptor holding headers and 3000 bytes of payload, MSS 1000.
  const payload = new Uint8Array(3000).map((_, i) => (i * 13) & 255);
  const big = tcpFrame(ip('10.0.0.1'), ip('10.0.0.2'), { srcPort: 1, dstPort: 2, seq: 5000, ack: 1, flags: 0x18 | 0x01, payload });
  mem.write(0x9000, big);
  mem.writeU8(0x1010, 14); // IPCSS
  mem.writeU8(0x1011, 24); // IPCSO
  mem.writeU16(0x1012, 33); // IPCSE
  mem.writeU8(0x1014, 34); // TUCSS
  mem.writeU8(0x1015, 50); // TUCSO
  mem.writeU16(0x1016, 0);
  mem.writeU32(0x1018, 3000 | (0x0 << 20) | ((0x01 | 0x02 | 0x04 | 0x20) << 24)); // TCP, IP, TSE, DEXT
  mem.writeU8(0x101d, 54); // HDRLEN
  mem.writeU16(0x101e, 1000); // MSS
  // The driver seeds the TCP checksum with the pseudo-header sum without the length.
  const { sum16 } = await import('../../src/net/packet.js');
  big.set([0, 0], 50);
  const seed = sum16(big, 26, 34, 6);
  mem.writeU16(0x9000 + 50, ((seed >> 8) & 0xff) | ((seed & 0xff) << 8));
  mem.writeU64(0x1020, 0x9000n);
  mem.writeU32(0x1028, big.length | (1 << 20) | ((0x01 | 0x04 | 0x08 | 0x20) << 24)); // EOP TSE RS DEXT
  mem.writeU8(0x102d, 0x03); // IXSM TXSM
  wr(MacReg.TDT, 3);
  assert.equal(backend.sent.length, 4);
  const segs = backend.sent.slice(1).map((s) => parse(s.packet.subarray(VNET_HDR_LEN)));
  assert.deepEqual(
    segs.map((s) => s.tcp!.seq),
    [5000, 6000, 7000],
  );
  assert.deepEqual(
    segs.map((s) => s.tcp!.payload.length),
    [1000, 1000, 1000],
  );
  assert.deepEqual(
    segs.map((s) => s.tcp!.flags & 0x09),
    [0, 0, 0x09],
    'FIN and PSH only on the last segment',
  );
  assert.ok(segs.every((s) => s.ipChecksumOk && s.l4ChecksumOk));
  assert.deepEqual([...Buffer.concat(segs.map((s) => s.tcp!.payload))], [...payload]);

  // Receive: 8 descriptors of 2048 bytes, broadcast accepted.
  wr(MacReg.RDBAL, 0x2000);
  wr(MacReg.RDLEN, 128);
  wr(MacReg.RDH, 0);
  for (let i = 0; i < 8; i++) mem.writeU64(0x2000 + 16 * i, BigInt(0x20000 + i * 2048));
  wr(MacReg.RDT, 7);
  wr(MacReg.RCTL, 0x2 | 0x8000);
  const incoming = new Uint8Array(VNET_HDR_LEN + 100);
  incoming.fill(0xff, VNET_HDR_LEN, VNET_HDR_LEN + 6);
  incoming.fill(7, VNET_HDR_LEN + 6);
  assert.equal(backend.port!.receive(0, incoming), true);
  assert.equal(mem.readU16(0x2008), 104, 'frame plus FCS');
  assert.equal(mem.readU8(0x200c) & 3, 3, 'DD and EOP');
  assert.deepEqual([...mem.read(0x20000, 100)], [...incoming.subarray(VNET_HDR_LEN)]);
  assert.equal(rd(MacReg.ICR) & Icr.RXT0, Icr.RXT0);
  // A frame for another MAC is filtered; one for ours is taken.
  const other = incoming.slice();
  other.set([2, 0, 0, 0, 0, 1], VNET_HDR_LEN);
  backend.port!.receive(0, other);
  assert.equal(rd(MacReg.RDH), 1);
  const mine = incoming.slice();
  mine.set(MAC, VNET_HDR_LEN);
  backend.port!.receive(0, mine);
  assert.equal(rd(MacReg.RDH), 2);
  // With the ring full the frame is held, and resumed when RDT moves.
  wr(MacReg.RDT, 2);
  assert.equal(backend.port!.receive(0, mine), false);
  wr(MacReg.RDT, 5);
  assert.deepEqual(backend.resumed, [0]);
});

test('e1000: ITR keeps the line low for its interval after an assertion, then asserts what came meanwhile; ITR 0 does not throttle', async () => {
  const { nic, wr, rd, irq } = e1000Setup();
  wr(MacReg.IMS, Icr.RXT0 | Icr.TXDW);
  wr(MacReg.ITR, 0xffff); // the longest interval: 65535 × 256 ns ≈ 16.8 ms
  wr(MacReg.ICS, Icr.RXT0);
  assert.equal(irq(), true, 'an idle card asserts at once');
  assert.equal(rd(MacReg.ICR), Icr.RXT0);
  assert.equal(irq(), false);
  wr(MacReg.ICS, Icr.TXDW);
  wr(MacReg.ICS, Icr.RXT0);
  assert.equal(irq(), false, 'within the interval the line stays low');
  assert.equal(nic.counters.interruptsThrottled, 1, 'one deferred assertion for both causes');
  await new Promise((resolve) => setTimeout(resolve, 40));
  assert.equal(irq(), true, 'asserted when the interval ended');
  assert.equal(rd(MacReg.ICR), Icr.RXT0 | Icr.TXDW);
  assert.equal(nic.counters.interrupts, 2);

  wr(MacReg.ITR, 0);
  await new Promise((resolve) => setTimeout(resolve, 40));
  for (let i = 0; i < 3; i++) {
    wr(MacReg.ICS, Icr.RXT0);
    assert.equal(irq(), true);
    rd(MacReg.ICR);
  }
  assert.equal(nic.counters.interruptsThrottled, 1);
  await nic.close();
});

test('e1000: BAR 0 writes are coalesced except MDIC, the interrupt registers, TCTL and TDT, and the zones follow the BAR', () => {
  const zones = new Set<string>();
  let refuse = false;
  const nic = new E1000(GuestMemory.create([{ start: gpa(0), size: 1 << 16 }]), new FakeBackend(), MAC, 'e1000', (addr, len) => {
    if (refuse) throw new Error('ENOSPC');
    const key = `${addr.toString(16)}+${len.toString(16)}`;
    zones.add(key);
    return () => zones.delete(key);
  });
  nic.barMapped(0, 0xfeb00000);
  const covered = (reg: number) =>
    [...zones].some((z) => {
      const [at, len] = z.split('+').map((x) => parseInt(x, 16));
      return 0xfeb00000 + reg >= at! && 0xfeb00000 + reg + 4 <= at! + len!;
    });
  for (const reg of [MacReg.MDIC, MacReg.ICR, MacReg.ICS, MacReg.IMS, MacReg.IMC, MacReg.TCTL, MacReg.TDT])
    assert.ok(!covered(reg), `0x${reg.toString(16)} exits`);
  for (const reg of [MacReg.CTRL, MacReg.ITR, MacReg.RCTL, MacReg.RDT, MacReg.TDBAL, MacReg.RA, 0x1fffc])
    assert.ok(covered(reg), `0x${reg.toString(16)} is queued`);
  const total = [...zones].reduce((n, z) => n + parseInt(z.split('+')[1]!, 16), 0);
  assert.equal(total, 0x20000 - 7 * 4, 'everything else in the BAR');
  nic.barMapped(1, 0xc000);
  assert.equal(zones.size, 8, 'the I/O BAR is not coalesced');
  nic.barMapped(0, undefined);
  assert.equal(zones.size, 0, 'unmapped: every zone undone');
  refuse = true;
  nic.barMapped(0, 0xfeb00000);
  assert.equal(nic.counters.zoneErrors, 8, 'refused zones are counted; their writes simply exit');
});

test('e1000: rings and buffers outside guest RAM are refused and counted; register fuzz never throws', () => {
  const { mem, nic, backend, wr } = e1000Setup();
  wr(MacReg.TCTL, 2);
  wr(MacReg.TDBAH, 1); // 4 GiB up
  wr(MacReg.TDBAL, 0x1000);
  wr(MacReg.TDLEN, 4096);
  wr(MacReg.TDT, 5);
  assert.equal(nic.drops.get('tx-ring-outside-ram'), 1);
  wr(MacReg.TDBAH, 0);
  wr(MacReg.TDBAL, 0xff000); // last 4 KiB of RAM: descriptors fit, the buffer does not
  wr(MacReg.TDLEN, 128);
  wr(MacReg.TDH, 0);
  mem.writeU64(0xff000, 0xfff00000n);
  mem.writeU32(0xff008, 64 | (0x09 << 24));
  wr(MacReg.TDT, 1);
  assert.equal(nic.drops.get('tx-buffer-outside-ram'), 1);
  assert.equal(backend.sent.length, 0);
  wr(MacReg.RCTL, 0x2 | 0x8000 | 0x8);
  wr(MacReg.RDBAL, 0xfffff000);
  wr(MacReg.RDLEN, 128);
  wr(MacReg.RDT, 3);
  const pkt = new Uint8Array(VNET_HDR_LEN + 64).fill(0xff);
  backend.port!.receive(0, pkt);
  assert.equal(nic.drops.get('rx-ring-outside-ram'), 1);
  const random = rng(4000);
  const regs = Object.values(MacReg);
  for (let i = 0; i < 20000; i++) {
    const reg = random() < 0.8 ? regs[Math.floor(random() * regs.length)]! : Math.floor(random() * 0x20000) & ~3;
    const v = random() < 0.5 ? Math.floor(random() * 2 ** 32) : Math.floor(random() * 0x100000);
    wr(reg, v);
    if (i % 16 === 0) backend.port!.receive(0, new Uint8Array(VNET_HDR_LEN + Math.floor(random() * 20000)).fill(0xff));
    if (i % 7 === 0) mem.writeU32(Math.floor(random() * ((1 << 20) - 4)), Math.floor(random() * 2 ** 32));
  }
});

// -- virtio-net ------------------------------------------------------------

function netSetup(opts: { pairs?: number; features?: bigint; backendQueues?: number } = {}) {
  const pairs = opts.pairs ?? 1;
  const backend = new FakeBackend(opts.backendQueues ?? pairs);
  const net = new InProcessNet(backend, { mac: MAC, pairs });
  const first = new SimDriver(64, false);
  const drivers = [first];
  for (let q = 1; q < 2 * pairs + 1; q++) drivers.push(new SimDriver(64, false, { mem: first.mem, ringOffset: q * 0x6000, dataStart: 0x40000 + q * 0x20000 }));
  const interrupts: number[] = [];
  const active = activeQueues(
    first.mem,
    drivers.map((d) => d.queue),
    opts.features ?? bit(NetFeature.MRG_RXBUF) | bit(NetFeature.CTRL_VQ) | bit(NetFeature.CTRL_RX) | bit(NetFeature.MQ),
    { queue: (q) => interrupts.push(q), configChanged: () => {} },
  );
  const failures = active.failures;
  net.activate(active);
  const ctrl = (cls: number, cmd: number, data: number[]) => {
    const d = drivers[2 * pairs]!;
    const cmdBuf = d.alloc(2 + data.length);
    d.mem.write(cmdBuf, Uint8Array.of(cls, cmd, ...data));
    const ack = d.alloc(1, 0xaa);
    d.post([
      { addr: cmdBuf, len: 2 + data.length },
      { addr: ack, len: 1, write: true },
    ]);
    net.queueNotify(2 * pairs);
    return d.mem.readU8(ack);
  };
  return { backend, net, drivers, interrupts, failures, ctrl };
}

test('virtio-net: transmit hands the packet to the back-end; runts and oversized frames are dropped and counted', () => {
  const { backend, net, drivers } = netSetup();
  const tx = drivers[1]!;
  const frame = tcpFrame(ip('10.0.2.15'), ip('10.0.2.2'), { srcPort: 1, dstPort: 2, seq: 0, ack: 0, flags: 2 });
  const hdr = tx.alloc(VNET_HDR_LEN);
  const body = tx.alloc(frame.length);
  tx.mem.write(body, frame);
  tx.post([
    { addr: hdr, len: VNET_HDR_LEN },
    { addr: body, len: frame.length },
  ]);
  tx.post([{ addr: tx.alloc(8), len: 8 }]);
  tx.post([{ addr: tx.alloc(4000), len: 4000 }]);
  net.queueNotify(1);
  assert.equal(backend.sent.length, 1);
  assert.deepEqual([...backend.sent[0]!.packet.subarray(VNET_HDR_LEN)], [...frame]);
  assert.equal(net.plane.drops.get('tx-runt'), 1);
  assert.equal(net.plane.drops.get('tx-oversized'), 1, 'no offloads: nothing above a full Ethernet frame');
  assert.equal(tx.takeUsed().length, 3, 'every chain is returned, taken or not');
});

test('virtio-net: mergeable receive buffers carry a large packet with num_buffers; with no buffers the back-end queue is held', () => {
  const { backend, net, drivers } = netSetup();
  const rx = drivers[0]!;
  const packet = new Uint8Array(VNET_HDR_LEN + 3000).map((_, i) => i & 255);
  packet.set(GUEST_MAC, VNET_HDR_LEN);
  backend.resumed.length = 0;
  assert.equal(backend.port!.receive(0, packet), false, 'no buffers yet');
  const bufs = [0, 1, 2].map(() => rx.alloc(1500));
  for (const b of bufs) rx.post([{ addr: b, len: 1500, write: true }]);
  net.queueNotify(0);
  assert.deepEqual(backend.resumed, [0]);
  assert.equal(backend.port!.receive(0, packet), true);
  const used = rx.takeUsed();
  assert.deepEqual(
    used.map((u) => u.len),
    [1500, 1500, 12],
  );
  assert.equal(rx.mem.readU16(bufs[0]! + 10), 3, 'num_buffers');
  const got = Buffer.concat([rx.mem.read(bufs[0]!, 1500), rx.mem.read(bufs[1]!, 1500), rx.mem.read(bufs[2]!, 12)]);
  assert.deepEqual([...got.subarray(VNET_HDR_LEN)], [...packet.subarray(VNET_HDR_LEN)]);
});

test('virtio-net: a held packet the kick still cannot place is held again, and the kick returns', () => {
  const { backend, net, drivers } = netSetup();
  const rx = drivers[0]!;
  const packet = new Uint8Array(VNET_HDR_LEN + 3000);
  packet.set(GUEST_MAC, VNET_HDR_LEN);
  assert.equal(backend.offer(0, packet), false, 'no buffers yet: held');
  rx.post([{ addr: rx.alloc(1500), len: 1500, write: true }]);
  backend.resumed.length = 0;
  net.queueNotify(0); // one buffer is not enough: the back-end offers it again, and is refused again
  assert.deepEqual(backend.resumed, [0], 'resumed once per kick, not again for the queue it put back');
  assert.ok(backend.held.has(0));
  for (let i = 0; i < 2; i++) rx.post([{ addr: rx.alloc(1500), len: 1500, write: true }]);
  net.queueNotify(0);
  assert.ok(!backend.held.has(0), 'placed once there was room');
  assert.equal(rx.takeUsed().length, 3);
});

test('virtio-net: the control queue sets rx modes, the MAC table and queue pairs; bad commands get VIRTIO_NET_ERR', () => {
  const { backend, net, drivers, ctrl } = netSetup({ pairs: 2 });
  const rx0 = drivers[0]!;
  const rx1 = drivers[2]!;
  for (const d of [rx0, rx1]) for (let i = 0; i < 4; i++) d.post([{ addr: d.alloc(2048), len: 2048, write: true }]);
  const frameTo = (mac: number[]) => {
    const p = new Uint8Array(VNET_HDR_LEN + 60);
    p.set(mac, VNET_HDR_LEN);
    return p;
  };
  assert.equal(ctrl(0, 0, [0]), 0, 'promiscuous off');
  assert.equal(ctrl(0, 1, [0]), 0, 'all-multicast off');
  backend.port!.receive(0, frameTo([2, 0, 0, 0, 0, 9]));
  assert.equal(net.plane.drops.get('rx-filtered'), 1);
  backend.port!.receive(0, frameTo([...MAC]));
  backend.port!.receive(0, frameTo([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
  backend.port!.receive(0, frameTo([0x01, 0, 0x5e, 0, 0, 1]));
  assert.equal(net.plane.drops.get('rx-filtered'), 2, 'multicast not in the table');
  const table = [1, 0, 0, 0, 2, 0, 0, 0, 0, 9, 1, 0, 0, 0, 0x01, 0, 0x5e, 0, 0, 1];
  assert.equal(ctrl(1, 0, table), 0);
  backend.port!.receive(0, frameTo([2, 0, 0, 0, 0, 9]));
  backend.port!.receive(0, frameTo([0x01, 0, 0x5e, 0, 0, 1]));
  assert.equal(net.plane.drops.get('rx-filtered'), 2);
  assert.equal(ctrl(1, 0, [5, 0, 0, 0]), 1, 'a table longer than its data');
  assert.equal(ctrl(4, 0, [3, 0]), 1, 'more pairs than the device has');
  assert.equal(ctrl(4, 0, [2, 0]), 0);
  backend.port!.receive(1, frameTo([...MAC]));
  assert.equal(rx1.takeUsed().length, 1, 'back-end queue 1 lands in receive queue 1');
  assert.equal(ctrl(9, 9, []), 1, 'unknown class');
  assert.equal(net.stats()['pair1.rx'], 1);
});

test('vhost-net: a vhost device that is missing or is not one gives one clear line', () => {
  const tap = new TapBackend({ kind: 'tap', fds: [], ifname: 'none', description: 'tap none' });
  const memory = GuestMemory.fromBuffers([{ start: gpa(0), size: 1 << 20 }]);
  const vhost = (device: string) => new VhostNet(tap, { mac: MAC, pairs: 1, device }, 'net', memory);
  assert.throws(
    () => vhost('/nonexistent/vhost-net'),
    (e: Error) => e instanceof VhostError && e.message === 'vhost=on: /nonexistent/vhost-net is missing (load the vhost_net module: modprobe vhost_net)',
  );
  assert.throws(
    () => vhost('/dev/null'),
    (e: Error) => e instanceof VhostError && /^vhost=on: \/dev\/null: VHOST_SET_OWNER failed: ENOTTY/.test(e.message),
  );
});
