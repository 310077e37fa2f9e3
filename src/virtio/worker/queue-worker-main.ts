// Body of a device worker thread: maps guest RAM from the memfd, then waits in its
// own blocking epoll loop on the queue's kick fd and its control fd. A kick runs
// the data plane for a budget of chains (the control fd is looked at between
// budgets, so a stop is never held up by a busy queue); the data plane does its
// I/O here and signals the call fd itself. Nothing the guest does can end this
// thread: whatever the data plane throws fails the queue, reported to the main
// thread, and the loop waits for the next start.
import { receiveMessageOnPort, workerData } from 'node:worker_threads';
import { epollAdd, epollCreate, epollDelete, EPOLL_EVENT_SIZE, epollWait, eventfdDrain, eventfdSignal } from '../../host/libc.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import { startBlockQueue } from '../block-queue.js';
import { describeError } from '../device.js';
import { WorkerCounter, type DataPlaneContext, type QueueDataPlane } from './data-plane.js';
import type { DataPlaneKind, FromWorker, QueueWorkerData, ToWorker } from './queue-worker.js';

/** Chains per turn of the loop. */
const BUDGET = 64;
const CONTROL = 0;
const KICK = 1;

const factories: Record<DataPlaneKind, (init: unknown, ctx: DataPlaneContext) => QueueDataPlane> = {
  block: startBlockQueue,
};

interface Running {
  plane: QueueDataPlane;
  memory: GuestMemory;
  kickFd: number;
}

function main({ kind, init, controlFd, port, counters: shared }: QueueWorkerData): void {
  const counters = new Float64Array(shared);
  const deviceCounters = counters.subarray(2);
  const epfd = epollCreate();
  epollAdd(epfd, controlFd, CONTROL);
  const events = Buffer.alloc(4 * EPOLL_EVENT_SIZE);
  const reply = (m: FromWorker) => port.postMessage(m);
  let running: Running | undefined;
  let more = false;

  const release = (): void => {
    if (!running) return;
    epollDelete(epfd, running.kickFd);
    running.memory.close();
    running = undefined;
    more = false;
  };

  const fail = (reason: string): void => {
    release();
    reply({ type: 'failed', reason });
  };

  const start = (m: Extract<ToWorker, { type: 'start' }>): void => {
    release();
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
      running = { plane: factories[kind](init, ctx), memory, kickFd: m.queue.kickFd };
      epollAdd(epfd, m.queue.kickFd, KICK);
      // Whatever the driver made available before the start is taken now.
      more = true;
    } catch (e) {
      if (!running) memory?.close();
      fail(`start: ${describeError(e)}`);
    }
  };

  for (;;) {
    const n = epollWait(epfd, events, more ? 0 : -1);
    let control = false;
    let kicked = false;
    for (let i = 0; i < n; i++) {
      if (Number(events.readBigUInt64LE(i * EPOLL_EVENT_SIZE + 4)) === CONTROL) control = true;
      else kicked = true;
    }
    if (control) {
      eventfdDrain(controlFd);
      for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
        const msg = m.message as ToWorker;
        if (msg.type === 'start') start(msg);
        else if (msg.type === 'stop') {
          const state = running?.plane.state();
          release();
          reply({ type: 'stopped', state });
        } else {
          release();
          port.close();
          return;
        }
      }
    }
    if (!running) continue;
    if (kicked && eventfdDrain(running.kickFd)) counters[WorkerCounter.kicks]!++;
    if (!kicked && !more) continue;
    try {
      more = running.plane.process(BUDGET);
    } catch (e) {
      fail(describeError(e));
    }
  }
}

main(workerData as QueueWorkerData);
