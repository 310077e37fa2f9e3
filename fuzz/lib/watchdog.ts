// A case that loops synchronously never returns to the event loop, so the budget
// timer in runCase cannot fire. A watchdog thread watches a shared "case
// running" word: when the same case has run for too long, it saves the input
// as a hang and ends the process, which is then the only way out.
import path from 'node:path';
import { Worker } from 'node:worker_threads';

/** Inputs larger than this are saved cut to it: enough to replay any real case. */
const MAX_SAVED = 1 << 20;

const WATCHER = `
const { workerData } = require('node:worker_threads');
const fs = require('node:fs');
const { state, input, file, limitMs } = workerData;
let lastCase = -1;
let since = Date.now();
setInterval(() => {
  const running = Atomics.load(state, 0);
  if (running !== lastCase) { lastCase = running; since = Date.now(); return; }
  if (running === 0 || Date.now() - since < limitMs) return;
  const data = input.subarray(0, Atomics.load(state, 1));
  fs.mkdirSync(require('node:path').dirname(file), { recursive: true });
  fs.writeFileSync(file, data);
  fs.writeFileSync(file + '.txt', 'hang: the case ran synchronously for over ' + limitMs + ' ms without returning\\n');
  process.stderr.write('fuzz: synchronous hang, input saved to ' + file + '\\n');
  process.kill(process.pid, 'SIGKILL');
}, 250);
`;

export class HangWatchdog {
  /** [0]: the running case's number (0: none), [1]: its input's length. */
  private readonly state = new Int32Array(new SharedArrayBuffer(8));
  private readonly input = new Uint8Array(new SharedArrayBuffer(MAX_SAVED));
  private readonly worker: Worker;
  private cases = 0;

  constructor(crashesDir: string, target: string, limitMs: number) {
    const file = path.join(crashesDir, `${target}-synchronous-hang`);
    this.worker = new Worker(WATCHER, { eval: true, workerData: { state: this.state, input: this.input, file, limitMs } });
    this.worker.unref();
  }

  enter(data: Uint8Array): void {
    const n = Math.min(data.length, MAX_SAVED);
    this.input.set(data.subarray(0, n));
    Atomics.store(this.state, 1, n);
    this.cases = (this.cases % 0x7fffffff) + 1;
    Atomics.store(this.state, 0, this.cases);
  }

  leave(): void {
    Atomics.store(this.state, 0, 0);
  }

  stop(): Promise<number> {
    return this.worker.terminate();
  }
}
