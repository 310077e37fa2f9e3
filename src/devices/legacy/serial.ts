// A 16550A UART: the register file a PC's ttyS driver programs, a 16-byte receive
// FIFO, and an interrupt line that follows the IIR's "interrupt pending" state.
//
// Host input waits in `pending` and moves into the FIFO only while the guest has
// receive interrupts enabled, and a FIFO reset hands unread bytes back to it:
// bytes typed (or piped) before the guest's driver is ready are never lost.
import type { BusDevice, IrqLine } from '../bus.js';

const RBR_THR = 0; // DLL when DLAB
const IER = 1; // DLM when DLAB
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

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

export class Serial implements BusDevice {
  private ier = 0;
  private lcr = 0x03;
  private mcr = 0x08;
  private lsrErrors = 0;
  private scr = 0;
  private dll = 0x0c;
  private dlm = 0;
  private fifoEnabled = false;
  private threPending = true;
  private rx: number[] = [];
  private pending: number[] = [];
  private pendingHead = 0;
  private lineLevel = false;
  readonly counters = { txBytes: 0, rxBytes: 0, rxDropped: 0, interrupts: 0 };

  constructor(
    readonly name: string,
    private readonly irq: IrqLine,
    private readonly output: (bytes: Uint8Array) => void,
  ) {}

  /** Queues host bytes for the guest to read. */
  enqueueInput(bytes: Uint8Array): void {
    for (const b of bytes) {
      if (this.pending.length - this.pendingHead >= PENDING_LIMIT) {
        this.counters.rxDropped++;
        continue;
      }
      this.pending.push(b);
    }
    this.refill();
    this.update();
  }

  private refill(): void {
    if (!(this.ier & IER_RDA)) return;
    const room = (this.fifoEnabled ? FIFO_SIZE : 1) - this.rx.length;
    for (let i = 0; i < room && this.pendingHead < this.pending.length; i++) {
      this.rx.push(this.pending[this.pendingHead++]!);
    }
    if (this.pendingHead > 4096 && this.pendingHead * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.pendingHead);
      this.pendingHead = 0;
    }
  }

  /**
   * A FIFO reset discards nothing the host sent: bytes the guest never read go back
   * to the front of `pending`. Linux resets the FIFO while probing and opening the
   * port, after its probe has briefly enabled receive interrupts.
   */
  private clearRx(): void {
    if (!(this.mcr & MCR_LOOP) && this.rx.length > 0) {
      this.pending = [...this.rx, ...this.pending.slice(this.pendingHead)];
      this.pendingHead = 0;
    }
    this.rx = [];
  }

  private interruptId(): number {
    if (this.ier & IER_RDA && this.rx.length > 0) return IIR_RDA;
    if (this.ier & IER_THRE && this.threPending) return IIR_THRE;
    return IIR_NONE;
  }

  private update(): void {
    const level = this.interruptId() !== IIR_NONE;
    if (level === this.lineLevel) return;
    this.lineLevel = level;
    if (level) this.counters.interrupts++;
    this.irq.set(level);
  }

  private transmit(byte: number): void {
    this.counters.txBytes++;
    if (this.mcr & MCR_LOOP) {
      if (this.rx.length < FIFO_SIZE) this.rx.push(byte);
      else this.lsrErrors |= LSR_OE;
    } else {
      this.output(Uint8Array.of(byte));
    }
    // The byte leaves at once: THR is empty again and may interrupt.
    this.threPending = true;
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.readRegister(offset);
    this.update();
  }

  private readRegister(offset: number): number {
    switch (offset) {
      case RBR_THR: {
        if (this.lcr & LCR_DLAB) return this.dll;
        const b = this.rx.shift();
        if (b === undefined) return 0;
        this.counters.rxBytes++;
        this.refill();
        return b;
      }
      case IER:
        return this.lcr & LCR_DLAB ? this.dlm : this.ier;
      case IIR_FCR: {
        const id = this.interruptId();
        // Reading IIR while it reports THRE acknowledges that interrupt.
        if (id === IIR_THRE) this.threPending = false;
        return id | (this.fifoEnabled ? IIR_FIFO_ENABLED : 0);
      }
      case LCR:
        return this.lcr;
      case MCR:
        return this.mcr;
      case LSR: {
        const lsr = (this.rx.length > 0 ? LSR_DR : 0) | LSR_THRE | LSR_TEMT | this.lsrErrors;
        this.lsrErrors = 0;
        return lsr;
      }
      case MSR:
        if (this.mcr & MCR_LOOP) {
          // Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
          return ((this.mcr & 0x01) << 5) | ((this.mcr & 0x02) << 3) | ((this.mcr & 0x04) << 4) | ((this.mcr & 0x08) << 4);
        }
        return MSR_DCD | MSR_DSR | MSR_CTS;
      case SCR:
        return this.scr;
      default:
        return 0xff;
    }
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0]!;
    switch (offset) {
      case RBR_THR:
        if (this.lcr & LCR_DLAB) this.dll = v;
        else this.transmit(v);
        break;
      case IER:
        if (this.lcr & LCR_DLAB) {
          this.dlm = v;
        } else {
          const enablingThre = !(this.ier & IER_THRE) && v & IER_THRE;
          this.ier = v & (IER_RDA | IER_THRE | IER_RLS | IER_MSI);
          if (enablingThre) this.threPending = true;
          this.refill();
        }
        break;
      case IIR_FCR:
        this.fifoEnabled = (v & FCR_ENABLE) !== 0;
        if (v & FCR_CLEAR_RX) this.clearRx();
        this.refill();
        break;
      case LCR:
        this.lcr = v;
        break;
      case MCR:
        this.mcr = v & 0x1f;
        break;
      case SCR:
        this.scr = v;
        break;
      default:
        break; // LSR and MSR are read-only
    }
    this.update();
  }
}
