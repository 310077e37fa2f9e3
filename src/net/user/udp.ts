// Outbound UDP of user-mode networking: one host socket per guest source port,
// so replies find their way back. Destinations are translated from the guest's
// view (the virtual host address is the host's loopback, the virtual DNS server
// is the host's resolver) and replies translated back. Idle sockets close.
import dgram from 'node:dgram';

const IDLE_MS = 60_000;

export interface Endpoint {
  address: string;
  port: number;
}

/** A guest UDP datagram's return path: its source address and port, and what the reply's source should look like. */
export type UdpReply = (from: { ip: number; port: number }, guestPort: number, payload: Uint8Array) => void;

interface Flow {
  socket: dgram.Socket;
  /** "address:port" on the host side → the address and port the guest sent to. */
  virtual: Map<string, { ip: number; port: number }>;
  idle: NodeJS.Timeout;
}

export class UdpFlows {
  private readonly flows = new Map<number, Flow>();

  constructor(private readonly reply: UdpReply, private readonly onError: () => void) {}

  send(guestPort: number, to: { ip: number; port: number }, real: Endpoint, payload: Uint8Array): void {
    const flow = this.flows.get(guestPort) ?? this.open(guestPort);
    flow.virtual.set(`${real.address}:${real.port}`, to);
    flow.idle.refresh();
    flow.socket.send(payload, real.port, real.address, (err) => err && this.onError());
  }

  private open(guestPort: number): Flow {
    const socket = dgram.createSocket('udp4');
    const flow: Flow = { socket, virtual: new Map(), idle: setTimeout(() => this.closeFlow(guestPort), IDLE_MS) };
    flow.idle.unref();
    socket.on('message', (msg, rinfo) => {
      const from = flow.virtual.get(`${rinfo.address}:${rinfo.port}`);
      if (!from) return; // only replies from where the guest sent
      flow.idle.refresh();
      this.reply(from, guestPort, msg);
    });
    socket.on('error', () => this.onError());
    socket.bind(0);
    this.flows.set(guestPort, flow);
    return flow;
  }

  private closeFlow(guestPort: number): void {
    const flow = this.flows.get(guestPort);
    if (!flow) return;
    clearTimeout(flow.idle);
    flow.socket.close();
    this.flows.delete(guestPort);
  }

  get count(): number {
    return this.flows.size;
  }

  close(): void {
    for (const port of [...this.flows.keys()]) this.closeFlow(port);
  }
}
