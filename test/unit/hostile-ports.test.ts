// A guest may write anything to any port. Replays random port traffic, seeded and
// weighted towards the ports that have devices, against the PC device set.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Bus } from '../../src/devices/bus.js';
import { GuestMemory, gpa } from '../../src/memory/guest-memory.js';
import { VirtioConsole } from '../../src/virtio/console.js';
import { VirtioRng } from '../../src/virtio/rng.js';
import { COM1_PORT, installPcDevices } from '../../src/vmm/pc-devices.js';
import { mainThreadTransport } from '../support/fd-watch.js';
import { rng } from '../support/seeded-random.js';

/** The PC's devices with every line and output going nowhere. */
function quietPc(pio: Bus, mmio: Bus) {
  const none = () => {};
  return installPcDevices(pio, { mmio, setGsi: none, com1Irq: { set: none }, serialOutput: none, onReset: none, onPowerOff: none, onPanic: none });
}

const DEVICE_PORTS = [0x3f8, 0x60, 0x64, 0x70, 0x71, 0x600, 0x602, 0x604, 0x505, 0x80, 0xcf8, 0xcfc, 0xcfe];

test('random port traffic never throws, and every access returns exactly the bytes asked for', () => {
  for (const seed of [1, 2, 3, 0xdecafbad]) {
    const next = rng(seed);
    const pio = new Bus('pio');
    const events = { resets: 0, poweroffs: 0, panics: 0, levels: 0, out: 0 };
    const { serial } = installPcDevices(pio, {
      mmio: new Bus('mmio'),
      setGsi: () => events.levels++,
      com1Irq: { set: () => events.levels++ },
      serialOutput: (b) => (events.out += b.length),
      onReset: () => events.resets++,
      onPowerOff: () => events.poweroffs++,
      onPanic: () => events.panics++,
    });
    serial.enqueueInput(Buffer.from('host input'));
    for (let i = 0; i < 50_000; i++) {
      const base = next() < 0.8 ? DEVICE_PORTS[Math.floor(next() * DEVICE_PORTS.length)]! : Math.floor(next() * 0x10000);
      const port = base + Math.floor(next() * 8);
      const size = [1, 2, 4][Math.floor(next() * 3)]!;
      const data = Uint8Array.from({ length: size }, () => Math.floor(next() * 256));
      if (next() < 0.5) {
        pio.write(port, data);
      } else {
        const buf = new Uint8Array(size + 2).fill(0xee);
        pio.read(port, buf.subarray(1, 1 + size));
        assert.equal(buf[0], 0xee, 'no write before the access');
        assert.equal(buf[size + 1], 0xee, 'no write past the access');
      }
    }
    assert.ok(pio.counters().get('serial0')!.writes > 0);
    assert.ok(events.resets + events.poweroffs + events.panics > 0, 'the traffic reached the control devices');
  }
});

test('a guest that never reads its UART loses host input only past the limit, and says so', () => {
  const pio = new Bus('pio');
  const { serial } = quietPc(pio, new Bus('mmio'));
  serial.enqueueInput(new Uint8Array(1 << 20));
  serial.enqueueInput(new Uint8Array(100));
  assert.equal(serial.counters.rxDropped, 100);
  pio.write(COM1_PORT + 1, Uint8Array.of(1)); // the guest finally enables receive
  const lsr = new Uint8Array(1);
  pio.read(COM1_PORT + 5, lsr);
  assert.equal(lsr[0]! & 1, 1);
});

test('random config-space and BAR traffic against virtio-pci devices over garbage guest memory never throws', async () => {
  let kicks = 0;
  let activations = 0;
  for (const seed of [7, 8, 9, 10, 11]) {
    const next = rng(seed);
    const pio = new Bus('pio');
    const mmio = new Bus('mmio');
    const { pci } = quietPc(pio, mmio);
    const memory = GuestMemory.create([{ start: gpa(0), size: 1 << 20 }]);
    const ram = memory.slice(0, 1 << 20);
    for (let i = 0; i < ram.length; i++) ram[i] = Math.floor(next() * 256);
    const msi = { route: () => {}, fire: () => {} };
    const transports = [mainThreadTransport(new VirtioRng(), memory, msi), mainThreadTransport(new VirtioConsole(() => {}), memory, msi)];
    const devices = transports.map((t) => t.dev);
    const pick = (n: number) => Math.floor(next() * n);
    const le = (v: number, n: number) => Uint8Array.from({ length: n }, (_, i) => (v >>> (8 * i)) & 0xff);
    const write32 = (port: number, v: number) => pio.write(port, le(v, 4));
    for (const d of devices) {
      // Start from a driver that set the device up properly, over rings full of garbage.
      const devfn = pci.add(d);
      write32(0xcf8, 0x80000004 | (devfn << 8));
      pio.write(0xcfc, le(2, 2));
      const base = 0xc0000000 + ((devfn >> 3) - 1) * 0x8000; // slots 1 and 2, BARs placed in order
      mmio.write(base + 0x08, le(1, 4));
      mmio.write(base + 0x0c, le(1, 4)); // VERSION_1
      mmio.write(base + 0x14, le(0x0b, 1)); // ACKNOWLEDGE | DRIVER | FEATURES_OK
      for (let q = 0; q < d.device.queueSizes.length; q++) {
        mmio.write(base + 0x16, le(q, 2));
        mmio.write(base + 0x18, le(16, 2));
        mmio.write(base + 0x20, le(0x10000 + q * 0x1000, 4));
        mmio.write(base + 0x28, le(0x20000 + q * 0x1000, 4));
        mmio.write(base + 0x30, le(0x30000 + q * 0x1000, 4));
        mmio.write(base + 0x1c, le(1, 2));
      }
      mmio.write(base + 0x14, le(0x0f, 1)); // DRIVER_OK
    }
    for (let i = 0; i < 20_000; i++) {
      // What the event loop does between exits: kicked queues run, calls become interrupts.
      if (i % 64 === 0) for (const t of transports) t.pump();
      const size = [1, 2, 4][pick(3)]!;
      const data = Uint8Array.from({ length: size }, () => pick(256));
      const r = next();
      if (r < 0.4) {
        // A config access to slot 0-3, often to the command register, BARs or capabilities.
        const reg = next() < 0.5 ? [0x04, 0x10, 0x14, 0x40, 0x50, 0x60, 0x70][pick(7)]! : pick(256);
        write32(0xcf8, 0x80000000 | (pick(4) << 11) | (reg & 0xfc));
        if (next() < 0.5) pio.write(0xcfc + (reg & 3 & (4 - size)), data);
        else pio.read(0xcfc, new Uint8Array(size));
      } else {
        // An access inside a BAR (wherever the guest moved it), or anywhere in the window.
        const base = next() < 0.9 ? 0xc0000000 + pick(2) * 0x8000 : 0xc0000000 + pick(1 << 20);
        const addr = base + (next() < 0.5 ? [0x0, 0x14, 0x16, 0x18, 0x1c, 0x20, 0x1000, 0x3000, 0x3004, 0x4000, 0x6000][pick(11)]! : pick(0x8000));
        if (next() < 0.6) mmio.write(addr, data);
        else mmio.read(addr, new Uint8Array(size));
      }
    }
    kicks += devices.reduce((n, d) => n + d.counters.notifyExits, 0);
    activations += devices.reduce((n, d) => n + d.counters.needsReset, 0);
    await Promise.all(devices.map((d) => d.close()));
    memory.close();
  }
  // The traffic reached the devices' queues (and made them fail on the garbage), not just the config space.
  assert.ok(kicks > 0, 'kicks reached the devices');
  assert.ok(activations > 0, 'some device was activated over garbage rings and refused them');
});
