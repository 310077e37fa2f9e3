// Every fuzz target, by name, in the order `all` runs them.
import type { FuzzTarget } from '../lib/target.js';
import { virtioBlk } from './virtio-blk.js';
import { virtioConsole } from './virtio-console.js';
import { virtioNet } from './virtio-net.js';
import { virtioRng } from './virtio-rng.js';
import { virtqueue } from './virtqueue.js';

/** Each target has its own context type, hence any. */
export const TARGETS: readonly FuzzTarget<any>[] = [virtqueue, virtioBlk, virtioNet, virtioConsole, virtioRng];

export function targetNamed(name: string): FuzzTarget<any> | undefined {
  return TARGETS.find((t) => t.name === name);
}
