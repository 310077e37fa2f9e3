// User-mode networking (`--netdev user`): a small IPv4 network that lives inside
// tsvisor and needs no privileges. The guest sees a gateway (the host), a DNS
// server and a DHCP server; its TCP connections and UDP datagrams leave through
// ordinary host sockets, and host ports can be forwarded to guest ports.
//
// Everything runs on the main thread. Frames for the guest wait in a bounded
// queue while the guest has no receive buffers; TCP flow control keeps that
// queue short. The guest is hostile: nothing it sends may throw out of send(),
// and the sockets, bytes and time it can make tsvisor hold are bounded by the
// user's limits (UserNetLimits), every refusal counted.
import fs from 'node:fs';
import net from 'node:net';
import { DropCounter } from '../counters.js';
import { VNET_HDR_LEN, withVnetHdr, type NetBackend, type NetPort } from '../backend.js';
import {
  BROADCAST_MAC,
  checksum,
  ETH_ALEN,
  ETH_HLEN,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  formatIpv4,
  IPPROTO_ICMP,
  IPPROTO_TCP,
  IPPROTO_UDP,
  ipv4PseudoSum,
  parseIpv4,
  readU16,
  readU32,
  writeEthernet,
  writeIpv4,
  writeU16,
  writeU32,
} from '../packet.js';
import { DEFAULT_USER_LIMITS, inNetwork, type HostForward, type UserNetConfig, type UserNetLimits } from './config.js';
import { DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpServer } from './dhcp.js';
import { OWN_MSS, TcpConnection, TcpFlag, type TcpSegment } from './tcp.js';
import { UdpFlows, type Endpoint } from './udp.js';

/** Frames held for the guest while it has no receive buffers. */
const MAX_PENDING = 2048;
const DNS_PORT = 53;
const LOOPBACK = '127.0.0.1';
const FIRST_FORWARD_PORT = 49152;

/** Why a frame from the guest went nowhere. */
export const USER_NET_DROPS = [
  'runt',
  'unsupported-ethertype',
  'bad-arp',
  'bad-ipv4',
  'ipv4-fragment',
  'bad-tcp',
  'bad-udp',
  'unreachable',
  'unsupported-icmp',
  'rx-queue-full',
] as const;
export type UserNetDrop = (typeof USER_NET_DROPS)[number];

/** A forwarded host port could not be listened on (in use, not permitted, no such address). */
export class HostForwardError extends Error {
  override name = 'HostForwardError';
}

export class UserNetwork implements NetBackend {
  readonly description = 'user';
  readonly queues = 1;
  readonly offloads = false;
  private port: NetPort | undefined;
  private readonly gatewayMac: Uint8Array;
  /** Learned from the guest's frames: where replies go. */
  private guestMac: Uint8Array = BROADCAST_MAC;
  private guestIp = 0;
  private resolverCache: Endpoint | undefined;
  private readonly dhcp: DhcpServer;
  private readonly udp: UdpFlows;
  private readonly tcp = new Map<string, TcpConnection>();
  private readonly servers: net.Server[] = [];
  private pending: Uint8Array[] = [];
  private ackFlush: NodeJS.Immediate | undefined;
  private nextForwardPort = FIRST_FORWARD_PORT;
  private ipId = 0;
  private readonly limits: UserNetLimits;
  readonly counters = {
    txPackets: 0,
    txBytes: 0,
    rxPackets: 0,
    rxBytes: 0,
    tcpOpened: 0,
    tcpRefused: 0,
    /** Guest SYNs reset because max-tcp connections were open. */
    tcpOverLimit: 0,
    /** Host clients of a forwarded port reset because max-tcp connections were open. */
    hostfwdOverLimit: 0,
    tcpIdleClosed: 0,
    tcpWindowDrops: 0,
    tcpOutOfOrder: 0,
    tcpRetransmits: 0,
    udpOverLimit: 0,
    udpIdleClosed: 0,
    udpErrors: 0,
    /** Exceptions caught where a guest frame or a socket event came in. */
    errors: 0,
  };
  readonly drops = new DropCounter(USER_NET_DROPS);

  constructor(private readonly config: UserNetConfig) {
    this.limits = { ...DEFAULT_USER_LIMITS, ...config.limits };
    this.gatewayMac = Uint8Array.from([0x52, 0x55, ...ipBytes(config.host)]);
    this.dhcp = new DhcpServer(config);
    this.udp = new UdpFlows(
      (from, guestPort, payload) => this.sendUdp(from.ip, from.port, guestPort, payload),
      { maxFlows: this.limits.maxUdp, idleMs: this.limits.udpIdle * 1000 },
      this.counters,
    );
  }

  /** Starts listening on the forwarded host ports; rejects with the first port that cannot be bound. */
  async listen(): Promise<void> {
    for (const fwd of this.config.hostForwards) {
      const server = net.createServer({ allowHalfOpen: true }, (socket) => {
        try {
          this.forwardToGuest(fwd, socket);
        } catch {
          this.counters.errors++;
          socket.destroy();
        }
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', (e: NodeJS.ErrnoException) =>
          reject(new HostForwardError(`hostfwd: cannot listen on ${fwd.hostAddress || '*'}:${fwd.hostPort}: ${e.code ?? e.message}`)),
        );
        server.listen(fwd.hostPort, fwd.hostAddress || undefined, () => resolve());
      });
      // Once listening, an error is a failed accept (out of fds, say): the server goes on.
      server.on('error', () => this.counters.errors++);
      this.servers.push(server);
    }
  }

  attach(port: NetPort): void {
    this.port = port;
  }

  setRxOffloads(): void {} // frames are built whole; nothing to offload

  resume(): void {
    while (this.pending.length && this.port?.receive(0, this.pending[0]!)) this.pending.shift();
  }

  // -- guest to network ------------------------------------------------------

  send(_queue: number, packet: Uint8Array): void {
    try {
      this.frameIn(packet);
    } catch {
      this.counters.errors++; // a last resort: the frame is lost, the network goes on
    }
  }

  private frameIn(packet: Uint8Array): void {
    this.counters.txPackets++;
    this.counters.txBytes += packet.length - VNET_HDR_LEN;
    const frame = packet.subarray(VNET_HDR_LEN);
    if (frame.length < ETH_HLEN) return this.drops.count('runt');
    this.guestMac = frame.slice(ETH_ALEN, 2 * ETH_ALEN);
    const type = readU16(frame, 12);
    if (type === ETHERTYPE_ARP) return this.arp(frame);
    if (type !== ETHERTYPE_IPV4) return this.drops.count('unsupported-ethertype');
    this.ipv4(frame);
  }

  /** Answers who-has for the gateway and DNS addresses. */
  private arp(frame: Uint8Array): void {
    const a = ETH_HLEN;
    if (frame.length < a + 28 || readU16(frame, a) !== 1 || readU16(frame, a + 2) !== ETHERTYPE_IPV4 || frame[a + 4] !== 6 || frame[a + 5] !== 4)
      return this.drops.count('bad-arp');
    if (readU16(frame, a + 6) !== 1) return; // replies and announcements need no answer
    const target = readU32(frame, a + 24);
    if (target !== this.config.host && target !== this.config.dns) return;
    const out = new Uint8Array(ETH_HLEN + 28);
    writeEthernet(out, frame.subarray(6, 12), this.gatewayMac, ETHERTYPE_ARP);
    out.set(frame.subarray(a, a + 6), a); // htype, ptype, hlen, plen
    writeU16(out, a + 6, 2);
    out.set(this.gatewayMac, a + 8);
    writeU32(out, a + 14, target);
    out.set(frame.subarray(a + 8, a + 18), a + 18); // the asker's MAC and IP
    this.deliver(out);
  }

  private ipv4(frame: Uint8Array): void {
    const ip = ETH_HLEN;
    if (frame.length < ip + 20) return this.drops.count('bad-ipv4');
    const ihl = (frame[ip]! & 0xf) * 4;
    const total = readU16(frame, ip + 2);
    if (frame[ip]! >> 4 !== 4 || ihl < 20 || total < ihl || ip + total > frame.length) return this.drops.count('bad-ipv4');
    if (readU16(frame, ip + 6) & 0x3fff) return this.drops.count('ipv4-fragment'); // MF set or an offset
    const src = readU32(frame, ip + 12);
    const dst = readU32(frame, ip + 16);
    const body = frame.subarray(ip + ihl, ip + total);
    switch (frame[ip + 9]) {
      case IPPROTO_UDP:
        return this.udpIn(src, dst, body);
      case IPPROTO_TCP:
        return this.tcpIn(src, dst, body);
      case IPPROTO_ICMP:
        return this.icmpIn(src, dst, body);
      default:
        return this.drops.count('unreachable');
    }
  }

  private icmpIn(src: number, dst: number, body: Uint8Array): void {
    if (body.length < 8 || body[0] !== 8) return this.drops.count('unsupported-icmp'); // echo requests only
    if (dst !== this.config.host && dst !== this.config.dns) return this.drops.count('unsupported-icmp');
    const reply = body.slice();
    reply[0] = 0;
    writeU16(reply, 2, 0);
    writeU16(reply, 2, checksum(reply, 0, reply.length));
    this.sendIp(IPPROTO_ICMP, dst, src, reply);
  }

  private udpIn(src: number, dst: number, body: Uint8Array): void {
    if (body.length < 8 || readU16(body, 4) < 8 || readU16(body, 4) > body.length) return this.drops.count('bad-udp');
    const srcPort = readU16(body, 0);
    const dstPort = readU16(body, 2);
    const payload = body.subarray(8, readU16(body, 4));
    if (dstPort === DHCP_SERVER_PORT) {
      const reply = this.dhcp.handle(payload);
      if (reply) this.sendUdp(this.config.host, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, reply, 0xffffffff);
      return;
    }
    const real = this.realEndpoint(dst, dstPort);
    if (!real) return this.drops.count('unreachable');
    this.guestIp = src;
    this.udp.send(srcPort, { ip: dst, port: dstPort }, real, payload);
  }

  private tcpIn(src: number, dst: number, body: Uint8Array): void {
    const doff = body.length >= 20 ? (body[12]! >> 4) * 4 : 0;
    if (doff < 20 || doff > body.length) return this.drops.count('bad-tcp');
    const seg: TcpSegment = {
      seq: readU32(body, 4),
      ack: readU32(body, 8),
      flags: body[13]! & 0x3f,
      window: readU16(body, 14),
      mss: mssOption(body.subarray(20, doff)),
      payload: body.subarray(doff),
    };
    const srcPort = readU16(body, 0);
    const dstPort = readU16(body, 2);
    const key = `${src}:${srcPort}>${dst}:${dstPort}`;
    const conn = this.tcp.get(key);
    if (conn) {
      conn.input(seg);
      this.scheduleAckFlush();
      return;
    }
    const { SYN, ACK, RST } = TcpFlag;
    // RFC 793's reset for a segment nobody expects: acknowledge it, or take its ACK as our sequence number.
    const reset = (): void =>
      this.sendTcp(dst, dstPort, src, srcPort, {
        seq: seg.flags & ACK ? seg.ack : 0,
        ack: (seg.seq + seg.payload.length + (seg.flags & SYN ? 1 : 0)) >>> 0,
        flags: RST | ACK,
        window: 0,
        payload: new Uint8Array(0),
      });
    if (seg.flags & RST) return; // never answer a reset
    if ((seg.flags & (SYN | ACK)) !== SYN) return reset(); // not a connection attempt
    const real = this.realEndpoint(dst, dstPort);
    if (!real) {
      this.counters.tcpRefused++;
      return reset();
    }
    if (this.tcp.size >= this.limits.maxTcp) {
      this.counters.tcpOverLimit++;
      return reset();
    }
    this.guestIp = src;
    const socket = net.connect({ host: real.address, port: real.port, allowHalfOpen: true });
    socket.setNoDelay(true);
    this.counters.tcpOpened++;
    this.openTcp(key, socket, dst, dstPort, src, srcPort, seg);
  }

  private openTcp(key: string, socket: net.Socket, remote: number, remotePort: number, guest: number, guestPort: number, guestSyn?: TcpSegment): void {
    const conn = new TcpConnection(
      socket,
      (seg) => this.sendTcp(remote, remotePort, guest, guestPort, seg),
      () => this.tcp.delete(key),
      this.counters,
      { idleMs: this.limits.tcpIdle * 1000, bufferBytes: this.limits.tcpBuffer },
      guestSyn,
    );
    this.tcp.set(key, conn);
  }

  /** A host client connected to a forwarded port: open a connection to the guest from the gateway. */
  private forwardToGuest(fwd: HostForward, socket: net.Socket): void {
    if (this.tcp.size >= this.limits.maxTcp) {
      this.counters.hostfwdOverLimit++;
      socket.resetAndDestroy();
      return;
    }
    const guest = fwd.guestAddress ?? this.dhcp.leaseOf(this.guestMac) ?? this.config.dhcpStart;
    // The next gateway port not in use toward this guest port; max-tcp is below the range, so one is free.
    let key: string;
    let port: number;
    do {
      port = this.nextForwardPort;
      this.nextForwardPort = port === 65535 ? FIRST_FORWARD_PORT : port + 1;
      key = `${guest}:${fwd.guestPort}>${this.config.host}:${port}`;
    } while (this.tcp.has(key));
    socket.setNoDelay(true);
    this.counters.tcpOpened++;
    this.openTcp(key, socket, this.config.host, port, guest, fwd.guestPort);
  }

  /** Where a guest's packet to a virtual address really goes: the host is loopback, the DNS server the resolver. */
  private realEndpoint(dst: number, port: number): Endpoint | undefined {
    if (port === 0) return undefined; // nothing listens there, and dgram refuses it outright
    if (dst === this.config.host) return { address: LOOPBACK, port };
    if (dst === this.config.dns) return port === DNS_PORT ? this.resolver() : undefined;
    if (inNetwork(this.config, dst) || dst === 0xffffffff || dst >>> 28 === 0xe) return undefined; // nobody else on this network; no broadcast or multicast out
    return { address: formatIpv4(dst), port };
  }

  private resolver(): Endpoint {
    this.resolverCache ??= this.config.resolver ?? hostResolver();
    return this.resolverCache;
  }

  private scheduleAckFlush(): void {
    this.ackFlush ??= setImmediate(() => {
      this.ackFlush = undefined;
      for (const c of this.tcp.values()) c.flushAck();
    });
  }

  // -- network to guest ------------------------------------------------------

  private sendTcp(src: number, srcPort: number, dst: number, dstPort: number, seg: TcpSegment): void {
    const opts = seg.mss !== undefined ? 4 : 0;
    const tcp = new Uint8Array(20 + opts + seg.payload.length);
    writeU16(tcp, 0, srcPort);
    writeU16(tcp, 2, dstPort);
    writeU32(tcp, 4, seg.seq);
    writeU32(tcp, 8, seg.ack);
    tcp[12] = ((20 + opts) / 4) << 4;
    tcp[13] = seg.flags;
    writeU16(tcp, 14, seg.window);
    if (opts) {
      tcp[20] = 2;
      tcp[21] = 4;
      writeU16(tcp, 22, Math.min(seg.mss!, OWN_MSS));
    }
    tcp.set(seg.payload, 20 + opts);
    this.sendIp(IPPROTO_TCP, src, dst, tcp, 16);
  }

  private sendUdp(src: number, srcPort: number, dstPort: number, payload: Uint8Array, dst = this.guestIp): void {
    const udp = new Uint8Array(8 + payload.length);
    writeU16(udp, 0, srcPort);
    writeU16(udp, 2, dstPort);
    writeU16(udp, 4, udp.length);
    udp.set(payload, 8);
    this.sendIp(IPPROTO_UDP, src, dst, udp, 6);
  }

  /** Wraps a transport segment in IPv4 and Ethernet, filling in its checksum at `csumAt` (if given). */
  private sendIp(proto: number, src: number, dst: number, segment: Uint8Array, csumAt?: number): void {
    const ip = ETH_HLEN;
    const frame = new Uint8Array(ip + 20 + segment.length);
    writeEthernet(frame, dst === 0xffffffff ? BROADCAST_MAC : this.guestMac, this.gatewayMac, ETHERTYPE_IPV4);
    this.ipId = (this.ipId + 1) & 0xffff;
    writeIpv4(frame, ip, 20 + segment.length, { src, dst, proto, id: this.ipId });
    frame.set(segment, ip + 20);
    if (csumAt !== undefined) {
      const sum = checksum(frame, ip + 20, frame.length, ipv4PseudoSum(frame, ip, proto, segment.length));
      writeU16(frame, ip + 20 + csumAt, proto === IPPROTO_UDP && sum === 0 ? 0xffff : sum);
    }
    this.deliver(frame);
  }

  private deliver(frame: Uint8Array): void {
    const packet = withVnetHdr(frame);
    if (this.pending.length === 0 && this.port?.receive(0, packet)) {
      this.counted(frame);
      return;
    }
    if (this.pending.length >= MAX_PENDING) return this.drops.count('rx-queue-full');
    this.pending.push(packet);
    this.counted(frame);
  }

  private counted(frame: Uint8Array): void {
    this.counters.rxPackets++;
    this.counters.rxBytes += frame.length;
  }

  stats(): Record<string, number> {
    let tcpBufferedToHost = 0;
    let tcpBufferedToGuest = 0;
    for (const c of this.tcp.values()) {
      tcpBufferedToHost += c.buffered.toHost;
      tcpBufferedToGuest += c.buffered.toGuest;
    }
    const gauges = { tcpOpen: this.tcp.size, tcpBufferedToHost, tcpBufferedToGuest, udpFlows: this.udp.count, pending: this.pending.length };
    return { ...this.counters, ...this.dhcp.counters, ...gauges, ...this.drops.stats() };
  }

  async close(): Promise<void> {
    if (this.ackFlush) clearImmediate(this.ackFlush);
    for (const c of [...this.tcp.values()]) c.abort();
    this.udp.close();
    await Promise.all(this.servers.map((s) => new Promise((resolve) => s.close(resolve))));
    this.port = undefined;
  }
}

function ipBytes(ip: number): number[] {
  return [ip >>> 24, (ip >>> 16) & 255, (ip >>> 8) & 255, ip & 255];
}

/** The MSS option of a SYN's option bytes. */
function mssOption(opts: Uint8Array): number | undefined {
  for (let at = 0; at < opts.length;) {
    const kind = opts[at]!;
    if (kind === 0) break;
    if (kind === 1) {
      at++;
      continue;
    }
    const len = opts[at + 1] ?? 0;
    if (len < 2 || at + len > opts.length) break;
    if (kind === 2 && len === 4) return readU16(opts, at + 2);
    at += len;
  }
  return undefined;
}

/** The first IPv4 nameserver in /etc/resolv.conf, else the host's loopback. */
function hostResolver(): Endpoint {
  try {
    for (const line of fs.readFileSync('/etc/resolv.conf', 'utf8').split('\n')) {
      const m = /^\s*nameserver\s+(\S+)/.exec(line);
      if (m && parseIpv4(m[1]!) !== undefined) return { address: m[1]!, port: DNS_PORT };
    }
  } catch {
    // no resolv.conf: fall through
  }
  return { address: LOOPBACK, port: DNS_PORT };
}
