import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { closeFd, epollAdd, epollCreate, EPOLL_EVENT_SIZE, epollWait, eventfd, eventfdDrain, eventfdSignal } from '../../src/host/libc.js';
import { VNET_HDR_LEN } from '../../src/net/backend.js';
import { FrameRing, frameRingShared } from '../../src/net/frame-ring.js';
import { bit } from '../../src/virtio/device.js';
import { NetFeature, VirtioNet } from '../../src/virtio/net.js';
import { EventLoop } from '../../src/vmm/event-loop.js';
import { FakeBackend } from '../support/fake-net-backend.js';
import { until } from '../support/until.js';
import { SimDriver } from '../support/virtio-driver.js';

const MAC = Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56);

test('frame ring: packets come out in order across the wrap; a full ring refuses, then signals the producer once there is room', () => {
  const consumer = eventfd();
  const producer = eventfd();
  const ring = new FrameRing(frameRingShared(4096, consumer, producer));
  const packet = (n: number, len: number) => new Uint8Array(len).fill(n);
  let pushed = 0;
  let popped = 0;
  for (let round = 0; round < 50; round++) {
    // Lengths that do not divide the ring, so records wrap at every offset.
    for (let i = 0; i < 3; i++) (assert.ok(ring.push(pushed % 4, packet(pushed, 300 + (pushed % 7) * 13)), `push ${pushed}`), pushed++);
    if (round === 0) assert.equal(eventfdDrain(consumer), 1, 'the first push into an empty ring wakes the consumer, the next do not');
    for (let f = ring.pop(); f; f = ring.pop()) {
      assert.equal(f.queue, popped % 4);
      assert.equal(f.packet.length, 300 + (popped % 7) * 13);
      assert.ok(f.packet.every((b) => b === (popped & 255)));
      popped++;
    }
  }
  assert.equal(popped, pushed);
  eventfdDrain(consumer);
  let n = 0;
  while (ring.push(0, packet(1, 1000))) n++;
  assert.equal(n, 3, 'the ring takes what fits (three here, with the room lost at the wrap) and refuses the next');
  assert.equal(eventfdDrain(producer), 0);
  ring.pop();
  assert.equal(eventfdDrain(producer), 1, 'the refused producer hears of the room');
  assert.throws(() => ring.push(0, packet(1, 3000)), /ring/, 'a packet the ring can never hold is refused outright');
  closeFd(consumer);
  closeFd(producer);
});

test('frame ring: two threads, 200,000 packets, each side asleep in epoll_wait whenever it has nothing to do: no wakeup is lost', async () => {
  const consumerFd = eventfd();
  const producerFd = eventfd();
  const shared = frameRingShared(16384, consumerFd, producerFd);
  const COUNT = 200_000;
  const ringModule = new URL('../../src/net/frame-ring.js', import.meta.url).href;
  const libcModule = new URL('../../src/host/libc.js', import.meta.url).href;
  // The producer: pushes as fast as it can and sleeps on its fd (never longer than a second) when the ring is full.
  const producer = new Worker(
    `const { workerData } = require('node:worker_threads');
     (async () => {
       const { FrameRing } = await import(workerData.ringModule);
       const libc = await import(workerData.libcModule);
       const ring = new FrameRing(workerData.shared);
       const epfd = libc.epollCreate();
       libc.epollAdd(epfd, workerData.shared.producerFd, 1);
       const events = Buffer.alloc(libc.EPOLL_EVENT_SIZE);
       const packet = new Uint8Array(200);
       for (let i = 0; i < workerData.count; i++) {
         packet[0] = i & 255;
         while (!ring.push(i & 3, packet)) {
           if (libc.epollWait(epfd, events, 1000) === 0) throw new Error('producer: no room signalled within a second');
           libc.eventfdDrain(workerData.shared.producerFd);
         }
       }
     })();`,
    { eval: true, workerData: { shared, ringModule, libcModule, count: COUNT } },
  );
  const failed = new Promise<never>((_, reject) => producer.on('error', reject));
  const ring = new FrameRing(shared);
  const epfd = epollCreate();
  epollAdd(epfd, consumerFd, 1);
  const events = Buffer.alloc(EPOLL_EVENT_SIZE);
  let got = 0;
  const consume = async () => {
    while (got < COUNT) {
      for (let f = ring.pop(); f; f = ring.pop()) {
        assert.equal(f.packet[0], got & 255, `packet ${got} in order`);
        got++;
      }
      if (got === COUNT) break;
      // Asleep with an empty ring: only the producer's signal may wake it.
      if (epollWait(epfd, events, 1000) === 0) throw new Error(`consumer: packet ${got} never signalled`);
      eventfdDrain(consumerFd);
    }
  };
  await Promise.race([consume(), failed]);
  await producer.terminate();
  for (const fd of [epfd, consumerFd, producerFd]) closeFd(fd);
});

/** virtio-net in its device worker over a main-thread back-end (the frame rings), started through the per-queue contract. */
function setup() {
  const backend = new FakeBackend(1);
  const loop = new EventLoop((e) => {
    throw e;
  });
  const net = new VirtioNet(backend, { mac: MAC, pairs: 1 }, 'net', loop);
  const rx = new SimDriver(64, false);
  const tx = new SimDriver(64, false, { mem: rx.mem, ringOffset: 0x6000, dataStart: 0x40000 });
  const ctrl = new SimDriver(64, false, { mem: rx.mem, ringOffset: 0xc000, dataStart: 0x80000 });
  const drivers = [rx, tx, ctrl];
  const fds = drivers.map(() => ({ kick: eventfd(), call: eventfd() }));
  const failures: string[] = [];
  net.activate(bit(NetFeature.MRG_RXBUF) | bit(NetFeature.CTRL_VQ), rx.mem.table(), { fail: (r) => failures.push(r), configChanged: () => {} });
  const start = (index: number, state = drivers[index]!.queue.state()) => net.startQueue({ index, state, kickFd: fds[index]!.kick, callFd: fds[index]!.call });
  drivers.forEach((_, i) => start(i));
  const close = async () => {
    await net.close();
    loop.close();
    for (const f of fds) [f.kick, f.call].forEach(closeFd);
  };
  return { backend, net, rx, tx, fds, failures, start, kick: (i: number) => eventfdSignal(fds[i]!.kick), close };
}

const framePacket = (n: number) => {
  const p = new Uint8Array(VNET_HDR_LEN + 100).fill(n);
  p.set(MAC, VNET_HDR_LEN);
  p.fill(0, 0, VNET_HDR_LEN);
  return p;
};

test('virtio-net worker: transmit reaches a main-thread back-end and its packets reach the guest, through the frame rings', async () => {
  const s = setup();
  const hdr = s.tx.alloc(VNET_HDR_LEN);
  const body = s.tx.alloc(60, 0x5a);
  s.tx.post([
    { addr: hdr, len: VNET_HDR_LEN },
    { addr: body, len: 60 },
  ]);
  s.kick(1);
  await until('the back-end got the packet', () => s.backend.sent.length === 1);
  assert.deepEqual([...s.backend.sent[0]!.packet.subarray(VNET_HDR_LEN)], new Array(60).fill(0x5a));
  await until('the transmit chain came back', () => s.tx.takeUsed().length === 1);
  // The guest has no receive buffers yet: the packet waits in the ring, then lands once there are.
  assert.ok(s.backend.offer(0, framePacket(7)));
  const buf = s.rx.alloc(2048);
  s.rx.post([{ addr: buf, len: 2048, write: true }]);
  s.kick(0);
  await until('the packet reached the guest', () => s.rx.mem.readU8(buf + VNET_HDR_LEN + 6) === 7);
  assert.equal(s.rx.mem.readU16(buf + 10), 1, 'num_buffers');
  await until('the guest was interrupted', () => eventfdDrain(s.fds[0]!.call) > 0);
  assert.equal(s.net.stats().rxPackets, 1);
  assert.equal(s.net.stats().txPackets, 1);
  await s.close();
});

test('virtio-net worker: a receive queue stopped mid-stream restarts from its state; every packet lands once, in order', async () => {
  const s = setup();
  const bufs = Array.from({ length: 48 }, () => s.rx.alloc(256));
  for (const b of bufs.slice(0, 16)) s.rx.post([{ addr: b, len: 256, write: true }]);
  s.kick(0);
  for (let i = 0; i < 40; i++) s.backend.offer(0, framePacket(i + 1));
  await until('the first 16 landed', () => s.net.stats().rxPackets === 16);
  const state = await s.net.stopQueue(0);
  assert.equal(state?.nextUsed, 16);
  for (const b of bufs.slice(16)) s.rx.post([{ addr: b, len: 256, write: true }]);
  s.start(0, state);
  await until('all 40 landed', () => s.net.stats().rxPackets === 40);
  const used = s.rx.takeUsed();
  assert.equal(used.length, 40);
  used.forEach((u, i) => assert.equal(s.rx.mem.readU8(bufs[u.id]! + VNET_HDR_LEN + 6), i + 1, `buffer ${i} holds packet ${i + 1}`));
  await s.close();
});

test('virtio-net worker: a broken ring fails the device, not the worker; after a reset the card works again', async () => {
  const s = setup();
  s.tx.publish(99); // a head outside the table
  s.kick(1);
  await until('the device failed', () => s.failures.length > 0);
  assert.match(s.failures[0]!, /chain head 99/);
  for (const i of [0, 1, 2]) await s.net.stopQueue(i);
  s.net.reset();
  const tx = new SimDriver(64, false, { mem: s.rx.mem, ringOffset: 0x10000, dataStart: 0xc0000 });
  s.net.activate(0n, s.rx.mem.table(), { fail: (r) => s.failures.push(r), configChanged: () => {} });
  s.net.startQueue({ index: 1, state: tx.queue.state(), kickFd: s.fds[1]!.kick, callFd: s.fds[1]!.call });
  tx.post([{ addr: tx.alloc(100), len: 100 }]);
  s.kick(1);
  await until('the new transmit queue served', () => s.backend.sent.length === 1);
  assert.equal(s.failures.length, 1);
  await s.close();
});
