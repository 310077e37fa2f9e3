// The shared memory through which one vCPU thread hands an exit to the main thread.
//
// Protocol (one mailbox per vCPU, a SharedArrayBuffer):
//   worker: KVM_RUN returns with an I/O or MMIO exit -> copies the access into the
//           mailbox, sets state=PENDING, notifies, Atomics.wait()s while PENDING.
//   main:   Atomics.waitAsync() on state wakes it -> runs the device on the bus ->
//           for reads writes the data back -> sets state=RUNNING, notifies.
//   worker: copies read data into kvm_run and re-enters KVM_RUN.
// A terminal exit (shutdown, internal error, ...) sets state=STOPPED instead; the
// worker then ends. `stop` is set by the main thread to ask the worker to finish.
//
// Both sides spin on the state for up to SPIN_MICROS before they sleep. Exits come
// in bursts (a console line, a device probe), and waking a sleeping thread costs far
// more than the exit itself, most of all on a nested host where every futex wake is
// an emulated IPI. Measured with `npm run bench` (PIO exit round trip): 35 -> 19 µs
// on this project's PVM machines, 780 -> ~310 µs inside the nested KVM host. A window
// that adapted (halving after a miss) did worse there: each miss costs milliseconds.
// The price is up to SPIN_MICROS of CPU per exit on each side. On one CPU the other
// side cannot run while this one spins, so there is no spinning at all: a nested
// host with one vCPU booted the default guest in 18.5 s under QEMU and printed
// nothing for 60 s under tsvisor while both sides spun.

import { availableParallelism } from 'node:os';

export const MailboxState = { RUNNING: 0, PENDING: 1, STOPPED: 2 } as const;
export const AccessKind = { PIO: 1, MMIO: 2 } as const;

/** The header's Int32 fields, by index. */
export const MailboxField = {
  state: 0,
  stop: 1,
  kind: 2,
  /** port, or MMIO address low 32 bits */
  addrLo: 3,
  addrHi: 4,
  size: 5,
  isWrite: 6,
  count: 7,
  /** on STOPPED: the KVM exit reason (or -1 for an ioctl error) */
  exitReason: 8,
  /** on STOPPED: errno, internal-error suberror, system-event type, ... */
  detail: 9,
  /** the worker's kernel thread id, for signalling it out of KVM_RUN */
  tid: 10,
  /** errors the worker's own devices threw (each access is then dropped) */
  localErrors: 11,
  /** writes the worker took from KVM's coalesced ring and applied */
  coalesced: 12,
} as const;

export const SPIN_MICROS = availableParallelism() > 1 ? 1000 : 0;

/** Spins until `header[slot]` is no longer `value` or `micros` pass; true if it changed. */
export function spinWhile(header: Int32Array, slot: number, value: number, micros: number): boolean {
  const deadline = performance.now() + micros / 1000;
  for (let i = 0; ; i++) {
    if (Atomics.load(header, slot) !== value) return true;
    if ((i & 63) === 63 && performance.now() > deadline) return false;
  }
}

export const HEADER_BYTES = 64;
/** String I/O may move up to a page of data in one exit. */
export const DATA_BYTES = 4096;
/** Exit counters by KVM exit reason, counted by the worker. */
export const EXIT_COUNTERS = 32;
/** Devices a vCPU thread answers itself, each with a read and a write counter. */
export const MAX_LOCAL_DEVICES = 4;

export class Mailbox {
  readonly header: Int32Array;
  readonly data: Uint8Array;
  readonly exits: Float64Array;
  /** Reads and writes of the worker's own devices: [2i] reads, [2i+1] writes of device i. */
  readonly localAccesses: Float64Array;

  constructor(readonly shared: SharedArrayBuffer = new SharedArrayBuffer(HEADER_BYTES + DATA_BYTES + (EXIT_COUNTERS + 2 * MAX_LOCAL_DEVICES) * 8)) {
    this.header = new Int32Array(shared, 0, HEADER_BYTES / 4);
    this.data = new Uint8Array(shared, HEADER_BYTES, DATA_BYTES);
    this.exits = new Float64Array(shared, HEADER_BYTES + DATA_BYTES, EXIT_COUNTERS);
    this.localAccesses = new Float64Array(shared, HEADER_BYTES + DATA_BYTES + EXIT_COUNTERS * 8, 2 * MAX_LOCAL_DEVICES);
  }
}
