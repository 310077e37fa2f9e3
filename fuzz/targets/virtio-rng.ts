// virtio-rng under a hostile driver: its one queue, kicked over any ring.
import { VirtioRng } from '../../src/virtio/rng.js';
import { firstArgs, operations, opsArbitrary } from '../lib/bytes.js';
import type { FuzzTarget } from '../lib/target.js';
import { RIG_OPS, VirtioRig } from '../lib/virtio-rig.js';

export const virtioRng: FuzzTarget = {
  name: 'virtio-rng',
  description: 'virtio-rng requests over hostile rings',
  arbitrary: opsArbitrary(RIG_OPS, { weights: [4, 3, 1, 1] }),
  run(_ctx, data) {
    const ops = operations(data);
    const rig = new VirtioRig(new VirtioRng(), firstArgs(ops));
    for (const op of ops) rig.step(op, RIG_OPS);
  },
};
