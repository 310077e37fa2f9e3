// Outbound UDP of user-mode networking: one host socket per guest source port,
// so replies find their way back. Destinations are translated from the guest's
// view (the virtual host address is the host's loopback, the virtual DNS server
// is the host's resolver) and replies translated back. Flows are limited in
// number, and idle ones close.
import dgram from 'node:dgram';

/** Destinations one flow remembers for replies; past this, the least recently used is forgotten. */
const MAX_PEERS = 1024;

export interface Endpoint {
  address: string;
  port: number;
}

/** A guest UDP datagram's return path: its source address and port, and what the reply's source should look like. */
export type UdpReply = (from: { ip: number; port: number }, guestPort: number, payload: Uint8Array) => void;

export interface UdpLimits {
  maxFlows: number;
  idleMs: number;
}

export interface UdpCounters {
  /** Datagrams dropped because every flow was in use. */
  udpOverLimit: number;
  udpIdleClosed: number;
  /** Datagrams the host socket refused or failed to send. */
  udpErrors: number;
  /** Exceptions caught in a callback; each closed its flow. */
  errors: number;
}

interface Flow {
  socket: dgram.Socket;
  /** "address:port" on the host side → the address and port the guest sent to, least recently used first. */
  virtual: Map<string, { ip: number; port: number }>;
  idle: NodeJS.Timeout;
}

export class UdpFlows {
  private readonly flows = new Map<number, Flow>();

  constructor(
    private readonly reply: UdpReply,
    private readonly limits: UdpLimits,
    private readonly counters: UdpCounters,
  ) {}

  send(guestPort: number, to: { ip: number; port: number }, real: Endpoint, payload: Uint8Array): void {
    let flow = this.flows.get(guestPort);
    if (!flow) {
      if (this.flows.size >= this.limits.maxFlows) {
        this.counters.udpOverLimit++;
        return;
      }
      flow = this.open(guestPort);
    }
    const key = `${real.address}:${real.port}`;
    flow.virtual.delete(key);
    flow.virtual.set(key, to);
    if (flow.virtual.size > MAX_PEERS) flow.virtual.delete(flow.virtual.keys().next().value!);
    flow.idle.refresh();
    try {
      flow.socket.send(payload, real.port, real.address, (err) => err && this.counters.udpErrors++);
    } catch {
      this.counters.udpErrors++; // refused before sending (a bad port or address)
    }
  }

  private open(guestPort: number): Flow {
    const socket = dgram.createSocket('udp4');
    const expire = (): void => {
      this.counters.udpIdleClosed++;
      this.closeFlow(guestPort);
    };
    const flow: Flow = { socket, virtual: new Map(), idle: setTimeout(() => this.guarded(guestPort, expire), this.limits.idleMs).unref() };
    socket.on('message', (msg, rinfo) =>
      this.guarded(guestPort, () => {
        const from = flow.virtual.get(`${rinfo.address}:${rinfo.port}`);
        if (!from) return; // only replies from where the guest sent
        flow.idle.refresh();
        this.reply(from, guestPort, msg);
      }),
    );
    // A socket error (bind failed, no fds) leaves the flow useless: the next datagram opens another.
    socket.on('error', () => {
      this.counters.udpErrors++;
      this.closeFlow(guestPort);
    });
    socket.bind(0);
    this.flows.set(guestPort, flow);
    return flow;
  }

  /** Runs a socket or timer callback: an exception there closes this flow only. */
  private guarded(guestPort: number, fn: () => void): void {
    try {
      fn();
    } catch {
      this.counters.errors++;
      this.closeFlow(guestPort);
    }
  }

  private closeFlow(guestPort: number): void {
    const flow = this.flows.get(guestPort);
    if (!flow) return;
    this.flows.delete(guestPort);
    clearTimeout(flow.idle);
    try {
      flow.socket.close();
    } catch {
      // already closed by its error: nothing left to release
    }
  }

  get count(): number {
    return this.flows.size;
  }

  close(): void {
    for (const port of [...this.flows.keys()]) this.closeFlow(port);
  }
}
