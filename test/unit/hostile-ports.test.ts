// A guest may write anything to any port. Replays random port traffic, seeded and
// weighted towards the ports that have devices, against the PC device set.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Bus } from '../../src/devices/bus.js';
import { COM1_PORT, installPcDevices } from '../../src/vmm/pc-devices.js';

/** xorshift32: the same sequence on every run, so a failure can be replayed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
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
  const { serial } = installPcDevices(pio, {
    mmio: new Bus('mmio'),
    setGsi: () => {},
    com1Irq: { set: () => {} },
    serialOutput: () => {},
    onReset: () => {},
    onPowerOff: () => {},
    onPanic: () => {},
  });
  serial.enqueueInput(new Uint8Array(1 << 20));
  serial.enqueueInput(new Uint8Array(100));
  assert.equal(serial.counters.rxDropped, 100);
  pio.write(COM1_PORT + 1, Uint8Array.of(1)); // the guest finally enables receive
  const lsr = new Uint8Array(1);
  pio.read(COM1_PORT + 5, lsr);
  assert.equal(lsr[0]! & 1, 1);
});
