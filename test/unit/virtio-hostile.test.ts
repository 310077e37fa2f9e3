// A hostile virtio driver against the transport and the devices: status sequences
// the spec forbids, queues reprogrammed behind the device's back, back-ends and
// interrupt sinks that throw, oversized control commands. Each case once ended
// the process or let the guest make the VMM do unbounded work.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GuestMemory, gpa } from '../../src/memory/guest-memory.js';
import { VNET_HDR_LEN } from '../../src/net/backend.js';
import { VirtioConsole } from '../../src/virtio/console.js';
import { bit, VIRTIO_F_VERSION_1, type VirtioDevice } from '../../src/virtio/device.js';
import { drainQueue, type ActiveQueues, type MainThreadDevice } from '../../src/virtio/in-process.js';
import { MAX_CTRL_COMMAND, NetFeature } from '../../src/virtio/net.js';
import { InProcessNet } from '../support/in-process-net.js';
import { Status, VirtioPciDevice } from '../../src/virtio/pci-transport.js';
import { FakeBackend } from '../support/fake-net-backend.js';
import { ManualWatch, mainThreadTransport } from '../support/fd-watch.js';
import { activeQueues, AVAIL_RING, SimDriver } from '../support/virtio-driver.js';

const RAM = 1 << 20;
const NOTIFY = 0x3000;

/** A virtio-pci function driven through BAR 0 directly, as a guest driver would program it. */
function transport(device: VirtioDevice | MainThreadDevice) {
  const memory = GuestMemory.create([{ start: gpa(0), size: RAM }]);
  const msi = { route: () => {}, fire: () => {} };
  const manual = new ManualWatch();
  const { dev, pump } =
    'queueNotify' in device
      ? mainThreadTransport(device, memory, msi)
      : { dev: new VirtioPciDevice(device, { memory, msi, watch: manual.watch }), pump: () => manual.pump() };
  const bar = dev.bars[0]!.region;
  const write = (offset: number, value: number, len: number) => {
    const data = new Uint8Array(len);
    for (let i = 0; i < len; i++) data[i] = Math.floor(value / 256 ** i) & 0xff;
    bar.write(offset, data);
  };
  const status = () => {
    const d = new Uint8Array(1);
    bar.read(0x14, d);
    return d[0]!;
  };
  return {
    dev,
    memory,
    status,
    setStatus: (v: number) => write(0x14, v, 1),
    negotiate: () => {
      write(0x14, Status.ACKNOWLEDGE | Status.DRIVER, 1);
      write(0x08, 1, 4);
      write(0x0c, Number(bit(VIRTIO_F_VERSION_1) >> 32n), 4);
      write(0x14, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK, 1);
    },
    queue: (index: number, desc: number, avail: number, used: number, size = 16) => {
      write(0x16, index, 2);
      write(0x18, size, 2);
      write(0x20, desc, 4);
      write(0x24, 0, 4);
      write(0x28, avail, 4);
      write(0x2c, 0, 4);
      write(0x30, used, 4);
      write(0x34, 0, 4);
      write(0x1c, 1, 2);
    },
    kick: (index: number) => {
      write(NOTIFY + 4 * index, index, 2);
      pump();
    },
  };
}

/** Lets queue stops (promises) settle, as the event loop would between two guest accesses. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

const LIVE = Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK;

test('virtio-pci: clearing DRIVER_OK without a reset fails the device; host input then never touches the reprogrammed queue', async () => {
  const out: Uint8Array[] = [];
  const console = new VirtioConsole((b) => out.push(b));
  const t = transport(console);
  t.negotiate();
  t.queue(1, 0x10000, 0x11000, 0x12000); // transmit only: the receive queue stays off for now
  t.setStatus(LIVE);
  // The guest writes one byte, so the console takes input from now on.
  t.memory.writeU64(0x10000, 0x20000n);
  t.memory.writeU32(0x10008, 1);
  t.memory.writeU8(0x20000, 0x41);
  t.memory.writeU16(0x11004, 0);
  t.memory.writeU16(0x11002, 1);
  t.kick(1);
  assert.equal(out.length, 1);
  // DRIVER_OK cleared with no reset, the receive queue pointed past the end of RAM and enabled, DRIVER_OK again.
  t.setStatus(LIVE & ~Status.DRIVER_OK);
  assert.equal(t.status() & Status.NEEDS_RESET, Status.NEEDS_RESET, 'clearing a status bit is a driver error');
  assert.match(t.dev.lastFailure ?? '', /cleared status bits 0x4/);
  t.queue(0, 0xfff00000, 0xfff10000, 0xfff20000);
  t.setStatus(LIVE);
  assert.doesNotThrow(() => console.input(Uint8Array.of(1, 2, 3)));
  assert.doesNotThrow(() => t.kick(0));
  assert.equal(console.stats().bytesIn, 0);
  // A reset brings the device back, once the stopped queues are let go.
  t.setStatus(0);
  await settle();
  assert.equal(t.status(), 0);
});

test('virtio-pci: DRIVER_OK without FEATURES_OK fails the device and its queues never start', () => {
  const started: number[] = [];
  const spy: VirtioDevice = {
    type: 4,
    name: 'spy',
    features: 0n,
    queueSizes: [16],
    configSize: 0,
    readConfig: (_o, d) => d.fill(0),
    writeConfig: () => {},
    activate: () => assert.fail('activated without FEATURES_OK'),
    startQueue: (q) => started.push(q.index),
    stopQueue: async () => undefined,
    reset: () => {},
    stats: () => ({}),
    close: async () => {},
  };
  const t = transport(spy);
  t.queue(0, 0xfff00000, 0xfff10000, 0xfff20000); // never checked: no FEATURES_OK, no activation
  t.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK);
  assert.equal(t.status() & Status.NEEDS_RESET, Status.NEEDS_RESET);
  assert.match(t.dev.lastFailure ?? '', /DRIVER_OK without FEATURES_OK/);
  t.kick(0);
  assert.deepEqual(started, []);
});

test('virtio-pci: a device that throws from a kick or a config access fails instead of the VMM', async () => {
  const thrower: MainThreadDevice = {
    type: 4,
    name: 'thrower',
    features: 0n,
    queueSizes: [16],
    configSize: 4,
    readConfig: () => {
      throw new Error('config read bug');
    },
    writeConfig: () => {},
    activate: () => {},
    queueNotify: () => {
      throw new RangeError('kick bug');
    },
    reset: () => {},
    stats: () => ({}),
    close: async () => {},
  };
  const t = transport(thrower);
  t.negotiate();
  t.queue(0, 0x10000, 0x11000, 0x12000);
  t.setStatus(LIVE);
  assert.doesNotThrow(() => t.kick(0));
  assert.match(t.dev.lastFailure ?? '', /queue 0 kick: RangeError: kick bug/);
  t.setStatus(0);
  await settle();
  const d = new Uint8Array(4);
  assert.doesNotThrow(() => t.dev.bars[0]!.region.read(0x2000, d));
  assert.deepEqual([...d], [0xff, 0xff, 0xff, 0xff]);
  assert.equal(t.dev.counters.needsReset, 2);
});

test('drainQueue: any error from a chain handler fails the device, and nothing more is popped', () => {
  const d = new SimDriver(8);
  const active: ActiveQueues & { failures: string[] } = activeQueues(d.mem, [d.queue], 0n, { queue: () => {}, configChanged: () => {} });
  d.post([{ addr: d.alloc(8), len: 8 }]);
  d.post([{ addr: d.alloc(8), len: 8 }]);
  let handled = 0;
  assert.doesNotThrow(() =>
    drainQueue(active, 0, () => {
      handled++;
      active.memory.readU8(RAM * 8); // a device bug: a guest-memory access out of range
    }),
  );
  assert.equal(handled, 1);
  assert.match(active.failures[0] ?? '', /GuestMemoryError/);
  drainQueue(active, 0, () => assert.fail('a stopped activation drained a queue'));
});

/** virtio-net with its control queue in a RAM big enough for oversized commands. */
function netRig(maxCtrlCommand?: number) {
  const backend = new FakeBackend(1);
  const net = new InProcessNet(backend, { mac: Uint8Array.of(0x52, 0x54, 0, 1, 2, 3), pairs: 1, maxCtrlCommand });
  const mem = GuestMemory.fromBuffers([{ start: gpa(0), size: 4 << 20 }]);
  const drivers = [0, 1, 2].map((q) => new SimDriver(64, false, { mem, ringOffset: q * 0x6000, dataStart: 0x20000 + q * 0x10000 }));
  const active = activeQueues(
    mem,
    drivers.map((d) => d.queue),
    bit(NetFeature.MRG_RXBUF) | bit(NetFeature.CTRL_VQ) | bit(NetFeature.CTRL_RX),
    {
      queue: () => {},
      configChanged: () => {},
    },
  );
  net.activate(active);
  return { backend, net, drivers, active, mem };
}

test('virtio-net: a control command over the size limit is refused uncopied and counted', () => {
  const r = netRig();
  const ctrl = r.drivers[2]!;
  // A well-formed MAC_TABLE_SET whose unicast table alone is 1 MiB: 174,762 entries.
  const entries = Math.floor((1 << 20) / 6);
  const len = 2 + 4 + entries * 6 + 4;
  assert.ok(len > MAX_CTRL_COMMAND);
  const at = 0x100000;
  r.mem.write(at, Uint8Array.of(1, 0)); // VIRTIO_NET_CTRL_MAC, TABLE_SET
  r.mem.writeU32(at + 2, entries);
  r.mem.writeU32(at + 6 + entries * 6, 0);
  const ack = ctrl.alloc(1, 0xaa);
  ctrl.post([
    { addr: at, len },
    { addr: ack, len: 1, write: true },
  ]);
  r.net.queueNotify(2);
  assert.equal(r.mem.readU8(ack), 1, 'VIRTIO_NET_ERR');
  assert.equal(r.net.stats()['drop.ctrl-oversized'], 1);
  assert.equal(r.active.failures.length, 0, 'the device carries on');
});

test('virtio-net: ctrl-max sets the control command limit', () => {
  const r = netRig(1024);
  const ctrl = r.drivers[2]!;
  const send = (len: number) => {
    const at = ctrl.alloc(len);
    r.mem.write(at, Uint8Array.of(0, 0, 1)); // VIRTIO_NET_CTRL_RX, PROMISC, on (then padding)
    const ack = ctrl.alloc(1, 0xaa);
    ctrl.post([
      { addr: at, len },
      { addr: ack, len: 1, write: true },
    ]);
    r.net.queueNotify(2);
    return r.mem.readU8(ack);
  };
  assert.equal(send(1024), 0, 'at the limit: read and answered');
  assert.equal(send(1025), 1, 'past it: refused');
  assert.equal(r.net.stats()['drop.ctrl-oversized'], 1);
});

test('virtio-net: a back-end that throws on send costs one packet; the chain still goes back and the queue moves on', () => {
  const r = netRig();
  const tx = r.drivers[1]!;
  let calls = 0;
  r.backend.send = () => {
    calls++;
    throw new RangeError('ERR_SOCKET_BAD_PORT');
  };
  const packet = tx.alloc(VNET_HDR_LEN + 60, 0x11);
  tx.post([{ addr: packet, len: VNET_HDR_LEN + 60 }]);
  tx.post([{ addr: packet, len: VNET_HDR_LEN + 60 }]);
  assert.doesNotThrow(() => r.net.queueNotify(1));
  assert.equal(calls, 2);
  assert.equal(tx.takeUsed().length, 2, 'both chains returned');
  assert.equal(r.net.stats()['drop.tx-backend-error'], 2);
  assert.equal(r.active.failures.length, 0);
});

test('virtio-net: a host packet for a device that failed is held, not written', () => {
  const r = netRig();
  const rx = r.drivers[0]!;
  rx.post([{ addr: rx.alloc(2048), len: 2048, write: true }]);
  // The driver breaks a rule on the transmit queue: its available index runs 1000 entries ahead.
  r.mem.writeU16(AVAIL_RING + 0x6000 + 2, 1000);
  r.net.queueNotify(1);
  assert.match(r.active.failures[0] ?? '', /available index/);
  const frame = new Uint8Array(VNET_HDR_LEN + 60);
  assert.equal(r.backend.port!.receive(0, frame), false);
  assert.deepEqual(rx.takeUsed(), []);
});
