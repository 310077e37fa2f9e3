// Body of a device worker thread: one per virtio device. It makes the device's
// WorkerDevice from plain data, then for each queue it is given it maps guest RAM
// from the memfd (one mapping per table, shared by the queues) and starts the
// queue's data plane; then it waits in its own blocking epoll loop on those
// queues' kick fds, the back-end's fds and its control fd. Each turn of the loop
// gives every queue with work a budget of chains, so one busy queue neither
// starves the others nor holds up a stop (the control fd is looked at between
// turns); the data planes do their I/O here and signal their call fds themselves.
// Nothing the guest does can end this thread: whatever a data plane or a back-end
// handler throws fails the device, reported to the main thread, and the loop goes on.
import { receiveMessageOnPort, workerData } from 'node:worker_threads';
import { closeFd, epollAdd, epollCreate, epollDelete, EPOLL_EVENT_SIZE, epollWait, eventfdDrain, eventfdSignal } from '../../host/libc.js';
import { GuestMemory, type MemoryTable } from '../../memory/guest-memory.js';
import type { FdPoller } from '../../net/backend.js';
import { blockWorkerDevice } from '../block-queue.js';
import { describeError } from '../device.js';
import { netWorkerDevice } from '../net-queues.js';
import { WORKER_COUNTERS, WorkerCounter, type QueueDataPlane, type WorkerDevice, type WorkerEnv } from './data-plane.js';
import type { DeviceKind, DeviceWorkerData, FromWorker, ToWorker } from './device-worker.js';

/** Chains per queue per turn of the loop. */
const BUDGET = 64;
/** The control fd's epoll token; queue i's kick fd has token i + 1; back-end fds have tokens from FIRST_BACKEND_TOKEN. */
const CONTROL = 0;
const FIRST_BACKEND_TOKEN = 1 << 16;
const MAX_EVENTS = 64;

const factories: Record<DeviceKind, (init: unknown, env: WorkerEnv) => WorkerDevice> = {
  block: blockWorkerDevice,
  net: netWorkerDevice,
};

interface Running {
  plane: QueueDataPlane;
  table: MemoryTable;
  kickFd: number;
  /** Chains may be waiting without a kick (the budget ran out, or the queue just started). */
  more: boolean;
}

/** Guest RAM mapped once per table, however many queues use it. */
class Mappings {
  private readonly maps = new Map<string, { memory: GuestMemory; users: number }>();

  take(table: MemoryTable): GuestMemory {
    const key = JSON.stringify(table);
    let m = this.maps.get(key);
    if (!m) {
      m = { memory: GuestMemory.map(table), users: 0 };
      this.maps.set(key, m);
    }
    m.users++;
    return m.memory;
  }

  give(table: MemoryTable): void {
    const key = JSON.stringify(table);
    const m = this.maps.get(key);
    if (!m || --m.users > 0) return;
    m.memory.close();
    this.maps.delete(key);
  }
}

function main({ kind, init, controlFd, port, counters: shared }: DeviceWorkerData): void {
  const counters = new Float64Array(shared);
  const epfd = epollCreate();
  epollAdd(epfd, controlFd, CONTROL);
  const events = Buffer.alloc(MAX_EVENTS * EPOLL_EVENT_SIZE);
  const reply = (m: FromWorker) => port.postMessage(m);
  const running = new Map<number, Running>();
  const mappings = new Mappings();
  const backendFds = new Map<number, { fd: number; handler: () => void }>();
  let nextToken = FIRST_BACKEND_TOKEN;

  const poller: FdPoller = {
    add: (fd, handler) => {
      const token = nextToken++;
      epollAdd(epfd, fd, token);
      backendFds.set(token, { fd, handler });
      return token;
    },
    remove: (token) => {
      const b = backendFds.get(token);
      if (!b) return;
      backendFds.delete(token);
      epollDelete(epfd, b.fd);
    },
  };
  const failDevice = (reason: string) => reply({ type: 'failed', reason });
  const device = factories[kind](init, { counters: counters.subarray(WORKER_COUNTERS.length), poller, fail: failDevice });

  const release = (index: number): void => {
    const r = running.get(index);
    if (!r) return;
    epollDelete(epfd, r.kickFd);
    mappings.give(r.table);
    running.delete(index);
  };

  const fail = (index: number, reason: string): void => {
    release(index);
    reply({ type: 'failed', index, reason });
  };

  const start = (m: Extract<ToWorker, { type: 'start' }>): void => {
    const index = m.queue.index;
    release(index);
    let memory: GuestMemory | undefined;
    try {
      memory = mappings.take(m.memory);
      const callFd = m.queue.callFd;
      const plane = device.startQueue({
        memory,
        queue: m.queue,
        features: m.features,
        signal: () => {
          counters[WorkerCounter.calls]!++;
          eventfdSignal(callFd);
        },
      });
      // Whatever the driver made available before the start is taken at once.
      const r: Running = { plane, table: m.memory, kickFd: m.queue.kickFd, more: true };
      epollAdd(epfd, r.kickFd, index + 1);
      running.set(index, r);
    } catch (e) {
      if (memory) mappings.give(m.memory);
      fail(index, `start: ${describeError(e)}`);
    }
  };

  const stop = (index: number): void => {
    const plane = running.get(index)?.plane;
    let state;
    try {
      state = plane?.stop();
    } catch (e) {
      failDevice(`queue ${index} stop: ${describeError(e)}`);
    }
    release(index);
    reply({ type: 'stopped', index, state });
  };

  /** Handles the control messages; false once told to exit. */
  const control = (): boolean => {
    eventfdDrain(controlFd);
    for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
      const msg = m.message as ToWorker;
      if (msg.type === 'start') start(msg);
      else if (msg.type === 'stop') stop(msg.index);
      else if (msg.type === 'reset') device.reset();
      else {
        for (const index of [...running.keys()]) stop(index);
        device.close();
        port.close();
        closeFd(epfd);
        return false;
      }
    }
    return true;
  };

  for (;;) {
    let busy = false;
    for (const r of running.values()) busy ||= r.more;
    const n = epollWait(epfd, events, busy ? 0 : -1);
    for (let i = 0; i < n; i++) {
      const token = Number(events.readBigUInt64LE(i * EPOLL_EVENT_SIZE + 4));
      if (token === CONTROL) {
        if (!control()) return;
        continue;
      }
      const backend = backendFds.get(token);
      if (backend) {
        try {
          backend.handler();
        } catch (e) {
          failDevice(describeError(e));
        }
        continue;
      }
      const r = running.get(token - 1);
      if (!r) continue;
      if (eventfdDrain(r.kickFd)) counters[WorkerCounter.kicks]!++;
      r.more = true;
    }
    for (const [index, r] of running) {
      if (!r.more) continue;
      try {
        r.more = r.plane.process(BUDGET);
      } catch (e) {
        fail(index, describeError(e));
      }
    }
  }
}

main(workerData as DeviceWorkerData);
