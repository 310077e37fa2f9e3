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

export const MailboxState = { RUNNING: 0, PENDING: 1, STOPPED: 2 } as const;
export const AccessKind = { PIO: 1, MMIO: 2 } as const;

/** Int32 slots in the header. */
export const Slot = {
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
  /** the worker's kernel thread id, for kicking it out of KVM_RUN */
  tid: 10,
} as const;

export const HEADER_BYTES = 64;
/** String I/O may move up to a page of data in one exit. */
export const DATA_BYTES = 4096;
/** Exit counters by KVM exit reason, counted by the worker. */
export const EXIT_COUNTERS = 32;

export class Mailbox {
  readonly header: Int32Array;
  readonly data: Uint8Array;
  readonly exits: Float64Array;

  constructor(readonly shared: SharedArrayBuffer = new SharedArrayBuffer(HEADER_BYTES + DATA_BYTES + EXIT_COUNTERS * 8)) {
    this.header = new Int32Array(shared, 0, HEADER_BYTES / 4);
    this.data = new Uint8Array(shared, HEADER_BYTES, DATA_BYTES);
    this.exits = new Float64Array(shared, HEADER_BYTES + DATA_BYTES, EXIT_COUNTERS);
  }
}
