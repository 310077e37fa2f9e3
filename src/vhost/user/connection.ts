// One vhost-user connection's byte stream, cut into messages. Reads ask for
// exactly the rest of the current header or payload, so one read never spans two
// messages and the fds a read brings belong to the message being read. A peer
// gets at most MAX_FDS fds and MAX_PAYLOAD bytes into a message; anything past
// that ends the connection, and every fd received is either handed on with its
// message or closed.
import { closeFd } from '../../host/libc.js';
import { recvWithFds, sendWithFds, waitReadable } from '../../host/unix-socket.js';
import { decodeHeader, encode, HEADER_SIZE, MAX_FDS, ProtocolError, requestName, type Header, type Message } from './protocol.js';

export class MessageReader {
  private readonly header = new Uint8Array(HEADER_SIZE);
  private got = 0;
  private current: Header | undefined;
  private payload = new Uint8Array(0);
  private fds: number[] = [];

  constructor(readonly fd: number) {}

  /**
   * Reads what is waiting without blocking: the messages it completed, or
   * 'closed' when the peer hung up. Throws ProtocolError on a message no peer may
   * send (its fds are closed first).
   */
  read(): Message[] | 'closed' {
    const done: Message[] = [];
    try {
      for (;;) {
        const buf = this.current ? this.payload.subarray(this.got) : this.header.subarray(this.got);
        if (buf.length > 0) {
          const r = recvWithFds(this.fd, buf, MAX_FDS, true);
          if (!r) return done;
          this.fds.push(...r.fds);
          if (this.fds.length > MAX_FDS) throw new ProtocolError(`${this.fds.length} fds in one message (at most ${MAX_FDS})`);
          if (r.bytes === 0) {
            this.drop();
            return done.length ? done : 'closed';
          }
          this.got += r.bytes;
          if (this.got < (this.current ? this.payload.length : HEADER_SIZE)) continue;
        }
        if (!this.current) {
          this.current = decodeHeader(this.header);
          this.payload = new Uint8Array(this.current.size);
          this.got = 0;
          if (this.current.size > 0) continue;
        }
        done.push({ ...this.current, payload: this.payload, fds: this.fds });
        this.current = undefined;
        this.got = 0;
        this.fds = [];
      }
    } catch (e) {
      for (const m of done) closeAll(m.fds);
      this.drop();
      throw e;
    }
  }

  /** Blocks up to `timeoutMs` for one whole message (the front-end's wait for a reply). */
  readOne(timeoutMs: number, what: string): Message {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0 || !waitReadable(this.fd, left)) throw new ProtocolError(`no reply to ${what} within ${timeoutMs / 1000} s`);
      const r = this.read();
      if (r === 'closed') throw new ProtocolError(`the peer hung up while tsvisor waited for the reply to ${what}`);
      const [m, ...extra] = r;
      if (extra.length) {
        for (const x of r) closeAll(x.fds);
        throw new ProtocolError(`unasked-for ${requestName(extra[0]!.request)} after the reply to ${what}`);
      }
      if (m) return m;
    }
  }

  /** Forgets a half-read message and closes the fds it brought (the owner calls it when it ends the connection). */
  drop(): void {
    closeAll(this.fds);
    this.fds = [];
    this.current = undefined;
    this.got = 0;
  }
}

export function sendMessage(fd: number, request: number, flags: number, payload?: Uint8Array, fds?: readonly number[]): void {
  sendWithFds(fd, encode(request, flags, payload), fds);
}

export function closeAll(fds: readonly number[]): void {
  for (const fd of fds) closeFd(fd);
}
