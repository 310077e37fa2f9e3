// A one-way ring of packets between two threads, in a SharedArrayBuffer: one
// thread pushes, the other pops, neither waits for the other. Each side sleeps in
// its own epoll loop on an eventfd; the ring signals the consumer's fd when, after
// a push is published, the consumer's tail is at the push's start (it had caught
// up, and pops until empty before it sleeps: each side stores its index before
// reading the other's, so one of them sees the other), and the producer's fd when
// a pop frees room after a push was refused. Records are a length, a queue number and the packet, 8-byte aligned;
// a record that does not fit before the end is written at the start after a wrap mark.
import { eventfdSignal } from '../host/libc.js';

const HEAD = 0;
const TAIL = 1;
/** Set by a producer that found the ring full: the consumer signals it once there is room. */
const PRODUCER_WAITING = 2;
const HEADER_BYTES = 16;
const RECORD_HEADER = 8;
const WRAP = 0xffffffff;

const align8 = (n: number) => (n + 7) & ~7;

/** The ring as plain data: its memory and the two eventfds. */
export interface FrameRingShared {
  buffer: SharedArrayBuffer;
  /** Signalled when packets arrive in an empty ring. */
  consumerFd: number;
  /** Signalled when room appears after a refused push. */
  producerFd: number;
}

export function frameRingShared(bytes: number, consumerFd: number, producerFd: number): FrameRingShared {
  if (bytes % 8 || bytes < 1024) throw new RangeError(`frame ring of ${bytes} bytes`);
  return { buffer: new SharedArrayBuffer(HEADER_BYTES + bytes), consumerFd, producerFd };
}

export interface Frame {
  queue: number;
  packet: Uint8Array;
}

export class FrameRing {
  private readonly header: Int32Array;
  private readonly data: Uint8Array;
  private readonly view: DataView;
  private readonly size: number;
  /** The largest packet the ring can ever hold. */
  readonly maxPacket: number;

  constructor(private readonly shared: FrameRingShared) {
    this.header = new Int32Array(shared.buffer, 0, HEADER_BYTES / 4);
    this.data = new Uint8Array(shared.buffer, HEADER_BYTES);
    this.view = new DataView(shared.buffer, HEADER_BYTES);
    this.size = this.data.length;
    this.maxPacket = this.size / 2 - RECORD_HEADER;
  }

  /** Producer: false when the ring is full (the producer's fd is signalled once there is room). */
  push(queue: number, packet: Uint8Array): boolean {
    if (packet.length > this.maxPacket) throw new RangeError(`a ${packet.length}-byte packet in a ${this.size}-byte ring`);
    if (this.tryPush(queue, packet)) return true;
    Atomics.store(this.header, PRODUCER_WAITING, 1);
    // The consumer may have made room between the failed try and the flag: try once more.
    return this.tryPush(queue, packet);
  }

  private tryPush(queue: number, packet: Uint8Array): boolean {
    const head = Atomics.load(this.header, HEAD);
    const tail = Atomics.load(this.header, TAIL);
    const used = (head - tail + this.size) % this.size;
    // Eight bytes always stay free, so a full ring never looks empty.
    const free = this.size - used - 8;
    const need = RECORD_HEADER + align8(packet.length);
    let at = head;
    if (this.size - head < need) {
      if (free < this.size - head + need) return false;
      this.view.setUint32(head, WRAP, true);
      at = 0;
    } else if (free < need) return false;
    this.view.setUint32(at, packet.length, true);
    this.view.setUint32(at + 4, queue, true);
    this.data.set(packet, at + RECORD_HEADER);
    Atomics.store(this.header, HEAD, (at + need) % this.size);
    // Read after the store: a consumer that caught up with the old head either sees the new one or is woken here.
    if (Atomics.load(this.header, TAIL) === head) eventfdSignal(this.shared.consumerFd);
    return true;
  }

  /** Consumer: the oldest packet (a copy), or undefined when the ring is empty. */
  pop(): Frame | undefined {
    let tail = Atomics.load(this.header, TAIL);
    const head = Atomics.load(this.header, HEAD);
    if (tail === head) return undefined;
    let len = this.view.getUint32(tail, true);
    if (len === WRAP) {
      tail = 0;
      len = this.view.getUint32(0, true);
    }
    if (len > this.maxPacket) throw new Error(`frame ring corrupt: a ${len}-byte record`);
    const queue = this.view.getUint32(tail + 4, true);
    const packet = this.data.slice(tail + RECORD_HEADER, tail + RECORD_HEADER + len);
    Atomics.store(this.header, TAIL, (tail + RECORD_HEADER + align8(len)) % this.size);
    if (Atomics.exchange(this.header, PRODUCER_WAITING, 0)) eventfdSignal(this.shared.producerFd);
    return { queue, packet };
  }
}
