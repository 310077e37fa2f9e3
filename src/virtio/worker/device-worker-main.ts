// Body of a device worker thread: one per virtio device. For each queue it is
// given it maps guest RAM from the memfd and makes the queue's data plane; then it
// waits in its own blocking epoll loop on those queues' kick fds and its control
// fd. Each turn of the loop gives every queue with work a budget of chains, so one
// busy queue neither starves the others nor holds up a stop (the control fd is
// looked at between turns); the data planes do their I/O here and signal their call
// fds themselves. Nothing the guest does can end this thread: whatever a data plane
// throws fails that queue, reported to the main thread, and the loop goes on.
import { receiveMessageOnPort, workerData } from 'node:worker_threads';
import { epollAdd, epollCreate, epollDelete, EPOLL_EVENT_SIZE, epollWait, eventfdDrain, eventfdSignal } from '../../host/libc.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { startBlockQueue } from '../block-queue.js';
import { describeError } from '../device.js';
import { WORKER_COUNTERS, WorkerCounter, type DataPlaneContext, type QueueDataPlane } from './data-plane.js';
import type { DataPlaneKind, DeviceWorkerData, FromWorker, ToWorker } from './device-worker.js';

/** Chains per queue per turn of the loop. */
const BUDGET = 64;
/** The control fd's epoll token; queue i's kick fd has token i + 1. */
const CONTROL = 0;
const MAX_EVENTS = 64;

const factories: Record<DataPlaneKind, (init: unknown, ctx: DataPlaneContext) => QueueDataPlane> = {
  block: startBlockQueue,
};

interface Running {
  plane: QueueDataPlane;
  memory: GuestMemory;
  kickFd: number;
  /** Chains may be waiting without a kick (the budget ran out, or the queue just started). */
  more: boolean;
}

function main({ kind, init, controlFd, port, counters: shared }: DeviceWorkerData): void {
  const counters = new Float64Array(shared);
  const deviceCounters = counters.subarray(WORKER_COUNTERS.length);
  const epfd = epollCreate();
  epollAdd(epfd, controlFd, CONTROL);
  const events = Buffer.alloc(MAX_EVENTS * EPOLL_EVENT_SIZE);
  const reply = (m: FromWorker) => port.postMessage(m);
  const running = new Map<number, Running>();

  const release = (index: number): void => {
    const r = running.get(index);
    if (!r) return;
    epollDelete(epfd, r.kickFd);
    r.memory.close();
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
      memory = GuestMemory.map(m.memory);
      const callFd = m.queue.callFd;
      const ctx: DataPlaneContext = {
        memory,
        queue: m.queue,
        features: m.features,
        counters: deviceCounters,
        signal: () => {
          counters[WorkerCounter.calls]!++;
          eventfdSignal(callFd);
        },
      };
      // Whatever the driver made available before the start is taken at once.
      const r: Running = { plane: factories[kind](init, ctx), memory, kickFd: m.queue.kickFd, more: true };
      epollAdd(epfd, r.kickFd, index + 1);
      running.set(index, r);
    } catch (e) {
      memory?.close();
      fail(index, `start: ${describeError(e)}`);
    }
  };

  /** Handles the control messages; false once told to exit. */
  const control = (): boolean => {
    eventfdDrain(controlFd);
    for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
      const msg = m.message as ToWorker;
      if (msg.type === 'start') start(msg);
      else if (msg.type === 'stop') {
        const state = running.get(msg.index)?.plane.state();
        release(msg.index);
        reply({ type: 'stopped', index: msg.index, state });
      } else {
        for (const index of [...running.keys()]) release(index);
        port.close();
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
