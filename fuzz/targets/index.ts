// Every fuzz target, by name, in the order `all` runs them.
import type { FuzzTarget } from '../lib/target.js';
import { e1000Target } from './e1000.js';
import { pcDevices } from './pc-devices.js';
import { pciConfig } from './pci-config.js';
import { virtioBlk } from './virtio-blk.js';
import { virtioConsole } from './virtio-console.js';
import { virtioNet } from './virtio-net.js';
import { virtioPci } from './virtio-pci.js';
import { virtioRng } from './virtio-rng.js';
import { userNet } from './user-net.js';
import { vhostUser } from './vhost-user.js';
import { virtqueue } from './virtqueue.js';

/** Each target has its own context type, hence any. */
export const TARGETS: readonly FuzzTarget<any>[] = [
  virtqueue,
  virtioPci,
  virtioBlk,
  virtioNet,
  virtioConsole,
  virtioRng,
  pciConfig,
  pcDevices,
  e1000Target,
  userNet,
  vhostUser,
];

export function targetNamed(name: string): FuzzTarget<any> | undefined {
  return TARGETS.find((t) => t.name === name);
}
