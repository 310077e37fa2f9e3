// A vhost-user back-end daemon: a listening socket, and one BackendSession per
// front-end that connects, each with a device of its own made by `makeDevice`.
// A session that ends (the front-end left, or broke the protocol) takes only its
// own device with it. Connections beyond `maxClients` are closed at once: each
// holds fds, mappings and a device worker.
import { closeFd } from '../../host/libc.js';
import { unixAccept, unixListen } from '../../host/unix-socket.js';
import { EventLoop } from '../../vmm/event-loop.js';
import type { FdPoller } from '../../net/backend.js';
import { describeError, type VirtioDevice } from '../../virtio/device.js';
import { BackendSession } from './backend.js';
import fs from 'node:fs';

export const DEFAULT_MAX_CLIENTS = 16;

export interface DaemonOptions {
  socket: string;
  /** A fresh device for client number `n` (from 1); `poller` is the daemon's loop, for a back-end's fds. */
  makeDevice(n: number, poller: FdPoller): VirtioDevice | Promise<VirtioDevice>;
  log(line: string): void;
  maxClients?: number;
}

export class VhostUserDaemon {
  private readonly loop: EventLoop;
  private readonly listenFd: number;
  private readonly sessions = new Set<BackendSession>();
  private clients = 0;
  private opening = 0;
  private closed = false;

  constructor(private readonly opts: DaemonOptions) {
    this.loop = new EventLoop((e) => opts.log(`internal error: ${describeError(e)}`));
    this.listenFd = unixListen(opts.socket);
    this.loop.add(this.listenFd, () => this.accept());
  }

  private accept(): void {
    for (let fd = unixAccept(this.listenFd); fd !== undefined; fd = unixAccept(this.listenFd)) {
      const connected = this.sessions.size + this.opening;
      if (connected >= (this.opts.maxClients ?? DEFAULT_MAX_CLIENTS)) {
        this.opts.log(`refused a client: ${connected} are connected already`);
        closeFd(fd);
        continue;
      }
      void this.serve(fd, ++this.clients);
    }
  }

  private async serve(fd: number, n: number): Promise<void> {
    const log = (line: string) => this.opts.log(`client ${n}: ${line}`);
    // Counted while its device opens, so clients arriving meanwhile meet the limit.
    this.opening++;
    let device: VirtioDevice;
    try {
      device = await this.opts.makeDevice(n, this.loop);
    } catch (e) {
      log(`no device for it: ${describeError(e)}`);
      closeFd(fd);
      return;
    } finally {
      this.opening--;
    }
    if (this.closed) {
      closeFd(fd);
      return void device.close();
    }
    log('connected');
    const session = new BackendSession(fd, device, this.loop, log, (s) => this.sessions.delete(s));
    this.sessions.add(session);
  }

  /** Stops listening, ends every session (their in-flight requests finish, their files close) and removes the socket. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.sessions].map((s) => s.end('the daemon is stopping')));
    this.loop.close();
    closeFd(this.listenFd);
    fs.rmSync(this.opts.socket, { force: true });
  }
}
