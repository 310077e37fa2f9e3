// A vhost-user back-end that behaves until one chosen request, then misbehaves:
// `node hostile-vhost-user-backend.js SOCKET REQUEST MODE`, MODE one of nack (a
// failure status), garbage (the reply of another request), short (a truncated
// reply), hangup (closes the connection). It serves one front-end and exits.
// Without arguments it does nothing (the test runner runs every file under dist/test).
import { closeFd } from '../../src/host/libc.js';
import { sendWithFds, unixAccept, unixListen, waitReadable } from '../../src/host/unix-socket.js';
import { MessageReader } from '../../src/vhost/user/connection.js';
import {
  ANSWERED,
  configPayload,
  decodeConfig,
  encode,
  F_PROTOCOL_FEATURES,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  ProtocolFeature,
  Request,
  u64Payload,
  vringStatePayload,
  type Message,
} from '../../src/vhost/user/protocol.js';
import { bit, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1 } from '../../src/virtio/device.js';

const [socket, misbehaveAt, mode] = process.argv.slice(2);

if (socket) {
  const listenFd = unixListen(socket);
  process.stdout.write('listening\n');
  waitReadable(listenFd, 30_000);
  const fd = unixAccept(listenFd)!;
  const reader = new MessageReader(fd);
  const features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_INDIRECT_DESC) | bit(VIRTIO_F_RING_EVENT_IDX) | bit(F_PROTOCOL_FEATURES);
  const protocol = bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.CONFIG) | bit(ProtocolFeature.MQ);
  const answer = (request: number, payload: Uint8Array): Uint8Array => {
    switch (request) {
      case Request.GET_FEATURES:
        return u64Payload(features);
      case Request.GET_PROTOCOL_FEATURES:
        return u64Payload(protocol);
      case Request.GET_QUEUE_NUM:
        return u64Payload(1n);
      case Request.GET_VRING_BASE:
        return vringStatePayload({ index: 0, num: 0 });
      case Request.GET_CONFIG: {
        const c = decodeConfig({ request, payload });
        const data = new Uint8Array(c.data.length);
        data[0] = 64; // capacity: 64 sectors
        return configPayload({ offset: c.offset, flags: c.flags, data });
      }
      default:
        return u64Payload(0n);
    }
  };
  const pending: Message[] = [];
  for (;;) {
    if (!pending.length) {
      if (!waitReadable(fd, 60_000)) break;
      const got = reader.read();
      if (got === 'closed') break;
      pending.push(...got);
      continue;
    }
    const m = pending.shift()!;
    for (const f of m.fds) closeFd(f);
    const ack = ANSWERED.has(m.request) || (m.flags & FLAG_NEED_REPLY) !== 0;
    if (m.request === Request[misbehaveAt as keyof typeof Request]) {
      if (mode === 'hangup') {
        for (const x of pending) for (const f of x.fds) closeFd(f);
        break;
      }
      if (mode === 'nack' && !ANSWERED.has(m.request)) sendWithFds(fd, encode(m.request, FLAG_REPLY, u64Payload(1n)));
      else if (mode === 'garbage') sendWithFds(fd, encode(Request.GET_QUEUE_NUM, FLAG_REPLY, u64Payload(7n)));
      else if (mode === 'short') sendWithFds(fd, encode(m.request, FLAG_REPLY, new Uint8Array(3)));
      continue;
    }
    if (ack) sendWithFds(fd, encode(m.request, FLAG_REPLY, answer(m.request, m.payload)));
  }
  closeFd(fd);
  closeFd(listenFd);
}
