// virtio-rng (virtio 1.x, "Entropy Device"): fills each buffer the driver offers
// with bytes from the host's CSPRNG.
import { randomFillSync } from 'node:crypto';
import { totalLength, writeStream } from './chain.js';
import { VirtioId } from './device.js';
import { completeChain, drainQueue, type ActiveQueues, type MainThreadDevice } from './in-process.js';

/** The most one request gets, so a driver asking for gigabytes cannot stall the VMM. */
const MAX_REQUEST = 64 * 1024;

export class VirtioRng implements MainThreadDevice {
  readonly type = VirtioId.RNG;
  readonly features = 0n;
  readonly queueSizes = [256];
  readonly configSize = 0;
  private active: ActiveQueues | undefined;
  private readonly counters = { requests: 0, bytes: 0 };

  constructor(readonly name = 'virtio-rng') {}

  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  writeConfig(): void {}

  activate(active: ActiveQueues): void {
    this.active = active;
  }

  reset(): void {
    this.active = undefined;
  }

  queueNotify(): void {
    const active = this.active;
    if (!active) return;
    drainQueue(active, 0, (chain) => {
      const bytes = randomFillSync(new Uint8Array(Math.min(totalLength(chain.writable), MAX_REQUEST)));
      const n = writeStream(active.memory, chain.writable, 0, bytes);
      this.counters.requests++;
      this.counters.bytes += n;
      completeChain(active, 0, chain.head, n);
    });
  }

  stats(): Record<string, number> {
    return { ...this.counters };
  }

  async close(): Promise<void> {
    this.active = undefined;
  }
}
