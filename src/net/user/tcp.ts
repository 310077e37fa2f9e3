// One TCP connection between the guest and a host socket, in user-mode
// networking. tsvisor plays the guest's remote peer: it terminates the guest's
// TCP here (sequence numbers, acknowledgements, windows, retransmission) and
// moves only the byte streams to and from a host socket. Guest-initiated
// connections start when the host connect() succeeds (the SYN-ACK waits for it);
// forwarded host ports start with tsvisor's SYN to the guest.
//
// The guest is hostile: every way in (its segments, socket events, timers) is
// guarded so an exception ends this connection only, and what tsvisor holds for
// it is bounded (bytes each way, time without traffic).
import type net from 'node:net';
import { ByteQueue } from './byte-queue.js';

export const TcpFlag = { FIN: 1, SYN: 2, RST: 4, PSH: 8, ACK: 16 } as const;

export interface TcpSegment {
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** Maximum segment size option (SYN only). */
  mss?: number;
  payload: Uint8Array;
}

/** The MSS tsvisor announces: a 1500-byte MTU minus IPv4 and TCP headers. */
export const OWN_MSS = 1460;
/**
 * The guest's MSS when it gives none, and the least tsvisor takes: every IPv4
 * host accepts 576-byte datagrams (RFC 791, RFC 1122 4.2.2.6), so 536-byte
 * segments always fit, and a smaller (or zero) MSS would only multiply the
 * frames sent per byte.
 */
const MIN_GUEST_MSS = 536;
const MAX_WINDOW = 0xffff;
/** RFC 5382's floor for a NAT's idle timeout of a connection being opened or closed. */
const TRANSITORY_IDLE_MS = 240_000;
const RTO_MIN_MS = 250;
const RTO_MAX_MS = 4000;
const MAX_RETRIES = 10;

const seqDiff = (a: number, b: number): number => (a - b) | 0;
const seqAdd = (a: number, n: number): number => (a + n) >>> 0;

export type TcpState = 'connecting' | 'syn-sent' | 'syn-received' | 'established' | 'closed';

export interface TcpCounters {
  tcpOutOfOrder: number;
  tcpRetransmits: number;
  /** Connections reset after their idle time. */
  tcpIdleClosed: number;
  /** Guest segments with data past the window tsvisor advertised (zero-window probes too): the excess is dropped, not acknowledged. */
  tcpWindowDrops: number;
  /** Exceptions caught in a callback; each closed its connection. */
  errors: number;
}

export interface TcpLimits {
  /** Longest time an established connection may pass without a segment or host data. */
  idleMs: number;
  /** Bytes held per direction: guest data not yet taken by the host socket, host data not yet acknowledged by the guest. */
  bufferBytes: number;
}

const mssOf = (seg: TcpSegment): number => Math.min(Math.max(seg.mss ?? MIN_GUEST_MSS, MIN_GUEST_MSS), OWN_MSS);

export class TcpConnection {
  state: TcpState;
  private readonly iss = (Math.random() * 2 ** 32) >>> 0;
  private sndUna: number;
  private sndNxt: number;
  private sndMax: number;
  private rcvNxt = 0;
  private peerWindow = MAX_WINDOW;
  private peerMss = MIN_GUEST_MSS;
  private readonly unacked = new ByteQueue();
  private hostEnded = false;
  private finSeq: number | undefined;
  private finAcked = false;
  private peerFin = false;
  private ackPending = false;
  private timer: NodeJS.Timeout | undefined;
  private rto = RTO_MIN_MS;
  private retries = 0;
  private idle: NodeJS.Timeout | undefined;
  private idleMs = 0;

  /**
   * `emit` sends a segment to the guest; `closed` is called once, when the
   * connection is gone. `guestSyn` is the guest's SYN for a guest-initiated
   * connection (the socket is connecting), absent for a forwarded port.
   */
  constructor(
    private readonly socket: net.Socket,
    private readonly emit: (seg: TcpSegment) => void,
    private readonly closed: () => void,
    private readonly counters: TcpCounters,
    private readonly limits: TcpLimits,
    guestSyn?: TcpSegment,
  ) {
    this.sndUna = this.sndNxt = this.sndMax = this.iss;
    socket.on('data', (data: Buffer) => this.guarded(() => this.hostData(data)));
    socket.on('end', () =>
      this.guarded(() => {
        this.hostEnded = true;
        this.touch();
        this.transmit();
      }),
    );
    socket.on('error', () => this.guarded(() => this.abort()));
    // A close after the host's orderly end is normal: what it sent still goes out.
    socket.on('close', () => this.guarded(() => !this.hostEnded && this.abort()));
    // The window reopens once the host took what was buffered: tell the guest.
    socket.on('drain', () => this.guarded(() => this.sendAck()));
    if (guestSyn) {
      this.state = 'connecting';
      this.rcvNxt = seqAdd(guestSyn.seq, 1);
      this.peerMss = mssOf(guestSyn);
      this.peerWindow = guestSyn.window;
      socket.pause();
      socket.once('connect', () =>
        this.guarded(() => {
          this.state = 'syn-received';
          this.sendSyn();
        }),
      );
    } else {
      this.state = 'syn-sent';
      socket.pause();
      this.sendSyn();
    }
    this.touch();
  }

  /** Guest data buffered for the host socket, and host data not yet acknowledged by the guest. */
  get buffered(): { toHost: number; toGuest: number } {
    return { toHost: this.socket.writableLength, toGuest: this.unacked.length };
  }

  /** A segment from the guest for this connection. */
  input(seg: TcpSegment): void {
    this.guarded(() => {
      this.segment(seg);
      this.touch();
    });
  }

  private segment(seg: TcpSegment): void {
    if (this.state === 'closed') return;
    if (seg.flags & TcpFlag.RST) return this.close(true);
    if (seg.flags & TcpFlag.SYN) return this.guestSyn(seg);
    if (this.state === 'connecting' || this.state === 'syn-sent') return;
    if (!(seg.flags & TcpFlag.ACK)) return;
    this.peerWindow = seg.window;
    this.acknowledged(seg.ack);
    this.guestData(seg);
    this.transmit();
    if (this.peerFin && this.finAcked) this.close(false);
  }

  private guestSyn(seg: TcpSegment): void {
    if (this.state === 'syn-received') return this.sendSyn(); // our SYN-ACK was lost
    if (this.state === 'syn-sent' && seg.flags & TcpFlag.ACK && seg.ack === seqAdd(this.iss, 1)) {
      this.rcvNxt = seqAdd(seg.seq, 1);
      this.peerMss = mssOf(seg);
      this.peerWindow = seg.window;
      this.established();
      this.sendAck();
    }
  }

  private established(): void {
    this.state = 'established';
    this.sndUna = this.sndNxt = this.sndMax = seqAdd(this.iss, 1);
    this.stopTimer();
    this.socket.resume();
  }

  private acknowledged(ack: number): void {
    if (this.state === 'syn-received') {
      if (ack !== seqAdd(this.iss, 1)) return;
      this.established();
    }
    const advance = seqDiff(ack, this.sndUna);
    if (advance <= 0 || seqDiff(ack, this.sndMax) > 0) return;
    const finNowAcked = this.finSeq !== undefined && ack === seqAdd(this.finSeq, 1);
    this.unacked.drop(finNowAcked ? advance - 1 : advance);
    if (finNowAcked) this.finAcked = true;
    this.sndUna = ack;
    if (seqDiff(this.sndNxt, this.sndUna) < 0) this.sndNxt = this.sndUna;
    this.rto = RTO_MIN_MS;
    this.retries = 0;
    this.stopTimer();
    if (this.socket.isPaused() && this.unacked.length < this.limits.bufferBytes / 4 && this.state === 'established') this.socket.resume();
  }

  private guestData(seg: TcpSegment): void {
    const len = seg.payload.length;
    const fin = (seg.flags & TcpFlag.FIN) !== 0;
    if (len === 0 && !fin) return;
    const skip = seqDiff(this.rcvNxt, seg.seq);
    if (skip < 0) {
      // A hole: the guest resends from rcvNxt once it sees the duplicate ACK.
      this.counters.tcpOutOfOrder++;
      return this.sendAck();
    }
    if (skip < len && !this.peerFin) {
      const fresh = seg.payload.subarray(skip, skip + this.rcvWindow());
      if (fresh.length) this.socket.write(Buffer.from(fresh));
      this.rcvNxt = seqAdd(this.rcvNxt, fresh.length);
      if (fresh.length < len - skip) {
        // Past the window: not taken, so the guest sends it again once the window opens.
        this.counters.tcpWindowDrops++;
        return this.sendAck();
      }
    }
    if (fin && seqAdd(seg.seq, len) === this.rcvNxt && !this.peerFin) {
      this.peerFin = true;
      this.rcvNxt = seqAdd(this.rcvNxt, 1);
      this.socket.end();
      return this.sendAck();
    }
    this.ackPending = true;
  }

  /** Sends the ACK the guest is owed, if any (called once per batch of guest packets). */
  flushAck(): void {
    this.guarded(() => this.ackPending && this.sendAck());
  }

  private hostData(data: Buffer): void {
    this.touch();
    this.unacked.push(data);
    if (this.unacked.length > this.limits.bufferBytes) this.socket.pause();
    this.transmit();
  }

  /** Sends what the guest's window allows, then the FIN once the host side ended and all data went out. */
  private transmit(probe = false): void {
    if (this.state !== 'established') return;
    for (;;) {
      const offset = seqDiff(this.sndNxt, this.sndUna);
      const unsent = this.unacked.length - offset;
      if (unsent <= 0) break;
      let room = this.peerWindow - offset;
      if (room <= 0) {
        if (!probe || offset > 0) break;
        room = 1; // zero-window probe
      }
      const payload = this.unacked.peek(offset, Math.min(this.peerMss, unsent, room));
      if (payload.length === 0) break; // never loop without progress
      this.send(TcpFlag.ACK | (payload.length === unsent ? TcpFlag.PSH : 0), payload);
      this.sndNxt = seqAdd(this.sndNxt, payload.length);
      probe = false;
    }
    if (this.hostEnded && this.finSeq === undefined && seqDiff(this.sndNxt, this.sndUna) === this.unacked.length) this.finSeq = this.sndNxt;
    if (this.finSeq !== undefined && this.sndNxt === this.finSeq && !this.finAcked) {
      this.send(TcpFlag.ACK | TcpFlag.FIN, new Uint8Array(0));
      this.sndNxt = seqAdd(this.finSeq, 1);
    }
    if (seqDiff(this.sndNxt, this.sndMax) > 0) this.sndMax = this.sndNxt;
    if (seqDiff(this.sndMax, this.sndUna) > 0 || this.unacked.length > 0) this.startTimer();
    if (this.peerFin && this.finAcked) this.close(false);
  }

  private send(flags: number, payload: Uint8Array): void {
    this.ackPending = false;
    this.emit({ seq: this.sndNxt, ack: this.rcvNxt, flags, window: this.rcvWindow(), payload });
  }

  private sendAck(): void {
    if (this.state !== 'established') return;
    this.ackPending = false;
    this.emit({ seq: this.sndNxt, ack: this.rcvNxt, flags: TcpFlag.ACK, window: this.rcvWindow(), payload: new Uint8Array(0) });
  }

  private sendSyn(): void {
    const flags = this.state === 'syn-sent' ? TcpFlag.SYN : TcpFlag.SYN | TcpFlag.ACK;
    this.emit({ seq: this.iss, ack: this.state === 'syn-sent' ? 0 : this.rcvNxt, flags, window: MAX_WINDOW, mss: OWN_MSS, payload: new Uint8Array(0) });
    this.startTimer();
  }

  /**
   * The window the guest may fill: what is left of the buffer toward the host.
   * Taking data shrinks it by exactly what was taken, so its right edge never
   * moves back.
   */
  private rcvWindow(): number {
    return Math.max(0, Math.min(MAX_WINDOW, this.limits.bufferBytes - this.socket.writableLength));
  }

  private startTimer(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => this.guarded(() => this.timeout()), this.rto).unref();
  }

  /** Traffic: the idle clock starts again, at the limit for the connection's state (shorter while opening or closing). */
  private touch(): void {
    if (this.state === 'closed') return;
    const open = this.state === 'established' && !this.peerFin && !this.hostEnded;
    const ms = open ? this.limits.idleMs : Math.min(this.limits.idleMs, TRANSITORY_IDLE_MS);
    if (this.idle && ms === this.idleMs) {
      this.idle.refresh();
      return;
    }
    clearTimeout(this.idle);
    this.idleMs = ms;
    this.idle = setTimeout(
      () =>
        this.guarded(() => {
          this.counters.tcpIdleClosed++;
          this.abort();
        }),
      ms,
    ).unref();
  }

  /** Runs one way in (a guest segment, a socket event, a timer): an exception there closes this connection only. */
  private guarded(fn: () => unknown): void {
    try {
      fn();
    } catch {
      this.counters.errors++;
      this.close(true);
    }
  }

  private stopTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Nothing acknowledged in time: go back to the first unacknowledged byte and send again. */
  private timeout(): void {
    this.timer = undefined;
    if (++this.retries > MAX_RETRIES) return this.abort();
    this.rto = Math.min(this.rto * 2, RTO_MAX_MS);
    this.counters.tcpRetransmits++;
    if (this.state === 'syn-sent' || this.state === 'syn-received') return this.sendSyn();
    this.sndNxt = this.sndUna;
    this.transmit(true);
  }

  /** Resets the guest's side and drops the host socket. */
  abort(): void {
    if (this.state === 'closed') return;
    this.emit({ seq: this.sndNxt, ack: this.rcvNxt, flags: TcpFlag.RST | TcpFlag.ACK, window: 0, payload: new Uint8Array(0) });
    this.close(true);
  }

  private close(destroy: boolean): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.stopTimer();
    clearTimeout(this.idle);
    if (destroy) this.socket.destroy();
    else this.socket.end();
    this.closed();
  }
}
