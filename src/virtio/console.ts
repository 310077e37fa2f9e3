// virtio-console (virtio 1.x, "Console Device"), single port: the guest's hvc0.
// Bytes the guest transmits go to the host's output; host input waits in a buffer
// until the driver offers receive buffers, so nothing typed early is lost.
//
// Input is held until the guest first transmits: Linux's driver posts receive
// buffers before it has registered hvc0, and drops data that lands in between.
// Without the multiport feature there is no "port open" message; the first
// output is the sign that the console is up.
import { readStream, totalLength, writeStream } from './chain.js';
import { readConfigBytes, VirtioId } from './device.js';
import { completeChain, drainQueue, guarded, type ActiveQueues, type MainThreadDevice } from './in-process.js';

const RECEIVE_QUEUE = 0;
const TRANSMIT_QUEUE = 1;
/** cols, rows, max_nr_ports, emerg_wr. */
const CONFIG_SIZE = 12;
/** Host input held while the guest offers no buffers; beyond this the oldest bytes go. */
const MAX_PENDING_INPUT = 1 << 20;

export class VirtioConsole implements MainThreadDevice {
  readonly type = VirtioId.CONSOLE;
  readonly features = 0n;
  readonly queueSizes = [64, 64];
  readonly configSize = CONFIG_SIZE;
  private readonly config = new Uint8Array(CONFIG_SIZE);
  private active: ActiveQueues | undefined;
  /** The guest has written to the port since the last reset. */
  private live = false;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private readonly counters = { bytesIn: 0, bytesOut: 0, inputDropped: 0 };

  constructor(
    private readonly output: (bytes: Uint8Array) => void,
    readonly name = 'virtio-console',
  ) {}

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.config, offset, data);
  }

  writeConfig(): void {}

  activate(active: ActiveQueues): void {
    this.active = active;
    this.deliverInput();
  }

  reset(): void {
    this.active = undefined;
    this.live = false;
  }

  /** Host input for the guest (keyboard, a pipe). */
  input(bytes: Uint8Array): void {
    this.pending.push(bytes.slice());
    this.pendingBytes += bytes.length;
    while (this.pendingBytes > MAX_PENDING_INPUT) {
      const dropped = this.pending.shift()!;
      this.pendingBytes -= dropped.length;
      this.counters.inputDropped += dropped.length;
    }
    this.deliverInput();
  }

  queueNotify(index: number): void {
    if (index === RECEIVE_QUEUE) this.deliverInput();
    else if (index === TRANSMIT_QUEUE) this.transmit();
  }

  private transmit(): void {
    const active = this.active;
    if (!active) return;
    drainQueue(active, TRANSMIT_QUEUE, (chain) => {
      const bytes = readStream(active.memory, chain.readable, 0, totalLength(chain.readable));
      if (bytes?.length) {
        this.counters.bytesOut += bytes.length;
        this.output(bytes);
      }
      completeChain(active, TRANSMIT_QUEUE, chain.head, 0);
    });
    if (!this.live) {
      this.live = true;
      this.deliverInput();
    }
  }

  /** Moves pending input into receive buffers while there are both. */
  private deliverInput(): void {
    const active = this.active;
    const q = active?.queues[RECEIVE_QUEUE];
    if (!active || !q || !this.live || this.pendingBytes === 0) return;
    guarded(active, 'console input', undefined, () => this.fillReceive(active));
  }

  private fillReceive(active: ActiveQueues): void {
    const data = Buffer.concat(this.pending);
    let used = 0;
    drainQueue(active, RECEIVE_QUEUE, (chain) => {
      if (used === data.length) return false; // keep the buffer for later input
      const n = writeStream(active.memory, chain.writable, 0, data.subarray(used));
      used += n;
      completeChain(active, RECEIVE_QUEUE, chain.head, n);
    });
    this.pending = used < data.length ? [data.subarray(used)] : [];
    this.pendingBytes = data.length - used;
    this.counters.bytesIn += used;
  }

  stats(): Record<string, number> {
    return { ...this.counters, pendingInput: this.pendingBytes };
  }

  async close(): Promise<void> {
    this.active = undefined;
  }
}
