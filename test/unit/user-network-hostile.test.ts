// User-mode networking against a hostile guest: options and ports meant to break
// the stack, floods of connections and flows, data past the window, and a
// front-end that fails under it. Nothing may throw out of send() or a callback,
// nothing may loop, and what tsvisor holds stays within the limits, every
// refusal counted.
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { test, type TestContext } from 'node:test';
import { DEFAULT_USER_LIMITS, DEFAULT_USER_NET, type UserNetConfig } from '../../src/net/user/config.js';
import { UserNetwork } from '../../src/net/user/user-network.js';
import { ip, ipv4Frame, packet, SimGuest, tcpFrame, udpFrame, type Parsed, type TcpFields, Slirp, Tcp } from '../support/net-frames.js';
import { rng } from '../support/seeded-random.js';

const { GUEST, HOST, DNS } = Slirp;
const { SYN, ACK, FIN, RST } = Tcp;
/** More frames than any one window's worth at the smallest MSS: past it, the stack is spinning. */
const MAX_FRAMES_PER_TURN = 1000;

// Everything a test opens is closed after it, passed or failed, so a failure never keeps the process alive.

function setup(t: TestContext, config: Partial<UserNetConfig> = {}) {
  const user = new UserNetwork({ ...DEFAULT_USER_NET, ...config });
  const guest = new SimGuest(MAX_FRAMES_PER_TURN);
  user.attach(guest);
  t.after(() => user.close());
  return { user, guest, send: (f: Uint8Array) => user.send(0, packet(f)) };
}

/** A loopback TCP server; each accepted socket goes to `onSocket`. */
async function tcpServer(t: TestContext, onSocket: (s: net.Socket) => void = () => {}): Promise<number> {
  const sockets: net.Socket[] = [];
  const server = net.createServer((s) => {
    sockets.push(s);
    s.on('error', () => {});
    onSocket(s);
  });
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const { port } = probe.address() as net.AddressInfo;
  await new Promise((r) => probe.close(r));
  return port;
}

/** A loopback UDP socket that sends every datagram back (with `suffix`). */
async function udpEcho(t: TestContext, suffix = ''): Promise<number> {
  const echo = dgram.createSocket('udp4');
  echo.on('message', (msg, rinfo) => echo.send(Buffer.concat([msg, Buffer.from(suffix)]), rinfo.port, rinfo.address));
  t.after(() => echo.close());
  await new Promise<void>((r) => echo.bind(0, '127.0.0.1', r));
  return echo.address().port;
}

const tcpTo = (guestPort: number, flags?: number) => (p: Parsed) => p.tcp?.dstPort === guestPort && (flags === undefined || (p.tcp.flags & flags) === flags);

/** The guest's three-way handshake from `guestPort` to the gateway's `port`: the next sequence numbers both ways. */
async function handshake(
  h: ReturnType<typeof setup>,
  port: number,
  guestPort: number,
  syn: Partial<TcpFields> = {},
): Promise<{ mine: number; theirs: number }> {
  h.send(tcpFrame(GUEST, HOST, { srcPort: guestPort, dstPort: port, seq: 1000, ack: 0, flags: SYN, ...syn }));
  const synAck = await h.guest.next(tcpTo(guestPort, SYN | ACK));
  const theirs = (synAck.tcp!.seq + 1) >>> 0;
  h.send(tcpFrame(GUEST, HOST, { srcPort: guestPort, dstPort: port, seq: 1001, ack: theirs, flags: ACK }));
  return { mine: 1001, theirs };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `event`, or a failure after `ms`: a test that waits on the host side never hangs. */
function within<T>(event: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms)));
  return Promise.race([event, timeout]).finally(() => clearTimeout(timer));
}

test('a guest MSS of 0 or 1 is raised to 536: host data reaches the guest in real segments, never an endless loop', { timeout: 20_000 }, async (t) => {
  const blob = Buffer.alloc(100_000, 'x');
  const port = await tcpServer(t, (s) => s.end(blob));
  for (const mss of [0, 1]) {
    const h = setup(t);
    const guestPort = 42000 + mss;
    const { theirs } = await handshake(h, port, guestPort, { mss });
    let have = 0;
    for (;;) {
      const t = (await h.guest.next(tcpTo(guestPort))).tcp!;
      assert.ok(t.payload.length <= 536, `segment of ${t.payload.length} bytes for MSS ${mss}`);
      if ((t.seq - theirs) >>> 0 === have) have += t.payload.length;
      const fin = (t.flags & FIN) !== 0 && (t.seq - theirs) >>> 0 === have;
      h.send(tcpFrame(GUEST, HOST, { srcPort: guestPort, dstPort: port, seq: 1001, ack: (theirs + have + (fin ? 1 : 0)) >>> 0, flags: ACK }));
      if (fin) break;
    }
    assert.equal(have, blob.length);
    assert.equal(h.user.stats().errors, 0);
  }
});

test('UDP or TCP to port 0 is dropped or reset and counted, never thrown out of send()', { timeout: 20_000 }, async (t) => {
  const h = setup(t);
  assert.doesNotThrow(() => h.send(udpFrame(GUEST, 5000, HOST, 0, Buffer.from('x'))));
  assert.doesNotThrow(() => h.send(udpFrame(GUEST, 5001, ip('192.0.2.1'), 0, Buffer.from('x'))));
  assert.equal(h.user.stats()['drop.unreachable'], 2);
  h.send(tcpFrame(GUEST, HOST, { srcPort: 42010, dstPort: 0, seq: 7, ack: 0, flags: SYN }));
  assert.equal((await h.guest.next(tcpTo(42010, RST))).tcp!.ack, 8);
  assert.equal(h.user.stats().tcpRefused, 1);
  assert.equal(h.user.stats().udpFlows, 0);
});

test('random frames to the gateway and DNS addresses never throw out of send()', { timeout: 20_000 }, async (t) => {
  const closed = await closedPort();
  const h = setup(t, { resolver: { address: '127.0.0.1', port: await udpEcho(t) } });
  for (const seed of [1, 2, 3]) {
    const next = rng(seed);
    const pick = <T>(xs: T[]): T => xs[Math.floor(next() * xs.length)]!;
    // Ports that reach nothing real on this host: 0, DHCP, a closed one, and DNS only through the resolver.
    const port = () => pick([0, 0, 67, 68, closed]);
    for (let i = 0; i < 3000; i++) {
      if (i % 100 === 0) await new Promise(setImmediate); // let the stack's sockets and timers run
      const dst = pick([HOST, DNS, DNS, GUEST, 0xffffffff, ip('10.0.2.99')]);
      const body = Uint8Array.from({ length: Math.floor(next() * 80) }, () => Math.floor(next() * 256));
      const frame = pick([
        () => udpFrame(GUEST, port(), dst, dst === DNS ? 53 : port(), body),
        () =>
          tcpFrame(GUEST, dst, {
            srcPort: port(),
            dstPort: port(),
            seq: Math.floor(next() * 2 ** 32),
            ack: Math.floor(next() * 2 ** 32),
            flags: Math.floor(next() * 64),
            window: pick([0, 1, 65535]),
            mss: pick([undefined, 0, 1, 65535]),
            payload: body,
          }),
        () => ipv4Frame(pick([1, 6, 17, 41]), GUEST, dst, body),
      ])();
      if (next() < 0.3) frame[14 + Math.floor(next() * (frame.length - 14))] = Math.floor(next() * 256); // a corrupt header or payload byte
      assert.doesNotThrow(() => h.send(frame), `seed ${seed}, frame ${i}`);
    }
  }
  assert.equal(h.user.stats().errors, 0);
});

test('TCP connections past max-tcp are reset and counted; a closed one frees its place', { timeout: 20_000 }, async (t) => {
  const port = await tcpServer(t);
  const h = setup(t, { limits: { maxTcp: 4 } });
  for (let i = 0; i < 6; i++) h.send(tcpFrame(GUEST, HOST, { srcPort: 43000 + i, dstPort: port, seq: 1000, ack: 0, flags: SYN }));
  const answers = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => h.guest.next(tcpTo(43000 + i))));
  assert.deepEqual(
    answers.map((a) => a.tcp!.flags & (SYN | RST)),
    [SYN, SYN, SYN, SYN, RST, RST],
  );
  assert.equal(h.user.stats().tcpOverLimit, 2);
  assert.equal(h.user.stats().tcpOpen, 4);
  h.send(tcpFrame(GUEST, HOST, { srcPort: 43000, dstPort: port, seq: 1001, ack: 0, flags: RST }));
  assert.equal(h.user.stats().tcpOpen, 3);
  h.send(tcpFrame(GUEST, HOST, { srcPort: 43010, dstPort: port, seq: 1000, ack: 0, flags: SYN }));
  assert.equal((await h.guest.next(tcpTo(43010))).tcp!.flags & (SYN | RST), SYN);
});

test('hostfwd connections count toward max-tcp: past it, the host client is reset', { timeout: 20_000 }, async (t) => {
  const port = await tcpServer(t);
  const hostPort = await closedPort();
  const h = setup(t, { limits: { maxTcp: 1 }, hostForwards: [{ hostAddress: '127.0.0.1', hostPort, guestPort: 8080 }] });
  await h.user.listen();
  await handshake(h, port, 43100);
  const client = net.connect(hostPort, '127.0.0.1');
  client.on('error', () => {});
  t.after(() => client.destroy());
  await within(new Promise((r) => client.on('close', r)), 3000, 'reset of the host client');
  assert.equal(h.user.stats().hostfwdOverLimit, 1);
  assert.equal(h.guest.frames.filter(tcpTo(8080)).length, 0, 'no SYN went to the guest');
  assert.equal(h.user.stats().tcpOpen, 1);
});

test('an idle TCP connection is reset after tcp-idle; traffic keeps it open', { timeout: 20_000 }, async (t) => {
  let hostClosed = false;
  const port = await tcpServer(t, (s) => s.on('close', () => (hostClosed = true)));
  const h = setup(t, { limits: { tcpIdle: 0.5 } });
  const { mine, theirs } = await handshake(h, port, 43200);
  for (let i = 0; i < 8; i++) {
    await sleep(100);
    h.send(tcpFrame(GUEST, HOST, { srcPort: 43200, dstPort: port, seq: mine, ack: theirs, flags: ACK }));
  }
  assert.equal(h.user.stats().tcpOpen, 1, 'still open after 800 ms of keepalives');
  const rst = await h.guest.next(tcpTo(43200, RST), 3000);
  assert.equal(rst.tcp!.ack, mine);
  assert.equal(h.user.stats().tcpIdleClosed, 1);
  assert.equal(h.user.stats().tcpOpen, 0);
  for (let i = 0; i < 20 && !hostClosed; i++) await sleep(50);
  assert.ok(hostClosed, 'the host socket was closed too');
});

test('UDP flows past max-udp are dropped and counted; idle flows close after udp-idle', { timeout: 20_000 }, async (t) => {
  const echo = await udpEcho(t);
  const h = setup(t, { limits: { maxUdp: 3, udpIdle: 0.3 } });
  for (let i = 0; i < 5; i++) h.send(udpFrame(GUEST, 44000 + i, HOST, echo, Buffer.from(`ping ${i}`)));
  for (let i = 0; i < 3; i++) await h.guest.next((p) => p.udp?.dstPort === 44000 + i);
  assert.equal(h.user.stats().udpFlows, 3);
  assert.equal(h.user.stats().udpOverLimit, 2);
  await sleep(300);
  assert.equal(h.guest.frames.filter((p) => !!p.udp).length, 0, 'no reply to the dropped datagrams');
  await sleep(400);
  assert.equal(h.user.stats().udpFlows, 0);
  assert.equal(h.user.stats().udpIdleClosed, 3);
  h.send(udpFrame(GUEST, 44004, HOST, echo, Buffer.from('again')));
  assert.equal(Buffer.from((await h.guest.next((p) => p.udp?.dstPort === 44004)).udp!.payload).toString(), 'again');
});

test('guest data past the window is dropped, not buffered: a host that does not read costs at most tcp-buffer', { timeout: 20_000 }, async (t) => {
  const pattern = (offset: number) => (offset * 131) & 255;
  let serverSocket: net.Socket | undefined;
  const port = await tcpServer(t, (s) => {
    serverSocket = s;
    s.pause(); // a service that does not read
  });
  const h = setup(t);
  const { mine, theirs } = await handshake(h, port, 43300);
  // A guest that ignores the window: it keeps sending the next bytes, whatever is acknowledged.
  let sent = 0;
  let acked = 0;
  let window = 65535;
  const LIMIT = 48 * 2 ** 20;
  const SEG = 1460;
  while (sent < LIMIT && sent - acked < 2 ** 20) {
    for (let i = 0; i < 64; i++, sent += SEG) {
      const payload = Uint8Array.from({ length: SEG }, (_, k) => pattern(sent + k));
      h.send(tcpFrame(GUEST, HOST, { srcPort: 43300, dstPort: port, seq: (mine + sent) >>> 0, ack: theirs, flags: ACK, payload }));
    }
    await sleep(1);
    for (const f of h.guest.frames.splice(0)) {
      if (f.tcp?.dstPort !== 43300) continue;
      acked = Math.max(acked, (f.tcp.ack - mine) | 0);
      window = f.tcp.window;
    }
  }
  assert.ok(sent - acked >= 2 ** 20, `tsvisor acknowledged ${acked} of ${sent} bytes sent past its window`);
  assert.equal(window, 0);
  const s = h.user.stats();
  assert.ok(s.tcpWindowDrops! > 0);
  assert.ok(s.tcpBufferedToHost! <= DEFAULT_USER_LIMITS.tcpBuffer, `${s.tcpBufferedToHost} bytes buffered`);
  // The host reads again: the window reopens, and what was acknowledged (and only that) arrives, in order.
  assert.ok(serverSocket);
  let received = 0;
  let inOrder = true;
  const ended = new Promise<void>((r) => serverSocket!.on('end', r));
  serverSocket.on('data', (d: Buffer) => {
    for (let k = 0; k < d.length; k++) if (d[k] !== pattern(received + k)) inOrder = false;
    received += d.length;
  });
  serverSocket.resume();
  const update = await h.guest.next((p) => tcpTo(43300)(p) && p.tcp!.window > 0, 5000);
  assert.equal((update.tcp!.ack - mine) | 0, acked);
  h.send(tcpFrame(GUEST, HOST, { srcPort: 43300, dstPort: port, seq: (mine + acked) >>> 0, ack: theirs, flags: ACK | FIN }));
  await within(ended, 5000, 'end of the stream at the host');
  assert.equal(received, acked);
  assert.ok(inOrder);
});

test('a front-end that throws while taking a frame closes only that connection or flow, and is counted', { timeout: 20_000 }, async (t) => {
  const hostSide: net.Socket[] = [];
  const port = await tcpServer(t, (s) => hostSide.push(s));
  const echo = await udpEcho(t);
  const h = setup(t);
  await handshake(h, port, 43400);
  const { mine, theirs } = await handshake(h, port, 43401);
  for (let i = 0; i < 20 && hostSide.length < 2; i++) await sleep(20);
  const receive = h.guest.receive.bind(h.guest);
  h.guest.receive = () => {
    throw new Error('front-end failure');
  };
  hostSide[0]!.write('data the front-end cannot take');
  h.send(udpFrame(GUEST, 44100, HOST, echo, Buffer.from('ping')));
  for (let i = 0; i < 40 && (h.user.stats().tcpOpen !== 1 || h.user.stats().udpFlows !== 0); i++) await sleep(25);
  assert.equal(h.user.stats().tcpOpen, 1, 'the connection that failed closed');
  assert.equal(h.user.stats().udpFlows, 0, 'the flow that failed closed');
  assert.equal(h.user.stats().errors, 2);
  h.guest.receive = receive;
  hostSide[1]!.write('still here');
  const data = await h.guest.next((p) => tcpTo(43401)(p) && p.tcp!.payload.length > 0);
  assert.equal(Buffer.from(data.tcp!.payload).toString(), 'still here');
  assert.equal(data.tcp!.seq, theirs);
  assert.equal(data.tcp!.ack, mine);
});
