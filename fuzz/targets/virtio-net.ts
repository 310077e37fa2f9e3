// virtio-net under a hostile driver, over a back-end that records what it is
// given and sometimes refuses it (throws): transmit over any ring, host frames
// arriving for the receive queues (mergeable buffers or not), and control-queue
// commands, MAC tables of any declared size included. Oracles: nothing escapes queueNotify or receive (a
// refused packet included), and nothing bigger than a 64 KiB GSO packet reaches
// the back-end.
import { VNET_HDR_LEN } from '../../src/net/backend.js';
import { ETH_HLEN } from '../../src/net/packet.js';
import { MAX_CTRL_COMMAND } from '../../src/virtio/net.js';
import { InProcessNet } from '../../test/support/in-process-net.js';
import { firstArgs, le, operations, opsArbitrary, type ByteReader } from '../lib/bytes.js';
import { frame } from '../lib/frames.js';
import { RefusingBackend } from '../lib/pc.js';
import { check, type FuzzTarget } from '../lib/target.js';
import { RIG_OPS, VirtioRig } from '../lib/virtio-rig.js';

const Op = { RECEIVE: RIG_OPS, CONTROL: RIG_OPS + 1 } as const;
const KINDS = RIG_OPS + 2;
const MAX_TX_PACKET = VNET_HDR_LEN + ETH_HLEN + 0x10000;

/** A control command: class, command, data; MAC tables declare any entry count. */
function command(r: ByteReader): Uint8Array {
  const cls = r.u8() < 220 ? r.pick([0, 1, 4, 5]) : r.u8();
  const cmd = r.u8() < 220 ? r.u8() % 6 : r.u8();
  if (cls === 1 && cmd === 0) {
    const declared = (): number => (r.bool() ? r.below(70) : r.u32());
    const uni = declared();
    const multi = declared();
    const body = r.bytes(Math.min(MAX_CTRL_COMMAND + 64, 6 * (r.bool() ? uni + multi : r.below(128))));
    return Uint8Array.from([cls, cmd, ...le(uni, 4), ...body.subarray(0, 6 * Math.min(uni, 70)), ...le(multi, 4), ...body.subarray(6 * Math.min(uni, 70))]);
  }
  return Uint8Array.from([cls, cmd, ...r.bytes(r.u8() % 16)]);
}

export const virtioNet: FuzzTarget = {
  name: 'virtio-net',
  description: 'virtio-net transmit, receive of host frames and control commands, over a recording back-end',
  arbitrary: opsArbitrary(KINDS, { weights: [4, 3, 1, 1, 3, 2] }),
  run(_ctx, data) {
    const ops = operations(data);
    const r0 = firstArgs(ops);
    const backend = new RefusingBackend(1 + (r0.u8() & 1), r0.bool());
    const net = new InProcessNet(backend, { mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56), pairs: backend.queues });
    const rig = new VirtioRig(net, r0);
    backend.refuse(r0);
    const ctrlQueue = 2 * backend.queues;
    for (const op of ops) {
      const r = op.args;
      if (rig.step(op, KINDS)) {
        // handled: ring, kick, scribble or reset
      } else if (op.kind % KINDS === Op.RECEIVE) {
        const header = r.u8() < 200 ? new Uint8Array(VNET_HDR_LEN) : r.bytes(VNET_HDR_LEN);
        net.receive(r.u8() % backend.queues, Uint8Array.from([...header, ...frame(r)]));
      } else {
        const cmd = command(r);
        rig.driver.post(ctrlQueue, [
          { addr: rig.driver.alloc(cmd.length, cmd), len: cmd.length, write: false },
          { addr: rig.driver.alloc(1), len: 1, write: true },
        ]);
        if (!rig.active.stopped) net.queueNotify(ctrlQueue);
      }
      for (const { packet } of backend.sent) check(packet.length <= MAX_TX_PACKET, `a ${packet.length}-byte packet reached the back-end`);
      backend.sent = [];
    }
  },
};
