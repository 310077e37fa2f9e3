// A network back-end for unit tests: records what the card sends, lets tests
// deliver packets through the attached port, and remembers resume() calls.
import type { FdPoller, NetBackend, NetPort } from '../../src/net/backend.js';

export class FakeBackend implements NetBackend {
  readonly description = 'fake';
  readonly offloads: boolean;
  port: NetPort | undefined;
  sent: { queue: number; packet: Uint8Array }[] = [];
  resumed: number[] = [];
  constructor(
    readonly queues = 1,
    offloads = false,
  ) {
    this.offloads = offloads;
  }
  attach(port: NetPort, _poller: FdPoller): void {
    this.port = port;
  }
  send(queue: number, packet: Uint8Array): void {
    this.sent.push({ queue, packet: packet.slice() });
  }
  resume(queue: number): void {
    this.resumed.push(queue);
  }
  setRxOffloads(): void {}
  stats(): Record<string, number> {
    return {};
  }
  async close(): Promise<void> {}
}

export const NO_POLLER: FdPoller = { add: () => 0, remove: () => {} };
