// virtio-console under a hostile driver: transmit and receive queues over any
// ring, and host input arriving at any moment. Oracle: host input held for the
// guest stays under the console's limit.
import { VirtioConsole } from '../../src/virtio/console.js';
import { firstArgs, operations, opsArbitrary } from '../lib/bytes.js';
import { check, type FuzzTarget } from '../lib/target.js';
import { RIG_OPS, VirtioRig } from '../lib/virtio-rig.js';

/** The shared operations, then host input. */
const KINDS = RIG_OPS + 1;
const MAX_PENDING_INPUT = 1 << 20;

export const virtioConsole: FuzzTarget = {
  name: 'virtio-console',
  description: 'virtio-console transmit/receive over hostile rings, with host input',
  arbitrary: opsArbitrary(KINDS, { weights: [4, 3, 1, 1, 2] }),
  run(_ctx, data) {
    const ops = operations(data);
    let output = 0;
    const device = new VirtioConsole((bytes) => (output += bytes.length));
    const rig = new VirtioRig(device, firstArgs(ops));
    for (const op of ops) {
      if (rig.step(op, KINDS)) continue;
      // Sometimes a large burst, as from a pipe.
      const bytes = op.args.u8() < 16 ? new Uint8Array(op.args.u32() % (2 * MAX_PENDING_INPUT)) : op.args.rest();
      device.input(bytes);
      check(device.stats().pendingInput! <= MAX_PENDING_INPUT, `console holds ${device.stats().pendingInput} bytes of input`);
    }
  },
};
