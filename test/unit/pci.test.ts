import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PCI_IO_WINDOW, PCI_MMIO_WINDOW } from '../../src/arch/x86/layout.js';
import { Bus, dataValue, setDataValue } from '../../src/devices/bus.js';
import { ConfigSpace, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MEMORY } from '../../src/devices/pci/config-space.js';
import { PciBus } from '../../src/devices/pci/pci-bus.js';
import type { MsiMessage } from '../../src/devices/pci/msix.js';
import { GuestMemory, gpa } from '../../src/memory/guest-memory.js';
import { VirtioRng } from '../../src/virtio/rng.js';
import { mainThreadTransport } from '../support/fd-watch.js';
import { Status } from '../../src/virtio/pci-transport.js';

function rig() {
  const pio = new Bus('pio');
  const mmio = new Bus('mmio');
  const gsi = new Map<number, boolean>();
  const bus = new PciBus({ pio, mmio, memoryWindow: PCI_MMIO_WINDOW, ioWindow: PCI_IO_WINDOW, setGsi: (g, level) => gsi.set(g, level) });
  bus.add({ name: 'bridge', config: new ConfigSpace({ vendor: 0x1b36, device: 0x0008, classCode: 0x060000 }), bars: [] }, 0);
  const memory = GuestMemory.create([{ start: gpa(0), size: 1 << 20 }]);
  const fired: { vector: number; message: MsiMessage }[] = [];
  const routed: number[] = [];
  const msi = { route: (v: number) => routed.push(v), fire: (vector: number, message: MsiMessage) => fired.push({ vector, message }) };
  const add = () => {
    const { dev, pump } = mainThreadTransport(new VirtioRng(), memory, msi);
    return { dev, pump, devfn: bus.add(dev) };
  };
  const cfg = {
    read: (devfn: number, off: number, len = 4) => {
      const d = new Uint8Array(len);
      bus.configRead(devfn, off, d);
      return dataValue(d);
    },
    write: (devfn: number, off: number, v: number, len = 4) => {
      const d = new Uint8Array(len);
      setDataValue(d, v);
      bus.configWrite(devfn, off, d);
    },
  };
  const mm = {
    read: (addr: number, len = 4) => {
      const d = new Uint8Array(len);
      return mmio.read(addr, d) ? dataValue(d) : undefined;
    },
    write: (addr: number, v: number, len = 4) => {
      const d = new Uint8Array(len);
      setDataValue(d, v);
      return mmio.write(addr, d);
    },
  };
  return { bus, mmio, gsi, memory, fired, routed, add, cfg, mm };
}

/** Walks the capability list; returns [id, offset] pairs. */
function capabilities(r: ReturnType<typeof rig>, devfn: number): [number, number][] {
  const out: [number, number][] = [];
  for (let at = r.cfg.read(devfn, 0x34, 1); at; at = r.cfg.read(devfn, at + 1, 1)) out.push([r.cfg.read(devfn, at, 1), at]);
  return out;
}

test('pci: BARs are placed in the window, size the usual way, and decode only while the command register says so', () => {
  const r = rig();
  const { devfn } = r.add();
  const bar = r.cfg.read(devfn, 0x10);
  assert.equal(bar, PCI_MMIO_WINDOW.start);
  assert.equal(r.mm.read(bar), undefined, 'no decoding before the guest enables memory space');
  r.cfg.write(devfn, 0x04, PCI_COMMAND_MEMORY, 2);
  assert.notEqual(r.mm.read(bar), undefined);
  // Sizing: all-ones reads back the size mask, then the address is restored.
  r.cfg.write(devfn, 0x04, 0, 2);
  r.cfg.write(devfn, 0x10, 0xffffffff);
  assert.equal(r.cfg.read(devfn, 0x10), 0xffff8000);
  r.cfg.write(devfn, 0x10, 0xd0000000);
  r.cfg.write(devfn, 0x04, PCI_COMMAND_MEMORY, 2);
  assert.equal(r.mm.read(bar), undefined, 'the old place is gone');
  assert.notEqual(r.mm.read(0xd0000000), undefined, 'the BAR moved');
  assert.equal(r.cfg.read(devfn, 0x14), 0, 'unimplemented BARs read zero');
});

test('pci: a BAR moved over another device is left unmapped, and the VMM carries on', () => {
  const r = rig();
  const a = r.add();
  const b = r.add();
  r.cfg.write(a.devfn, 0x04, PCI_COMMAND_MEMORY, 2);
  r.cfg.write(b.devfn, 0x04, PCI_COMMAND_MEMORY, 2);
  const aBar = r.cfg.read(a.devfn, 0x10);
  r.cfg.write(b.devfn, 0x10, aBar);
  assert.equal(r.bus.conflicts, 1);
  assert.equal(r.mmio.counters().get('virtio-rng')!.reads, 0);
  r.mm.read(aBar);
  assert.equal(r.mmio.counters().get('virtio-rng')!.reads, 1, 'the first device still answers');
});

test('pci: identity, capability list (virtio structures and MSI-X), interrupt pin and line', () => {
  const r = rig();
  const { devfn } = r.add();
  assert.equal(r.cfg.read(devfn, 0x00), 0x10441af4);
  assert.equal(r.cfg.read(devfn, 0x08) >>> 8, 0x00ff00);
  assert.equal(r.cfg.read(devfn, 0x06, 2) & 0x10, 0x10, 'capability list bit');
  const caps = capabilities(r, devfn);
  assert.deepEqual(
    caps.map(([id]) => id),
    [0x09, 0x09, 0x09, 0x09, 0x11],
    'common, ISR, notify, PCI config access, MSI-X (rng has no device config)',
  );
  const cfgTypes = caps.filter(([id]) => id === 0x09).map(([, at]) => r.cfg.read(devfn, at + 3, 1));
  assert.deepEqual(cfgTypes, [1, 3, 2, 5]);
  assert.equal(r.cfg.read(devfn, 0x3d, 1), 1, 'INTA#');
  assert.equal(r.cfg.read(devfn, 0x3c, 1), 17, 'slot 1 INTA# is GSI 17, as the _PRT says');
  assert.equal(r.cfg.read(0x50, 0), 0xffffffff, 'an empty slot reads all-ones');
});

/** Drives a virtio-pci device's common configuration like a driver. */
function driver(r: ReturnType<typeof rig>, devfn: number) {
  r.cfg.write(devfn, 0x04, PCI_COMMAND_MEMORY, 2);
  const base = r.cfg.read(devfn, 0x10);
  return {
    base,
    status: () => r.mm.read(base + 0x14, 1)!,
    setStatus: (v: number) => r.mm.write(base + 0x14, v, 1),
    features: (select: number) => (r.mm.write(base + 0x00, select), r.mm.read(base + 0x04)!),
    accept: (lo: number, hi: number) => {
      r.mm.write(base + 0x08, 0);
      r.mm.write(base + 0x0c, lo);
      r.mm.write(base + 0x08, 1);
      r.mm.write(base + 0x0c, hi);
    },
    queue: (index: number, desc: number, avail: number, used: number, size = 256) => {
      r.mm.write(base + 0x16, index, 2);
      r.mm.write(base + 0x18, size, 2);
      r.mm.write(base + 0x20, desc);
      r.mm.write(base + 0x24, 0);
      r.mm.write(base + 0x28, avail);
      r.mm.write(base + 0x2c, 0);
      r.mm.write(base + 0x30, used);
      r.mm.write(base + 0x34, 0);
      r.mm.write(base + 0x1c, 1, 2);
    },
  };
}

test('virtio-pci: feature negotiation needs VERSION_1 and only offered bits; a bad queue sets DEVICE_NEEDS_RESET; reset clears', () => {
  const r = rig();
  const { dev, devfn } = r.add();
  const d = driver(r, devfn);
  assert.equal(d.features(1) & 1, 1, 'VERSION_1 offered');
  assert.equal((d.features(0) >>> 28) & 3, 3, 'INDIRECT_DESC and EVENT_IDX offered');
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER);
  d.accept(0, 0); // a legacy driver: no VERSION_1
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
  assert.equal(d.status() & Status.FEATURES_OK, 0, 'FEATURES_OK refused');
  d.setStatus(0);
  assert.equal(d.status(), 0);
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER);
  d.accept(1 << 5, 1); // bit 5 was never offered
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
  assert.equal(d.status() & Status.FEATURES_OK, 0);
  d.setStatus(0);
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER);
  d.accept(1 << 29, 1);
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
  assert.equal(d.status() & Status.FEATURES_OK, Status.FEATURES_OK);
  d.queue(0, 0xfff00, 0x2000, 0x3000); // descriptor table runs off the end of RAM
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
  assert.equal(d.status() & Status.NEEDS_RESET, Status.NEEDS_RESET);
  assert.match(dev.lastFailure ?? '', /descriptor table/);
  d.setStatus(0);
  assert.equal(d.status(), 0);
  assert.equal(r.mm.read(d.base + 0x1c, 2), 0, 'queue disabled by the reset');
});

test('virtio-pci: INTx until MSI-X is enabled; MSI-X vectors held while masked and delivered on unmask', () => {
  const r = rig();
  const { dev, devfn, pump } = r.add();
  const d = driver(r, devfn);
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER);
  d.accept(0, 1);
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
  const desc = 0x10000;
  d.queue(0, desc, 0x20000, 0x30000, 16);
  r.mm.write(d.base + 0x1a, 1, 2); // queue 0 -> vector 1
  d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
  // One request: an 8-byte writable buffer.
  const post = () => {
    const idx = r.memory.readU16(0x20002);
    r.memory.writeU64(desc, 0x40000n);
    r.memory.writeU32(desc + 8, 8);
    r.memory.writeU16(desc + 12, 2);
    r.memory.writeU16(0x20004 + 2 * (idx % 16), 0);
    r.memory.writeU16(0x20002, idx + 1);
    r.mm.write(d.base + 0x3000, 0, 2); // notify queue 0 (an exit: no ioeventfd here)
    pump();
  };
  post();
  assert.equal(r.gsi.get(17), true, 'INTx asserted');
  assert.equal(r.mm.read(d.base + 0x1000, 1), 1, 'ISR says queue interrupt');
  assert.equal(r.gsi.get(17), false, 'reading the ISR deasserts');
  // INTx disable in the command register keeps the line low.
  r.cfg.write(devfn, 0x04, PCI_COMMAND_MEMORY | PCI_COMMAND_INTX_DISABLE, 2);
  post();
  assert.notEqual(r.gsi.get(17), true);
  r.mm.read(d.base + 0x1000, 1);
  r.cfg.write(devfn, 0x04, PCI_COMMAND_MEMORY, 2);
  // Enable MSI-X, program vector 1, leave it masked.
  const msixCap = capabilities(r, devfn).find(([id]) => id === 0x11)![1];
  r.cfg.write(devfn, msixCap + 2, 0x8000, 2);
  const entry = d.base + 0x4000 + 16;
  r.mm.write(entry, 0xfee00000);
  r.mm.write(entry + 4, 0);
  r.mm.write(entry + 8, 0x4041);
  post();
  assert.equal(r.fired.length, 0, 'masked: held');
  assert.equal(r.mm.read(d.base + 0x6000, 1)! & 2, 2, 'pending bit set');
  r.mm.write(entry + 12, 0); // unmask
  assert.deepEqual(r.fired, [{ vector: 1, message: { addressLo: 0xfee00000, addressHi: 0, data: 0x4041 } }]);
  assert.deepEqual(r.routed, [1], 'the route was set before the first delivery');
  assert.equal(r.mm.read(d.base + 0x6000, 1)! & 2, 0);
  post();
  assert.equal(r.fired.length, 2);
  assert.equal(dev.counters.interruptsIntx, 2);
  assert.equal(dev.counters.interruptsMsix, 2);
  assert.equal(dev.counters.notifyExits, 4);
});

test('virtio-pci: the PCI configuration access capability is a working window into BAR 0', () => {
  const r = rig();
  const { devfn } = r.add();
  const cap = capabilities(r, devfn).find(([id, at]) => id === 0x09 && r.cfg.read(devfn, at + 3, 1) === 5)![1];
  // Read device_feature (select 1) through the window: VERSION_1 is bit 0.
  r.cfg.write(devfn, cap + 4, 0, 1);
  r.cfg.write(devfn, cap + 8, 0x00); // device_feature_select
  r.cfg.write(devfn, cap + 12, 4);
  r.cfg.write(devfn, cap + 16, 1);
  r.cfg.write(devfn, cap + 8, 0x04); // device_feature
  assert.equal(r.cfg.read(devfn, cap + 16) & 1, 1);
  // Write device_status, then see it through the BAR the normal way.
  r.cfg.write(devfn, cap + 8, 0x14);
  r.cfg.write(devfn, cap + 12, 1);
  r.cfg.write(devfn, cap + 16, 1, 1);
  const d = driver(r, devfn);
  assert.equal(d.status(), 1);
  // A window outside the BAR, or of a bad length, reads zero and writes nothing.
  r.cfg.write(devfn, cap + 8, 0x10000);
  assert.equal(r.cfg.read(devfn, cap + 16, 1), 0);
  r.cfg.write(devfn, cap + 8, 0x14);
  r.cfg.write(devfn, cap + 12, 3);
  r.cfg.write(devfn, cap + 16, 0, 1);
  assert.equal(d.status(), 1);
});
