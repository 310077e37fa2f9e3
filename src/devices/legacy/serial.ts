// A 16550A UART: the register file a PC's ttyS driver programs, a 16-byte receive
// FIFO, and an interrupt line that follows the IIR's "interrupt pending" state.
//
// Its whole state lives in one SharedArrayBuffer behind a lock, so every vCPU
// thread answers the guest's UART accesses itself (a kernel prints each console
// byte with an LSR read and a THR write: two exits that would otherwise each wait
// for the main thread). `new Serial()` makes the state and is the owner: host input
// enters through it and transmitted bytes leave through its output function.
// `Serial.attach()` gives a vCPU thread its own view; bytes it transmits wait in a
// ring that the owner's pump drains.
//
// Host input waits in a ring and moves into the FIFO only while the guest has
// receive interrupts enabled, and a FIFO reset hands unread bytes back to it:
// bytes typed (or piped) before the guest's driver is ready are never lost.
import type { BusDevice, IrqLine } from '../bus.js';

const Register = { RBR_THR: 0, IER: 1, IIR_FCR: 2, LCR: 3, MCR: 4, LSR: 5, MSR: 6, SCR: 7 } as const;

const IER_RDA = 0x01;
const IER_THRE = 0x02;
const IER_RLS = 0x04;
const IER_MSI = 0x08;

const IIR_NONE = 0x01;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const IIR_FIFO_ENABLED = 0xc0;

const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;

const LCR_DLAB = 0x80;
const MCR_LOOP = 0x10;

const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;

const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_DCD = 0x80;

export const FIFO_SIZE = 16;
/** Host input held while the guest is not reading; past this, input is dropped and counted. */
export const PENDING_LIMIT = 1 << 20;
/** Transmitted bytes a vCPU thread may queue before it waits for the owner to drain them. */
const TX_RING = 1 << 16;

/** Int32 slots of the shared state. */
const StateSlot = {
  lock: 0,
  ier: 1,
  lcr: 2,
  mcr: 3,
  lsrErrors: 4,
  scr: 5,
  dll: 6,
  dlm: 7,
  fifoEnabled: 8,
  threPending: 9,
  lineLevel: 10,
  /** Host input: the ring's first byte, how many it holds, and how many of those are in the FIFO. */
  inHead: 11,
  inCount: 12,
  rxCount: 13,
  /** Loopback bytes (MCR.LOOP wires THR to RBR, away from host input). */
  loopHead: 14,
  loopCount: 15,
  /** Transmit ring positions, free-running: the owner advances txHead, transmitters txTail. */
  txHead: 16,
  txTail: 17,
  /** Set while the owner's pump sleeps: a transmitter must wake it. */
  txWaiting: 18,
  closed: 19,
} as const;
const SLOTS = 20;
/** Float64 counters after the slots, by index. */
const Counter = { txBytes: 0, rxBytes: 1, rxDropped: 2, interrupts: 3 } as const;
type CounterName = keyof typeof Counter;
const COUNTER_NAMES = Object.keys(Counter) as CounterName[];

const LAYOUT = (() => {
  const counters = SLOTS * 4;
  const input = counters + COUNTER_NAMES.length * 8;
  const loop = input + PENDING_LIMIT;
  const tx = loop + FIFO_SIZE;
  return { counters, input, loop, tx, bytes: tx + TX_RING };
})();

/** How long a transmitter waits for room before it looks again (the owner may have closed). */
const WAIT_MS = 50;

export class Serial implements BusDevice {
  readonly shared: SharedArrayBuffer;
  private readonly s: Int32Array;
  private readonly count: Float64Array;
  private readonly input: Uint8Array;
  private readonly loop: Uint8Array;
  private readonly tx: Uint8Array;

  /**
   * The owner makes the state (transmitted bytes go to `output`); a view over an
   * existing state (`shared`) comes from attach().
   */
  constructor(
    readonly name: string,
    private readonly irq: IrqLine,
    private readonly output: ((bytes: Uint8Array) => void) | undefined,
    shared?: SharedArrayBuffer,
  ) {
    this.shared = shared ?? new SharedArrayBuffer(LAYOUT.bytes);
    if (this.shared.byteLength !== LAYOUT.bytes) throw new Error(`serial state must be ${LAYOUT.bytes} bytes`);
    this.s = new Int32Array(this.shared, 0, SLOTS);
    this.count = new Float64Array(this.shared, LAYOUT.counters, COUNTER_NAMES.length);
    this.input = new Uint8Array(this.shared, LAYOUT.input, PENDING_LIMIT);
    this.loop = new Uint8Array(this.shared, LAYOUT.loop, FIFO_SIZE);
    this.tx = new Uint8Array(this.shared, LAYOUT.tx, TX_RING);
    if (!shared) {
      this.s[StateSlot.lcr] = 0x03;
      this.s[StateSlot.mcr] = 0x08;
      this.s[StateSlot.dll] = 0x0c;
      this.s[StateSlot.threPending] = 1;
    }
  }

  /** Another thread's view of an owner's state (`owner.shared`); it raises the same line through `irq`. */
  static attach(name: string, shared: SharedArrayBuffer, irq: IrqLine): Serial {
    return new Serial(name, irq, undefined, shared);
  }

  get counters(): Record<CounterName, number> {
    return Object.fromEntries(COUNTER_NAMES.map((k) => [k, this.count[Counter[k]]!])) as Record<CounterName, number>;
  }

  private bump(name: CounterName, n = 1): void {
    this.count[Counter[name]]! += n;
  }

  /** Runs `body` holding the state's lock. Every critical section is a few dozen operations. */
  private locked<T>(body: () => T): T {
    while (Atomics.compareExchange(this.s, StateSlot.lock, 0, 1) !== 0) Atomics.wait(this.s, StateSlot.lock, 1, 1);
    try {
      return body();
    } finally {
      Atomics.store(this.s, StateSlot.lock, 0);
      Atomics.notify(this.s, StateSlot.lock, 1);
    }
  }

  /** Queues host bytes for the guest to read. */
  enqueueInput(bytes: Uint8Array): void {
    this.locked(() => {
      const s = this.s;
      for (const b of bytes) {
        if (s[StateSlot.inCount]! >= PENDING_LIMIT) {
          this.bump('rxDropped');
          continue;
        }
        this.input[(s[StateSlot.inHead]! + s[StateSlot.inCount]!) % PENDING_LIMIT] = b;
        s[StateSlot.inCount]!++;
      }
      this.refill();
      this.update();
    });
  }

  /** Moves waiting host input into the FIFO while the guest takes receive interrupts. */
  private refill(): void {
    const s = this.s;
    if (!(s[StateSlot.ier]! & IER_RDA)) return;
    const capacity = s[StateSlot.fifoEnabled] ? FIFO_SIZE : 1;
    s[StateSlot.rxCount] = Math.max(s[StateSlot.rxCount]!, Math.min(capacity, s[StateSlot.inCount]!));
  }

  /**
   * A FIFO reset discards nothing the host sent: the bytes in it stay at the front
   * of the input. Linux resets the FIFO while probing and opening the port, after
   * its probe has briefly enabled receive interrupts.
   */
  private clearRx(): void {
    if (this.s[StateSlot.mcr]! & MCR_LOOP) this.s[StateSlot.loopCount] = 0;
    else this.s[StateSlot.rxCount] = 0;
  }

  private rxReady(): boolean {
    return (this.s[StateSlot.mcr]! & MCR_LOOP ? this.s[StateSlot.loopCount]! : this.s[StateSlot.rxCount]!) > 0;
  }

  private interruptId(): number {
    const ier = this.s[StateSlot.ier]!;
    if (ier & IER_RDA && this.rxReady()) return IIR_RDA;
    if (ier & IER_THRE && this.s[StateSlot.threPending]) return IIR_THRE;
    return IIR_NONE;
  }

  private update(): void {
    const level = this.interruptId() !== IIR_NONE;
    if (level === (this.s[StateSlot.lineLevel] === 1)) return;
    this.s[StateSlot.lineLevel] = level ? 1 : 0;
    if (level) this.bump('interrupts');
    // Under the lock, so the line's last level is the state's, whichever thread sets it.
    this.irq.set(level);
  }

  /** Takes the next received byte, or undefined. */
  private receive(): number | undefined {
    const s = this.s;
    if (s[StateSlot.mcr]! & MCR_LOOP) {
      if (s[StateSlot.loopCount] === 0) return undefined;
      const b = this.loop[s[StateSlot.loopHead]!]!;
      s[StateSlot.loopHead] = (s[StateSlot.loopHead]! + 1) % FIFO_SIZE;
      s[StateSlot.loopCount]!--;
      return b;
    }
    if (s[StateSlot.rxCount] === 0) return undefined;
    const b = this.input[s[StateSlot.inHead]!]!;
    s[StateSlot.inHead] = (s[StateSlot.inHead]! + 1) % PENDING_LIMIT;
    s[StateSlot.inCount]!--;
    s[StateSlot.rxCount]!--;
    this.bump('rxBytes');
    this.refill();
    return b;
  }

  /** Whether the byte left; false when the transmit ring is full (the caller waits and retries). */
  private transmit(byte: number): boolean {
    const s = this.s;
    if (s[StateSlot.mcr]! & MCR_LOOP) {
      if (s[StateSlot.loopCount]! < FIFO_SIZE) {
        this.loop[(s[StateSlot.loopHead]! + s[StateSlot.loopCount]!) % FIFO_SIZE] = byte;
        s[StateSlot.loopCount]!++;
      } else {
        s[StateSlot.lsrErrors]! |= LSR_OE;
      }
    } else {
      const tail = s[StateSlot.txTail]!;
      if (((tail - Atomics.load(s, StateSlot.txHead)) | 0) >= TX_RING) return false;
      this.tx[tail & (TX_RING - 1)] = byte;
      Atomics.store(s, StateSlot.txTail, (tail + 1) | 0);
      // Clearing the flag also wakes a pump that has not started waiting yet.
      if (Atomics.compareExchange(s, StateSlot.txWaiting, 1, 0) === 1) Atomics.notify(s, StateSlot.txWaiting);
    }
    this.bump('txBytes');
    // The byte leaves at once: THR is empty again and may interrupt.
    s[StateSlot.threPending] = 1;
    return true;
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.locked(() => {
      const v = this.readRegister(offset);
      this.update();
      return v;
    });
  }

  private readRegister(offset: number): number {
    const s = this.s;
    const dlab = (s[StateSlot.lcr]! & LCR_DLAB) !== 0;
    switch (offset) {
      case Register.RBR_THR:
        return dlab ? s[StateSlot.dll]! : (this.receive() ?? 0);
      case Register.IER:
        return dlab ? s[StateSlot.dlm]! : s[StateSlot.ier]!;
      case Register.IIR_FCR: {
        const id = this.interruptId();
        // Reading IIR while it reports THRE acknowledges that interrupt.
        if (id === IIR_THRE) s[StateSlot.threPending] = 0;
        return id | (s[StateSlot.fifoEnabled] ? IIR_FIFO_ENABLED : 0);
      }
      case Register.LCR:
        return s[StateSlot.lcr]!;
      case Register.MCR:
        return s[StateSlot.mcr]!;
      case Register.LSR: {
        const lsr = (this.rxReady() ? LSR_DR : 0) | LSR_THRE | LSR_TEMT | s[StateSlot.lsrErrors]!;
        s[StateSlot.lsrErrors] = 0;
        return lsr;
      }
      case Register.MSR: {
        const mcr = s[StateSlot.mcr]!;
        // Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
        if (mcr & MCR_LOOP) return ((mcr & 0x01) << 5) | ((mcr & 0x02) << 3) | ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4);
        return MSR_DCD | MSR_DSR | MSR_CTS;
      }
      case Register.SCR:
        return s[StateSlot.scr]!;
      default:
        return 0xff;
    }
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0]!;
    // A full transmit ring is a slow owner: the guest waits, as it would for a real line.
    while (!this.locked(() => this.writeRegister(offset, v))) {
      if (this.output) this.drainOutput();
      else if (Atomics.load(this.s, StateSlot.closed)) return;
      else Atomics.wait(this.s, StateSlot.txHead, Atomics.load(this.s, StateSlot.txHead), WAIT_MS);
    }
    if (this.output && offset === Register.RBR_THR) this.drainOutput();
  }

  /** False when a transmitted byte found no room (nothing changed then). */
  private writeRegister(offset: number, v: number): boolean {
    const s = this.s;
    const dlab = (s[StateSlot.lcr]! & LCR_DLAB) !== 0;
    switch (offset) {
      case Register.RBR_THR:
        if (dlab) s[StateSlot.dll] = v;
        else if (!this.transmit(v)) return false;
        break;
      case Register.IER:
        if (dlab) {
          s[StateSlot.dlm] = v;
        } else {
          if (!(s[StateSlot.ier]! & IER_THRE) && v & IER_THRE) s[StateSlot.threPending] = 1;
          s[StateSlot.ier] = v & (IER_RDA | IER_THRE | IER_RLS | IER_MSI);
          this.refill();
        }
        break;
      case Register.IIR_FCR:
        s[StateSlot.fifoEnabled] = v & FCR_ENABLE ? 1 : 0;
        if (v & FCR_CLEAR_RX) this.clearRx();
        this.refill();
        break;
      case Register.LCR:
        s[StateSlot.lcr] = v;
        break;
      case Register.MCR:
        s[StateSlot.mcr] = v & 0x1f;
        break;
      case Register.SCR:
        s[StateSlot.scr] = v;
        break;
      default:
        break; // LSR and MSR are read-only
    }
    this.update();
    return true;
  }

  /** The owner hands every byte transmitted so far (by any thread) to its output. */
  drainOutput(): void {
    const s = this.s;
    const head = Atomics.load(s, StateSlot.txHead);
    const tail = Atomics.load(s, StateSlot.txTail);
    const n = (tail - head) | 0;
    if (n <= 0 || !this.output) return;
    const start = head & (TX_RING - 1);
    const first = Math.min(n, TX_RING - start);
    const bytes = new Uint8Array(n);
    bytes.set(this.tx.subarray(start, start + first));
    bytes.set(this.tx.subarray(0, n - first), first);
    Atomics.store(s, StateSlot.txHead, tail);
    Atomics.notify(s, StateSlot.txHead);
    this.output(bytes);
  }

  /**
   * The owner's pump, while other threads transmit: wakes when bytes arrive and
   * passes them on, until close(). Sleeps without a timer while the line is quiet.
   */
  async pumpOutput(): Promise<void> {
    const s = this.s;
    while (!Atomics.load(s, StateSlot.closed)) {
      this.drainOutput();
      Atomics.store(s, StateSlot.txWaiting, 1);
      const tail = Atomics.load(s, StateSlot.txTail);
      if (tail === Atomics.load(s, StateSlot.txHead)) {
        // Woken by a transmitter (which clears txWaiting first, so no wakeup is lost) or by close().
        const w = Atomics.waitAsync(s, StateSlot.txWaiting, 1);
        if (w.async) await w.value;
      }
      Atomics.store(s, StateSlot.txWaiting, 0);
    }
    this.drainOutput();
  }

  /** Ends the pump (after a last drain) and releases transmitters waiting for room. */
  close(): void {
    Atomics.store(this.s, StateSlot.closed, 1);
    Atomics.store(this.s, StateSlot.txWaiting, 0);
    Atomics.notify(this.s, StateSlot.txWaiting);
    Atomics.notify(this.s, StateSlot.txHead);
  }
}
