// A network back-end for unit tests: records what the card sends, lets tests
// deliver packets through the attached port, and remembers resume() calls. Like
// the tap, it holds a packet the port refused and offers it again on resume().
import type { FdPoller, NetBackend, NetPort } from '../../src/net/backend.js';

export class FakeBackend implements NetBackend {
  readonly description = 'fake';
  readonly offloads: boolean;
  port: NetPort | undefined;
  sent: { queue: number; packet: Uint8Array }[] = [];
  resumed: number[] = [];
  readonly held = new Map<number, Uint8Array>();
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
  /** Delivers a packet as a back-end does: one the port refuses is held for resume(). */
  offer(queue: number, packet: Uint8Array): boolean {
    if (this.port!.receive(queue, packet)) return true;
    this.held.set(queue, packet);
    return false;
  }
  resume(queue: number): void {
    // A front-end that resumes in a loop would hang the test run: fail it instead.
    if (this.resumed.push(queue) > 1000) throw new Error('resume() called in a loop');
    const packet = this.held.get(queue);
    if (packet && this.held.delete(queue)) this.offer(queue, packet);
  }
  setRxOffloads(): void {}
  stats(): Record<string, number> {
    return {};
  }
  async close(): Promise<void> {}
}

export const NO_POLLER: FdPoller = { add: () => 0, remove: () => {} };
