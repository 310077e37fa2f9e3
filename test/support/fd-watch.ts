// The main thread's fd watching, turned by hand: transports and main-thread data
// planes register their kick and call fds here, and pump() runs the handlers the
// event loop would run, synchronously, so a test can assert right after a kick.
import type { MsiSink } from '../../src/devices/pci/msix.js';
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { onMainThread, type MainThreadDevice, type WatchFd } from '../../src/virtio/in-process.js';
import { VirtioPciDevice } from '../../src/virtio/pci-transport.js';

export class ManualWatch {
  private readonly handlers = new Map<number, () => void>();
  private next = 0;

  readonly watch: WatchFd = (_fd, onReadable) => {
    const token = this.next++;
    this.handlers.set(token, onReadable);
    return () => this.handlers.delete(token);
  };

  /** Watches not taken back (after close, none may be left). */
  get watched(): number {
    return this.handlers.size;
  }

  /**
   * Runs every handler a few rounds (each drains its own eventfd and does nothing
   * when it was quiet): a kick's completion signals a call fd, whose handler raises the interrupt.
   */
  pump(rounds = 3): void {
    for (let r = 0; r < rounds; r++) {
      for (const [token, handler] of [...this.handlers]) if (this.handlers.has(token)) handler();
    }
  }
}

/** A main-thread device behind a virtio-pci transport, as the machine plugs it, with the fd watching in the test's hands. */
export function mainThreadTransport(device: MainThreadDevice, memory: GuestMemory, msi: MsiSink): { dev: VirtioPciDevice; pump: () => void } {
  const w = new ManualWatch();
  const dev = new VirtioPciDevice(onMainThread(device, { memory, watch: w.watch }), { memory, msi, watch: w.watch });
  return { dev, pump: () => w.pump() };
}
