// User-mode networking against a simulated guest stack: DHCP, ARP, ICMP echo, TCP
// both ways through real host sockets on loopback, UDP/DNS forwarding, flow
// control toward a guest with no buffers, and malformed frames dropped and counted.
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { test } from 'node:test';
import { DEFAULT_USER_NET, type UserNetConfig } from '../../src/net/user/config.js';
import { UserNetwork } from '../../src/net/user/user-network.js';
import { arpRequest, GUEST_MAC, ip, packet, SimGuest, tcpFrame, udpFrame, Slirp, Tcp } from '../support/net-frames.js';

const { GUEST, HOST, DNS } = Slirp;
const { SYN, ACK, FIN, RST, PSH } = Tcp;

function setup(config: Partial<UserNetConfig> = {}): { net: UserNetwork; guest: SimGuest; send(f: Uint8Array): void } {
  const user = new UserNetwork({ ...DEFAULT_USER_NET, ...config });
  const guest = new SimGuest();
  user.attach(guest);
  return { net: user, guest, send: (f) => user.send(0, packet(f)) };
}

function dhcpMessage(type: number, requested?: number): Uint8Array {
  const m = new Uint8Array(300);
  m[0] = 1;
  m[1] = 1;
  m[2] = 6;
  m.set([1, 2, 3, 4], 4);
  m.set(GUEST_MAC, 28);
  m.set([0x63, 0x82, 0x53, 0x63], 236);
  let at = 240;
  m.set([53, 1, type], at);
  at += 3;
  if (requested !== undefined) {
    m.set([50, 4, requested >>> 24, (requested >>> 16) & 255, (requested >>> 8) & 255, requested & 255], at);
    at += 6;
  }
  m[at] = 255;
  return m;
}

function dhcpOption(payload: Uint8Array, code: number): Uint8Array | undefined {
  for (let at = 240; at < payload.length && payload[at] !== 255;) {
    if (payload[at] === 0) {
      at++;
      continue;
    }
    if (payload[at] === code) return payload.subarray(at + 2, at + 2 + payload[at + 1]!);
    at += 2 + payload[at + 1]!;
  }
  return undefined;
}

test('DHCP hands out 10.0.2.15 with router, mask and DNS; REQUEST is acknowledged', async () => {
  const { net: user, guest, send } = setup();
  send(udpFrame(0, 68, 0xffffffff, 67, dhcpMessage(1)));
  const offer = await guest.next((p) => p.udp?.dstPort === 68);
  assert.equal(offer.l4ChecksumOk, true);
  assert.equal(offer.ipChecksumOk, true);
  const o = offer.udp!.payload;
  assert.equal(o[0], 2);
  assert.deepEqual([...o.subarray(16, 20)], [10, 0, 2, 15]);
  assert.deepEqual([...dhcpOption(o, 53)!], [2]);
  assert.deepEqual([...dhcpOption(o, 3)!], [10, 0, 2, 2]);
  assert.deepEqual([...dhcpOption(o, 6)!], [10, 0, 2, 3]);
  assert.deepEqual([...dhcpOption(o, 1)!], [255, 255, 255, 0]);
  send(udpFrame(0, 68, 0xffffffff, 67, dhcpMessage(3, GUEST)));
  const ack = await guest.next((p) => p.udp?.dstPort === 68);
  assert.deepEqual([...dhcpOption(ack.udp!.payload, 53)!], [5]);
  // Asking for an address it was not given gets a NAK.
  send(udpFrame(0, 68, 0xffffffff, 67, dhcpMessage(3, ip('10.0.2.99'))));
  const nak = await guest.next((p) => p.udp?.dstPort === 68);
  assert.deepEqual([...dhcpOption(nak.udp!.payload, 53)!], [6]);
  await user.close();
});

test('dhcpstart and net move the lease and the gateway', async () => {
  const { net: user, guest, send } = setup({ network: ip('192.168.76.0'), host: ip('192.168.76.2'), dns: ip('192.168.76.3'), dhcpStart: ip('192.168.76.100') });
  send(udpFrame(0, 68, 0xffffffff, 67, dhcpMessage(1)));
  const o = (await guest.next((p) => p.udp?.dstPort === 68)).udp!.payload;
  assert.deepEqual([...o.subarray(16, 20)], [192, 168, 76, 100]);
  assert.deepEqual([...dhcpOption(o, 3)!], [192, 168, 76, 2]);
  await user.close();
});

test('ARP for the gateway and DNS addresses is answered; ICMP echo to the gateway is answered', async () => {
  const { net: user, guest, send } = setup();
  send(arpRequest(GUEST, HOST));
  const reply = await guest.next((p) => p.type === 0x0806);
  assert.equal(reply.frame[21], 2); // opcode reply
  assert.deepEqual([...reply.frame.subarray(28, 32)], [10, 0, 2, 2]);
  assert.deepEqual([...reply.frame.subarray(32, 38)], [...GUEST_MAC]);
  send(arpRequest(GUEST, ip('10.0.2.77')));
  const echo = new Uint8Array(16);
  echo[0] = 8;
  echo.set([0, 7, 0, 1, 9, 9, 9, 9], 4);
  const { checksum } = await import('../../src/net/packet.js');
  const c = checksum(echo, 0, echo.length);
  echo[2] = c >> 8;
  echo[3] = c & 255;
  const { ipv4Frame } = await import('../support/net-frames.js');
  send(ipv4Frame(1, GUEST, HOST, echo));
  const pong = await guest.next((p) => p.proto === 1);
  assert.equal(pong.body![0], 0);
  assert.equal(checksum(pong.body!, 0, pong.body!.length), 0);
  assert.deepEqual([...pong.body!.subarray(4)], [...echo.subarray(4)]);
  assert.equal(pong.src, HOST);
  assert.equal(guest.frames.length, 0, 'nobody answers for 10.0.2.77');
  await user.close();
});

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
}

test('a guest TCP connection to the gateway reaches a host server on loopback, both ways, and closes', async () => {
  const received: Buffer[] = [];
  let serverSocket: net.Socket | undefined;
  const ended = new Promise<void>((resolve) => {
    const server = net.createServer((s) => {
      serverSocket = s;
      s.on('data', (d) => received.push(d));
      s.on('end', () => {
        s.end();
        server.close();
        resolve();
      });
      s.write('hello guest');
    });
    void listen(server).then((port) => run(port));
  });
  const { net: user, guest, send } = setup();
  const run = (port: number) => send(tcpFrame(GUEST, HOST, { srcPort: 40000, dstPort: port, seq: 1000, ack: 0, flags: SYN, mss: 1460 }));
  const synAck = await guest.next((p) => !!p.tcp && (p.tcp.flags & (SYN | ACK)) === (SYN | ACK));
  assert.equal(synAck.l4ChecksumOk, true);
  assert.equal(synAck.tcp!.ack, 1001);
  const port = synAck.tcp!.srcPort;
  let ours = synAck.tcp!.seq + 1;
  send(tcpFrame(GUEST, HOST, { srcPort: 40000, dstPort: port, seq: 1001, ack: ours, flags: ACK }));
  const data = await guest.next((p) => (p.tcp?.payload.length ?? 0) > 0);
  assert.equal(Buffer.from(data.tcp!.payload).toString(), 'hello guest');
  assert.equal(data.l4ChecksumOk, true);
  ours += data.tcp!.payload.length;
  send(tcpFrame(GUEST, HOST, { srcPort: 40000, dstPort: port, seq: 1001, ack: ours, flags: ACK | PSH, payload: Buffer.from('hello host') }));
  const acked = await guest.next((p) => p.tcp?.ack === 1011);
  assert.equal(acked.tcp!.flags & ACK, ACK);
  // A segment from the future is not taken: the ACK still says 1011.
  send(tcpFrame(GUEST, HOST, { srcPort: 40000, dstPort: port, seq: 2000, ack: ours, flags: ACK, payload: Buffer.from('xx') }));
  assert.equal((await guest.next((p) => !!p.tcp)).tcp!.ack, 1011);
  send(tcpFrame(GUEST, HOST, { srcPort: 40000, dstPort: port, seq: 1011, ack: ours, flags: ACK | FIN }));
  await ended;
  assert.equal(Buffer.concat(received).toString(), 'hello host');
  const fin = await guest.next((p) => !!p.tcp && (p.tcp.flags & FIN) !== 0);
  send(tcpFrame(GUEST, HOST, { srcPort: 40000, dstPort: port, seq: 1012, ack: fin.tcp!.seq + 1, flags: ACK }));
  assert.ok(serverSocket);
  assert.equal(user.stats().tcpOpen, 0);
  await user.close();
});

test('a large host-to-guest transfer respects the guest window and survives a lost segment', async () => {
  const blob = Buffer.alloc(300_000);
  for (let i = 0; i < blob.length; i++) blob[i] = (i * 7) & 255;
  const server = net.createServer((s) => s.end(blob));
  const port = await listen(server);
  const { net: user, guest, send } = setup();
  send(tcpFrame(GUEST, HOST, { srcPort: 40001, dstPort: port, seq: 0, ack: 0, flags: SYN, mss: 1460, window: 8192 }));
  const synAck = await guest.next((p) => !!p.tcp && (p.tcp.flags & SYN) !== 0);
  const base = synAck.tcp!.seq + 1;
  send(tcpFrame(GUEST, HOST, { srcPort: 40001, dstPort: port, seq: 1, ack: base, flags: ACK, window: 8192 }));
  const got = Buffer.alloc(blob.length);
  let have = 0;
  let dropped = false;
  for (;;) {
    const seg = await guest.next((p) => !!p.tcp, 5000);
    const t = seg.tcp!;
    assert.equal(seg.l4ChecksumOk, true);
    const off = (t.seq - base) >>> 0;
    if (!dropped && off > 50_000) {
      dropped = true;
      continue;
    } // the guest "loses" this one
    if (off === have && t.payload.length) {
      got.set(t.payload, have);
      have += t.payload.length;
    }
    // Never more than the window beyond what the guest acknowledged.
    assert.ok(off + t.payload.length <= have + 8192 + 1460);
    send(
      tcpFrame(GUEST, HOST, {
        srcPort: 40001,
        dstPort: port,
        seq: 1,
        ack: (base + have + (t.flags & FIN && off === have ? 1 : 0)) >>> 0,
        flags: ACK,
        window: 8192,
      }),
    );
    if (t.flags & FIN && off === have) break;
  }
  assert.equal(have, blob.length);
  assert.ok(got.equals(blob));
  assert.ok(user.stats().tcpRetransmits >= 1);
  server.close();
  await user.close();
});

test('a connection to a closed port or to an unknown address in the network is reset', async () => {
  const server = net.createServer();
  const port = await listen(server);
  server.close();
  const { net: user, guest, send } = setup();
  send(tcpFrame(GUEST, HOST, { srcPort: 40002, dstPort: port, seq: 5, ack: 0, flags: SYN }));
  const rst = await guest.next((p) => !!p.tcp && (p.tcp.flags & RST) !== 0);
  assert.equal(rst.tcp!.ack, 6);
  send(tcpFrame(GUEST, ip('10.0.2.9'), { srcPort: 40003, dstPort: 80, seq: 5, ack: 0, flags: SYN }));
  assert.equal((await guest.next((p) => !!p.tcp)).tcp!.flags & RST, RST);
  await user.close();
});

test('UDP to 10.0.2.3:53 goes to the resolver and the reply comes from 10.0.2.3', async () => {
  const resolver = dgram.createSocket('udp4');
  await new Promise<void>((r) => resolver.bind(0, '127.0.0.1', r));
  resolver.on('message', (msg, rinfo) => resolver.send(Buffer.concat([msg, Buffer.from('-answer')]), rinfo.port, rinfo.address));
  const { net: user, guest, send } = setup({ resolver: { address: '127.0.0.1', port: resolver.address().port } });
  send(udpFrame(GUEST, 5353, DNS, 53, Buffer.from('query')));
  const reply = await guest.next((p) => !!p.udp);
  assert.equal(reply.src, DNS);
  assert.equal(reply.udp!.srcPort, 53);
  assert.equal(reply.udp!.dstPort, 5353);
  assert.equal(Buffer.from(reply.udp!.payload).toString(), 'query-answer');
  assert.equal(reply.l4ChecksumOk, true);
  resolver.close();
  await user.close();
});

test('hostfwd: a host client reaches a guest server through the forwarded port', async () => {
  const probe = net.createServer();
  const hostPort = await listen(probe);
  await new Promise((r) => probe.close(r));
  const { net: user, guest, send } = setup({ hostForwards: [{ hostAddress: '127.0.0.1', hostPort, guestPort: 8080 }] });
  await user.listen();
  const client = net.connect(hostPort, '127.0.0.1');
  const reply = new Promise<string>((resolve) => {
    let text = '';
    client.on('data', (d) => (text += d));
    client.on('end', () => resolve(text));
  });
  client.write('ping');
  const syn = await guest.next((p) => !!p.tcp && p.tcp.flags === SYN);
  assert.equal(syn.dst, GUEST);
  assert.equal(syn.tcp!.dstPort, 8080);
  const peer = { srcPort: 8080, dstPort: syn.tcp!.srcPort };
  send(tcpFrame(GUEST, HOST, { ...peer, seq: 500, ack: syn.tcp!.seq + 1, flags: SYN | ACK }));
  const data = await guest.next((p) => (p.tcp?.payload.length ?? 0) > 0);
  assert.equal(Buffer.from(data.tcp!.payload).toString(), 'ping');
  const theirs = data.tcp!.seq + 4;
  send(tcpFrame(GUEST, HOST, { ...peer, seq: 501, ack: theirs, flags: ACK | PSH | FIN, payload: Buffer.from('pong') }));
  assert.equal(await reply, 'pong');
  client.end();
  await user.close();
});

test('frames a guest cannot mean are dropped and counted; a guest without buffers gets them later', async () => {
  const { net: user, guest, send } = setup();
  send(new Uint8Array(10));
  const bad = udpFrame(GUEST, 1, HOST, 2, new Uint8Array(4));
  bad[16] = 0x7f; // IPv4 total length past the frame
  send(bad);
  const frag = udpFrame(GUEST, 1, HOST, 2, new Uint8Array(4));
  frag[20] = 0x20; // more fragments
  send(frag);
  const v6 = new Uint8Array(60);
  v6[12] = 0x86;
  v6[13] = 0xdd;
  send(v6);
  const s = user.stats();
  assert.equal(s['drop.runt'], 1);
  assert.equal(s['drop.bad-ipv4'], 1);
  assert.equal(s['drop.ipv4-fragment'], 1);
  assert.equal(s['drop.unsupported-ethertype'], 1);
  guest.accept = false;
  send(arpRequest(GUEST, HOST));
  assert.equal(guest.frames.length, 0);
  assert.equal(user.stats().pending, 1);
  guest.accept = true;
  user.resume();
  assert.equal(guest.frames.length, 1);
  await user.close();
});
