// `tsvisor bench io-paths`: the comparison articles on KVM I/O make by hand. The
// default guest downloads the same file over user-mode networking twice, once
// through an emulated e1000 (every register access an exit) and once through
// virtio-net (queues in memory, kicks through ioeventfd, interrupts through
// irqfd), and the table shows what each megabyte cost in exits and interrupts.
// The counters are the card's own (--stats-json), taken just before and just
// after the download, so boot and driver setup are left out.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { defaultGuest, DEFAULT_GUEST_CMDLINE, USERSPACE_BANNER } from '../guest/default-guest.js';
import { runNested } from '../nested/nested-host.js';
import { chooseAccel, type AccelRequest } from '../vmm/accel.js';
import type { MachineStats, NicStats } from '../vmm/machine.js';
import { UsageError, UserError } from './errors.js';
import { formatSize, parseSize } from './size.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));
const MODELS = ['e1000', 'virtio-net-pci'] as const;
const SESSION_TIMEOUT_MS = 15 * 60_000;

export interface IoPathResult {
  model: string;
  seconds: number;
  bytes: number;
  exits: number;
  interrupts: number;
  kicks: number;
}

export async function benchCommand(argv: string[]): Promise<number> {
  const [what, ...rest] = argv;
  if (what !== 'io-paths') throw new UsageError(`bench: unknown benchmark "${what ?? ''}" (known: io-paths)`);
  let values;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: { size: { type: 'string' }, accel: { type: 'string' }, kernel: { type: 'string' }, initrd: { type: 'string' } },
      strict: true,
    }));
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]!);
  }
  const size = parseSize(values.size ?? '64M', '--size');
  const request = (values.accel ?? 'auto') as AccelRequest;
  if (!['auto', 'kvm', 'nested'].includes(request)) throw new UsageError(`--accel "${request}" must be auto, kvm or nested`);
  if ((values.kernel === undefined) !== (values.initrd === undefined))
    throw new UsageError('--kernel and --initrd go together (a guest with busybox udhcpc and wget)');
  const { accel } = chooseAccel(request);
  // The default guest is fetched here: the nested host has no package cache or network of its own.
  const guest = values.kernel && values.initrd ? { kernel: values.kernel, initrd: values.initrd } : defaultGuest();
  if (accel === 'nested') {
    const args = [
      BIN,
      'bench',
      'io-paths',
      '--size',
      formatSize(size),
      '--accel',
      'kvm',
      '--kernel',
      path.resolve(guest.kernel),
      '--initrd',
      path.resolve(guest.initrd),
    ];
    return runNested({ command: process.execPath, args, memoryMiB: 2048 });
  }
  const results: IoPathResult[] = [];
  for (const model of MODELS) results.push(await measure(model, size, guest));
  process.stdout.write(formatTable(results, size));
  return 0;
}

export function formatTable(results: IoPathResult[], size: number): string {
  const rows = [
    `io-paths: ${formatSize(size)} HTTP download into the default guest, user-mode networking`,
    'card              MB/s   exits/MB  interrupts/MB  kicks/MB',
  ];
  for (const r of results) {
    const mb = r.bytes / 2 ** 20;
    const cols = [(r.bytes / 2 ** 20 / r.seconds).toFixed(1), (r.exits / mb).toFixed(1), (r.interrupts / mb).toFixed(1), (r.kicks / mb).toFixed(1)];
    rows.push(`${r.model.padEnd(14)} ${cols[0]!.padStart(7)} ${cols[1]!.padStart(10)} ${cols[2]!.padStart(14)} ${cols[3]!.padStart(17)}`);
  }
  return rows.join('\n') + '\n';
}

/** Serves `size` bytes at /data and notes when each response started and finished. */
function dataServer(size: number): Promise<{ port: number; timings: { start: number; end: number }[]; close(): void }> {
  const chunk = Buffer.alloc(1 << 20, 0x5a);
  const timings: { start: number; end: number }[] = [];
  const server = http.createServer((_req, res) => {
    const start = performance.now();
    res.setHeader('content-length', size);
    let left = size;
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, chunk.length);
        left -= n;
        if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return void res.once('drain', pump);
      }
      res.end(() => timings.push({ start, end: performance.now() }));
    };
    pump();
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ port: (server.address() as { port: number }).port, timings, close: () => server.close() })),
  );
}

function nic(stats: MachineStats): NicStats {
  const n = stats.nics[0];
  if (!n) throw new UserError('the guest had no network card');
  return n;
}

async function measure(model: (typeof MODELS)[number], size: number, guest: { kernel: string; initrd: string }): Promise<IoPathResult> {
  const server = await dataServer(size);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-io-paths-'));
  const statsFile = path.join(dir, 'stats.json');
  const args = [BIN, 'run', '--accel', 'kvm', '--kernel', guest.kernel, '--initrd', guest.initrd, '--append', DEFAULT_GUEST_CMDLINE, '--memory', '512M'];
  args.push('--netdev', 'user,id=n0', '--device', `${model},netdev=n0`, '--stats-json', statsFile);
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  let before: NicStats | undefined;
  const snapshot = async (): Promise<NicStats> => {
    fs.rmSync(statsFile, { force: true });
    child.kill('SIGUSR1');
    for (let i = 0; i < 100 && !fs.existsSync(statsFile); i++) await new Promise((r) => setTimeout(r, 50));
    return nic(JSON.parse(fs.readFileSync(statsFile, 'utf8')) as MachineStats);
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new UserError(`${model}: the guest did not finish within ${SESSION_TIMEOUT_MS / 60000} minutes`)),
        SESSION_TIMEOUT_MS,
      );
      let stage = 0;
      child.stdout.on('data', (d) => {
        out += d;
        if (stage === 0 && out.includes(USERSPACE_BANNER)) {
          stage = 1;
          child.stdin.write('udhcpc -i eth0 -q -n -t 10 >/dev/null && echo IO-PATHS-$((1+1))-LEASED\n');
        } else if (stage === 1 && out.includes('IO-PATHS-2-LEASED')) {
          stage = 2;
          void snapshot().then((s) => {
            before = s;
            child.stdin.end(`wget -q -O /dev/null http://10.0.2.2:${server.port}/data && echo IO-PATHS-$((1+1))-DONE; poweroff\n`);
          }, reject);
        }
      });
      child.on('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    if (!out.includes('IO-PATHS-2-DONE') || !before || server.timings.length !== 1)
      throw new UserError(`${model}: the download did not complete:\n${out.slice(-2000)}\n${err.slice(-2000)}`);
    const after = nic(JSON.parse(fs.readFileSync(statsFile, 'utf8')) as MachineStats);
    const exits = (s: NicStats) => s.exits.mmioReads + s.exits.mmioWrites + s.exits.pioReads + s.exits.pioWrites;
    const t = server.timings[0]!;
    return {
      model: model === 'e1000' ? 'e1000' : 'virtio-net',
      seconds: (t.end - t.start) / 1000,
      bytes: size,
      exits: exits(after) - exits(before),
      interrupts: after.interrupts - before.interrupts,
      kicks: after.kicks - before.kicks,
    };
  } finally {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
