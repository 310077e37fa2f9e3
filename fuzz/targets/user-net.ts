// User-mode networking under guest frames: ARP, DHCP, ICMP, UDP and TCP, mutated,
// and stateful TCP conversations (SYN, the handshake's ACK, data, zero windows,
// FIN, RST, an MSS option of any value, waiting for the echo) against real
// loopback servers.
//
// Nothing may leave the machine: UserNetwork has no option to confine where the
// guest's traffic goes, so the harness rewrites every TCP or UDP destination
// that would leave to 127.0.0.1 and a port of its own servers (port 0 stays 0:
// nothing listens there, and it once made send() throw), and points the
// resolver at its own UDP socket. Oracles: no frame makes send() throw; open TCP
// connections and UDP flows stay under the configured limits; frames held for
// the guest stay bounded, and so do frames handed to it in one turn of the event
// loop (a sender that loops without end is stopped there); sockets are released
// after close.
import dgram from 'node:dgram';
import net from 'node:net';
import { withVnetHdr, type NetPort } from '../../src/net/backend.js';
import { readU16, readU32, writeU16, writeU32 } from '../../src/net/packet.js';
import { DEFAULT_USER_NET, type UserNetConfig } from '../../src/net/user/config.js';
import { UserNetwork } from '../../src/net/user/user-network.js';
import { ip, parse, tcpFrame } from '../../test/support/net-frames.js';
import { operations, opsArbitrary, type ByteReader } from '../lib/bytes.js';
import { settle } from '../lib/disk.js';
import { DNS, frame, GATEWAY, GUEST } from '../lib/frames.js';
import { check, OracleError, type FuzzTarget } from '../lib/target.js';

const LIMITS = { maxTcp: 4, maxUdp: 4, tcpIdle: 5, udpIdle: 5, tcpBuffer: 64 * 1024 };
const MAX_PENDING = 2048;
/**
 * Frames the guest may be handed in one turn of the event loop: twice what
 * resume() flushes at once (MAX_PENDING), far more than a full window of
 * minimum-MSS segments on every connection.
 */
const MAX_FRAMES_PER_TURN = 2 * MAX_PENDING;
const LOOPBACK = ip('127.0.0.1');
const Op = { FRAME: 0, TCP: 1, WAIT: 2, RESUME: 3 } as const;
const KINDS = 4;

interface Servers {
  tcp: net.Server[];
  /** Their accepted sockets, destroyed at teardown (a server closes only when they are gone). */
  accepted: Set<net.Socket>;
  tcpPorts: number[];
  udp: dgram.Socket;
  udpPort: number;
}

async function servers(): Promise<Servers> {
  // An echo server that sometimes closes its side first, and one that resets at once.
  const accepted = new Set<net.Socket>();
  const echo = net.createServer({ allowHalfOpen: true }, (s) => {
    accepted.add(s);
    s.on('close', () => accepted.delete(s));
    s.on('error', () => {});
    s.on('end', () => s.end());
    s.on('data', (d) => (d[0] === 0xff ? s.end() : s.write(d)));
  });
  const reset = net.createServer((s) => s.resetAndDestroy());
  const tcp = [echo, reset];
  await Promise.all(tcp.map((s) => new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))));
  const udp = dgram.createSocket('udp4');
  udp.on('message', (msg, rinfo) => udp.send(msg, rinfo.port, rinfo.address));
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve));
  return { tcp, accepted, tcpPorts: tcp.map((s) => (s.address() as net.AddressInfo).port), udp, udpPort: udp.address().port };
}

/**
 * Confines a guest frame to this machine: a TCP or UDP destination that would
 * leave user-mode networking (the gateway, which is the host's loopback, or any
 * address outside the guest network) becomes 127.0.0.1 at one of our ports.
 */
function confine(f: Uint8Array, srv: Servers, r: ByteReader): void {
  if (f.length < 34 || readU16(f, 12) !== 0x0800) return;
  const ihl = (f[14]! & 0xf) * 4;
  const proto = f[23];
  if ((proto !== 6 && proto !== 17) || f.length < 14 + ihl + 4) return;
  const dst = readU32(f, 30);
  const guestNet = (dst & 0xffffff00) >>> 0 === DEFAULT_USER_NET.network >>> 0;
  if (dst === DNS || (guestNet && dst !== GATEWAY) || dst === 0xffffffff || dst >>> 28 === 0xe) return;
  if (dst !== GATEWAY) writeU32(f, 30, LOOPBACK);
  if (readU16(f, 14 + ihl + 2) !== 0) writeU16(f, 14 + ihl + 2, proto === 6 ? r.pick(srv.tcpPorts) : srv.udpPort);
}

/** Open sockets of this process, by kind. */
function handles(): { tcp: number; udp: number } {
  const info = process.getActiveResourcesInfo();
  return { tcp: info.filter((k) => k === 'TCPSocketWrap').length, udp: info.filter((k) => k === 'UDPWRAP').length };
}

export const userNet: FuzzTarget<Servers> = {
  name: 'user-net',
  description: 'user-mode networking: mutated ARP/DHCP/ICMP/UDP/TCP frames and TCP conversations against loopback servers',
  arbitrary: opsArbitrary(KINDS, { weights: [6, 3, 2, 1], maxOps: 30 }),
  budgetMs: 1000,
  setup: servers,
  teardown: async (srv) => {
    srv.udp.close();
    for (const s of srv.accepted) s.destroy();
    await Promise.all(srv.tcp.map((s) => new Promise((resolve) => s.close(resolve))));
  },
  async run(srv, data) {
    const before = handles();
    const config: UserNetConfig = Object.assign({}, DEFAULT_USER_NET, {
      resolver: { address: '127.0.0.1', port: srv.udpPort },
      hostForwards: [],
      limits: LIMITS,
    });
    const user = new UserNetwork(config);
    const received: Uint8Array[] = [];
    let accepting = true;
    let turnFrames = 0;
    let flood: string | undefined;
    const port: NetPort = {
      receive: (_q, packet) => {
        if (turnFrames++ === 0) setImmediate(() => (turnFrames = 0));
        if (turnFrames > MAX_FRAMES_PER_TURN) {
          flood ??= `over ${MAX_FRAMES_PER_TURN} frames handed to the guest in one turn of the event loop`;
          throw new OracleError(flood); // the only way out of a sender that never returns
        }
        return accepting && (received.push(packet.slice(12)), true);
      },
    };
    user.attach(port);
    const send = (f: Uint8Array): void => user.send(0, withVnetHdr(f));
    /** A TCP conversation from the guest: handshake (answering the SYN-ACK it gets), then segments. */
    const conversation = async (r: ByteReader): Promise<void> => {
      const guestPort = 40000 + (r.u8() % 8);
      const dstPort = r.pick(srv.tcpPorts);
      let seq = r.u32();
      const mss = r.u8() < 200 ? r.pick([undefined, 0, 1, 536, 1460, 65535]) : r.u16();
      send(tcpFrame(GUEST, GATEWAY, { srcPort: guestPort, dstPort, seq, ack: 0, flags: 0x02, mss }));
      const synAck = (): ReturnType<typeof parse> | undefined =>
        received.map(parse).find((p) => p.tcp && p.tcp.dstPort === guestPort && (p.tcp.flags & 0x12) === 0x12);
      await settle(() => synAck() !== undefined, 200);
      const peer = synAck()?.tcp;
      let ack = peer ? (peer.seq + 1) >>> 0 : r.u32();
      seq = (seq + 1) >>> 0;
      for (let n = 0; n < 1 + (r.u8() % 6) && !r.done; n++) {
        const flags = r.u8() < 200 ? r.pick([0x10, 0x18, 0x11, 0x14, 0x04]) : r.u8();
        const payload = r.bytes(r.u8() < 200 ? r.u8() : r.u16() % 8192);
        send(tcpFrame(GUEST, GATEWAY, { srcPort: guestPort, dstPort, seq, ack, flags, window: r.bool() ? 0 : r.u16(), payload }));
        seq = (seq + payload.length + (flags & 1)) >>> 0;
        // Data goes to the echo server: wait (bounded) for it to come back, so host data meets this connection's state.
        const before = received.length;
        await settle(() => received.slice(before).some((f) => (parse(f).tcp?.payload.length ?? 0) > 0), payload.length ? 64 : r.u8() % 8);
        const last = received
          .map(parse)
          .filter((p) => p.tcp?.dstPort === guestPort)
          .at(-1)?.tcp;
        if (last) ack = (last.seq + last.payload.length + (last.flags & 1)) >>> 0;
      }
    };
    try {
      for (const { kind, args: r } of operations(data, 64)) {
        switch (kind % KINDS) {
          case Op.FRAME: {
            const f = frame(r);
            confine(f, srv, r);
            send(f);
            break;
          }
          case Op.TCP:
            await conversation(r);
            break;
          case Op.WAIT:
            await settle(() => false, r.u8() % 32);
            break;
          default:
            accepting = r.bool();
            user.resume();
        }
        if (flood) throw new OracleError(flood);
        const s = user.stats();
        check(s.tcpOpen! <= LIMITS.maxTcp, `${s.tcpOpen} TCP connections open, limit ${LIMITS.maxTcp}`);
        check(s.udpFlows! <= LIMITS.maxUdp, `${s.udpFlows} UDP flows open, limit ${LIMITS.maxUdp}`);
        check(s.pending! <= MAX_PENDING, `${s.pending} frames held for the guest`);
        received.length = Math.min(received.length, 256);
      }
    } finally {
      await user.close();
    }
    // Host sockets (ours, and the servers' ends) go within a few turns of close.
    await settle(() => handles().tcp <= before.tcp && handles().udp <= before.udp, 100);
    const after = handles();
    check(
      after.tcp <= before.tcp + 2 * LIMITS.maxTcp && after.udp <= before.udp,
      `sockets left after close: ${after.tcp - before.tcp} TCP, ${after.udp - before.udp} UDP`,
    );
  },
};
