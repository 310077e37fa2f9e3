import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { Bus, BusError, type BusDevice } from '../../src/devices/bus.js';
import { AcpiPmControl, AcpiPmEvent } from '../../src/devices/legacy/acpi-pm.js';
import { I8042 } from '../../src/devices/legacy/i8042.js';
import { Rtc } from '../../src/devices/legacy/rtc.js';
import { Serial } from '../../src/devices/legacy/serial.js';
import { PciConfigIo } from '../../src/devices/pci/config-io.js';
import { ConfigSpace } from '../../src/devices/pci/config-space.js';
import { PciBus } from '../../src/devices/pci/pci-bus.js';
import { PCI_IO_WINDOW, PCI_MMIO_WINDOW } from '../../src/arch/x86/layout.js';
import { PanicWatcher } from '../../src/vmm/panic-watcher.js';

const b = (...v: number[]) => Uint8Array.from(v);
const rd8 = (d: BusDevice, off: number) => {
  const data = new Uint8Array(1);
  d.read(off, data);
  return data[0]!;
};
const rd32 = (d: BusDevice, off: number) => {
  const data = new Uint8Array(4);
  d.read(off, data);
  return new DataView(data.buffer).getUint32(0, true);
};
const wr32 = (d: BusDevice, off: number, v: number) => {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, v >>> 0, true);
  d.write(off, data);
};

test('bus dispatches by range, rejects overlaps and counts unclaimed accesses', () => {
  const seen: number[] = [];
  const dev: BusDevice = { name: 'd', read: (o, d) => d.fill(o), write: (o) => seen.push(o) };
  const bus = new Bus('pio');
  bus.insert(dev, 0x100, 8);
  assert.throws(() => bus.insert(dev, 0x104, 8), BusError);
  assert.throws(() => bus.insert(dev, 0x200, 0), BusError);
  const data = new Uint8Array(2);
  assert.equal(bus.read(0x103, data), true);
  assert.deepEqual([...data], [3, 3]);
  assert.equal(bus.read(0x107, new Uint8Array(2)), false, 'runs off the end of the range');
  assert.equal(bus.write(0x50, b(1)), false);
  assert.equal(bus.unclaimed.reads, 1);
  assert.equal(bus.unclaimed.writes, 1);
  assert.equal(bus.unclaimedByAddress.get(0x50), 1);
  bus.write(0x101, b(1));
  assert.deepEqual(seen, [1]);
  assert.deepEqual(bus.counters().get('d'), { reads: 1, writes: 1, queued: 0 });
});

function uart() {
  const out: number[] = [];
  const levels: boolean[] = [];
  const s = new Serial('s', { set: (l) => levels.push(l) }, (bytes) => out.push(...bytes));
  return { s, out, levels };
}

test('serial: THR bytes reach the host, THRE interrupt follows IER and IIR reads', () => {
  const { s, out, levels } = uart();
  s.write(1, b(0x02)); // IER = THRE
  assert.deepEqual(levels, [true]);
  assert.equal(rd8(s, 2) & 0x0f, 0x02); // IIR: THRE, which acknowledges it
  assert.deepEqual(levels, [true, false]);
  s.write(0, b(0x41));
  assert.deepEqual(out, [0x41]);
  assert.equal(rd8(s, 5) & 0x60, 0x60); // LSR: THRE | TEMT
});

test('serial: host input waits until the guest enables receive interrupts, and survives FIFO resets', () => {
  const { s, levels } = uart();
  s.enqueueInput(Buffer.from('hello'));
  assert.equal(rd8(s, 5) & 1, 0, 'nothing delivered before the driver is ready');
  s.write(1, b(0x0f)); // a probe enables everything...
  s.write(2, b(0x07)); // ...then resets the FIFOs
  s.write(1, b(0x00));
  s.write(1, b(0x01)); // the driver opens the port
  assert.equal(levels.at(-1), true);
  let got = '';
  while (rd8(s, 5) & 1) got += String.fromCharCode(rd8(s, 0));
  assert.equal(got, 'hello');
  assert.equal(levels.at(-1), false);
});

test('serial: divisor latch and loopback', () => {
  const { s, out } = uart();
  s.write(3, b(0x80));
  s.write(0, b(0x01));
  s.write(1, b(0x00));
  assert.equal(rd8(s, 0), 0x01);
  s.write(3, b(0x03));
  s.write(4, b(0x10)); // loopback
  s.write(2, b(0x01)); // FIFO on
  s.write(0, b(0x5a));
  assert.deepEqual(out, []);
  assert.equal(rd8(s, 0), 0x5a);
});

test('serial: a view on another thread shares the state; its bytes reach the owner in order, past a full ring', async () => {
  const { s, out, levels } = uart();
  s.enqueueInput(Buffer.from('hi'));
  s.write(1, b(0x01)); // IER = RDA: the owner raises the line
  assert.equal(levels.at(-1), true);
  const text = 'the quick brown fox jumps over the lazy dog\n'.repeat(4000); // 180 KB: past the 64 KiB ring
  const serialUrl = new URL('../../src/devices/legacy/serial.js', import.meta.url).href;
  const worker = new Worker(
    `const { workerData, parentPort } = require('node:worker_threads');
     import(workerData.serialUrl).then(({ Serial }) => {
       const levels = [];
       const view = Serial.attach('s', workerData.state, { set: (l) => levels.push(l) });
       const byte = new Uint8Array(1);
       let got = '';
       for (;;) { view.read(5, byte); if (!(byte[0] & 1)) break; view.read(0, byte); got += String.fromCharCode(byte[0]); }
       for (const c of workerData.text) { view.read(5, byte); view.write(0, Uint8Array.of(c.charCodeAt(0))); }
       parentPort.postMessage({ got, levels });
     });`,
    { eval: true, workerData: { serialUrl, state: s.shared, text } },
  );
  const pump = s.pumpOutput();
  const [reply] = (await once(worker, 'message')) as [{ got: string; levels: boolean[] }];
  await worker.terminate();
  s.close();
  await pump;
  assert.equal(reply.got, 'hi', 'input the owner queued is read on the other thread');
  assert.deepEqual(reply.levels, [false], 'the view lowered the line the owner raised');
  assert.equal(Buffer.from(out).toString(), text);
  assert.equal(s.counters.txBytes, text.length);
});

test('i8042: self-test answers 0x55 and command 0xFE resets the CPU', () => {
  let resets = 0;
  const k = new I8042(() => resets++);
  k.write(4, b(0xaa));
  assert.equal(rd8(k, 4) & 1, 1);
  assert.equal(rd8(k, 0), 0x55);
  k.write(4, b(0x20));
  const ctr = rd8(k, 0);
  k.write(4, b(0x60));
  k.write(0, b(ctr | 1));
  k.write(4, b(0x20));
  assert.equal(rd8(k, 0), ctr | 1);
  assert.equal(resets, 0);
  k.write(4, b(0xfe));
  assert.equal(resets, 1);
  k.write(4, b(0xd1));
  k.write(0, b(0x02)); // output port with the reset line low
  assert.equal(resets, 2);
});

test('rtc: BCD time of the host clock, and a guest-set time moves only an offset', () => {
  let now = Date.UTC(2026, 10, 22, 13, 45, 59);
  const rtc = new Rtc(() => now);
  const reg = (i: number) => {
    rtc.write(0, b(i));
    return rd8(rtc, 1);
  };
  assert.equal(reg(0x00), 0x59);
  assert.equal(reg(0x02), 0x45);
  assert.equal(reg(0x04), 0x13);
  assert.equal(reg(0x07), 0x22);
  assert.equal(reg(0x08), 0x11);
  assert.equal(reg(0x09), 0x26);
  assert.equal(reg(0x32), 0x20);
  assert.equal(reg(0x0a) & 0x80, 0, 'never in update');
  assert.equal(reg(0x0d), 0x80);
  // The guest sets 01:00:00 with the SET bit, then lets the clock run.
  rtc.write(0, b(0x0b));
  rtc.write(1, b(0x82));
  rtc.write(0, b(0x04));
  rtc.write(1, b(0x01));
  rtc.write(0, b(0x02));
  rtc.write(1, b(0x00));
  rtc.write(0, b(0x00));
  rtc.write(1, b(0x00));
  rtc.write(0, b(0x0b));
  rtc.write(1, b(0x02));
  now += 10_000;
  assert.equal(reg(0x04), 0x01);
  assert.equal(reg(0x00), 0x10);
});

test('acpi pm: SLP_TYP=S5 with SLP_EN powers off; SCI_EN always reads set', () => {
  let off = 0;
  const cnt = new AcpiPmControl(() => off++);
  assert.equal(rd8(cnt, 0) & 1, 1);
  cnt.write(0, b(0x00, 5 << 2)); // SLP_TYP without SLP_EN
  assert.equal(off, 0);
  cnt.write(0, b(0x00, (5 << 2) | 0x20));
  assert.equal(off, 1);
  const evt = new AcpiPmEvent();
  evt.write(2, b(0xff, 0x01));
  assert.equal(rd8(evt, 2), 0xff);
});

test('pci config io: the host bridge answers, absent functions read all-ones', () => {
  const bus = new PciBus({ pio: new Bus('pio'), mmio: new Bus('mmio'), memoryWindow: PCI_MMIO_WINDOW, ioWindow: PCI_IO_WINDOW, setGsi: () => {} });
  const pci = new PciConfigIo(bus);
  bus.add({ name: 'bridge', config: new ConfigSpace({ vendor: 0x1b36, device: 0x0008, classCode: 0x060000 }), bars: [] }, 0);
  assert.throws(() => bus.add({ name: 'other', config: new ConfigSpace({ vendor: 1, device: 1, classCode: 0 }), bars: [] }, 0));
  wr32(pci, 0, 0x80000000);
  assert.equal(rd32(pci, 0), 0x80000000);
  assert.equal(rd32(pci, 4), 0x00081b36);
  wr32(pci, 0, 0x80000008);
  assert.equal(rd32(pci, 4) >>> 8, 0x060000);
  wr32(pci, 0, 0x80000800); // device 1
  assert.equal(rd32(pci, 4), 0xffffffff);
  wr32(pci, 0, 0x00000000); // enable bit clear
  assert.equal(rd32(pci, 4), 0xffffffff);
});

test("pci config io: a vCPU thread's view answers the latch and absent functions alone, and leaves present ones to the owner", () => {
  const bus = new PciBus({ pio: new Bus('pio'), mmio: new Bus('mmio'), memoryWindow: PCI_MMIO_WINDOW, ioWindow: PCI_IO_WINDOW, setGsi: () => {} });
  const owner = new PciConfigIo(bus);
  bus.add({ name: 'bridge', config: new ConfigSpace({ vendor: 0x1b36, device: 0x0008, classCode: 0x060000 }), bars: [] }, 0);
  owner.publishPresent(bus.devices().map(([devfn]) => devfn));
  const view = PciConfigIo.attach(owner.shared);
  wr32(view, 0, 0x80000800); // device 1: absent
  assert.equal(rd32(owner, 0), 0x80000800, 'one latch for both');
  assert.ok(view.answersAlone(0) && view.answersAlone(4));
  assert.equal(rd32(view, 4), 0xffffffff);
  wr32(view, 0, 0x80010000); // bus 1: nothing there
  assert.ok(view.answersAlone(6));
  wr32(view, 0, 0x80000000); // the host bridge: present
  assert.equal(view.answersAlone(4), false);
  assert.equal(rd32(owner, 4), 0x00081b36, 'the owner reads it through the bus');
});

test('panic watcher: the banner marks a panic, the end-of-panic line fires once, even behind timestamps', () => {
  let fired = 0;
  const w = new PanicWatcher(() => fired++);
  w.feed(Buffer.from('[ 0.9] ---[ end Kernel panic (quoted before any panic)\n'));
  assert.equal(fired, 0);
  assert.equal(w.panicking, false);
  w.feed(Buffer.from('[ 1.0] Kernel panic - not syncing: test\n[ 1.1] ---[ end Kernel pa'));
  assert.equal(w.panicking, true);
  assert.equal(fired, 0);
  w.feed(Buffer.from('nic - not syncing: test ]---\n---[ end Kernel panic'));
  assert.equal(fired, 1);
});
