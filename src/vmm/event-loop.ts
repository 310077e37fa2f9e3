// The main thread's file-descriptor poller: what still needs the main thread
// (the e1000's and user-mode networking's back-ends, the console, call fds of
// masked MSI-X vectors, kicks of main-thread devices). One epoll set is waited on
// from a libuv pool thread; the handlers run on the main thread.
import { closeFd, EPOLL_EVENT_SIZE, epollAdd, epollCreate, epollDelete, epollWaitAsync, eventfd, eventfdDrain, eventfdSignal } from '../host/libc.js';

const MAX_EVENTS = 64;
/** The token of the eventfd that wakes the waiter when the loop closes. */
const STOP_TOKEN = 0;

export type FdHandler = () => void;

export class EventLoop {
  private readonly epfd = epollCreate();
  private readonly stopFd = eventfd();
  private readonly handlers = new Map<number, { fd: number; handler: FdHandler }>();
  private readonly events = Buffer.alloc(MAX_EVENTS * EPOLL_EVENT_SIZE);
  private nextToken = STOP_TOKEN + 1;
  private waiting = false;
  private closed = false;
  wakeups = 0;

  /** `onError` gets what a handler throws: device code must never take the VMM down. */
  constructor(private readonly onError: (e: unknown) => void) {
    epollAdd(this.epfd, this.stopFd, STOP_TOKEN);
  }

  /** Calls `handler` on the main thread whenever `fd` is readable; returns a token for remove(). */
  add(fd: number, handler: FdHandler): number {
    const token = this.nextToken++;
    epollAdd(this.epfd, fd, token);
    this.handlers.set(token, { fd, handler });
    this.arm();
    return token;
  }

  remove(token: number): void {
    const h = this.handlers.get(token);
    if (!h) return;
    this.handlers.delete(token);
    // A closed loop's epoll fd is gone (its number may be another file's by now).
    if (!this.closed) epollDelete(this.epfd, h.fd);
  }

  private arm(): void {
    if (this.waiting || this.closed) return;
    this.waiting = true;
    epollWaitAsync(this.epfd, this.events, -1, (n) => {
      this.waiting = false;
      if (this.closed) return this.release();
      this.wakeups++;
      for (let i = 0; i < n; i++) {
        const token = Number(this.events.readBigUInt64LE(i * EPOLL_EVENT_SIZE + 4));
        try {
          this.handlers.get(token)?.handler();
        } catch (e) {
          this.onError(e);
        }
      }
      this.arm();
    });
  }

  /** Stops polling; the fds stay open (their owners close them). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.waiting) eventfdSignal(this.stopFd);
    else this.release();
  }

  private release(): void {
    eventfdDrain(this.stopFd);
    closeFd(this.stopFd);
    closeFd(this.epfd);
  }
}
