// `tsvisor bench io-paths`: the comparison articles on KVM I/O make by hand. The
// default guest downloads the same file once per I/O path (IO_PATHS below): an
// emulated e1000 (every register access an exit), virtio-net served by tsvisor
// (queues in memory, kicks through ioeventfd, interrupts through irqfd), over
// user-mode networking and over a tap, vhost-net (the host kernel serves the
// queues, tsvisor only set them up) and vhost-user (tsvisor's virtio-net in a
// `tsvisor vhost-user-net` daemon serves them). For each the table shows what a megabyte cost:
// VM exits and kicks as tsvisor's card counts them (--stats-json), interrupts as
// the guest counts them (/proc/interrupts, so a path whose interrupts bypass tsvisor
// is counted too), and the CPU time of tsvisor's own threads and of its vCPU threads
// running the guest (/proc/PID/stat), all taken just before and just after the download, so boot and driver setup are left
// out. `--svg FILE` draws the same figures as a bar chart (svg-chart.ts).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
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
import { barChartSvg } from './svg-chart.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));
const SESSION_TIMEOUT_MS = 15 * 60_000;
const MiB = 2 ** 20;

/** The bench's tap and its subnet (the host at .1, the guest at .2); nothing routes beyond it. */
const TAP = 'tsvio0';
const TAP_NET = '192.168.78';

/** How the guest reaches the bench's HTTP server. */
interface Wire {
  /** What the host needs for it; a reason when it lacks it. */
  missing(): string | undefined;
  /** Makes it on the host; returns its removal. */
  up(): () => void;
  /** Guest shell commands that bring eth0 up and succeed once the server's address answers. */
  guestSetup: string;
  /** Where the server listens on the host, and the address the guest fetches from. */
  serverBind: string;
  serverFromGuest: string;
}

const WIRES = {
  /** tsvisor's user-mode networking: the guest's TCP ends in a host socket to the server on loopback. */
  user: {
    missing: () => undefined,
    up: () => () => {},
    guestSetup: 'udhcpc -i eth0 -q -n -t 10 >/dev/null',
    serverBind: '127.0.0.1',
    serverFromGuest: '10.0.2.2',
  },
  /** A tap with the host's address on it; the server listens there. */
  tap: {
    missing: () =>
      !hasNetAdmin() ? 'a tap needs root (CAP_NET_ADMIN); run as root, or with --accel nested' : !ipCommand() ? "a tap needs iproute2's ip" : undefined,
    up: () => {
      if (fs.existsSync(`/sys/class/net/${TAP}`)) throw new UserError(`${TAP} already exists (a leftover? ip link del ${TAP})`);
      const ip = (...args: string[]) => execFileSync(ipCommand()!, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      ip('tuntap', 'add', TAP, 'mode', 'tap');
      try {
        ip('addr', 'add', `${TAP_NET}.1/24`, 'dev', TAP);
        ip('link', 'set', TAP, 'up');
      } catch (e) {
        ip('link', 'del', TAP);
        throw e;
      }
      return () => void ip('link', 'del', TAP);
    },
    guestSetup: [
      `ip addr add ${TAP_NET}.2/24 dev eth0 && ip link set eth0 up`,
      `for i in $(seq 60); do ping -c 1 -W 1 ${TAP_NET}.1 >/dev/null && break; done`,
    ].join(' && '),
    serverBind: `${TAP_NET}.1`,
    serverFromGuest: `${TAP_NET}.1`,
  },
} satisfies Record<string, Wire>;

/** The `--netdev` for the bench's tap. */
const tapNetdev = (opts: string) => `tap,id=n0,ifname=${TAP},script=no,downscript=no,${opts}`;

/**
 * One I/O path the bench measures. Adding a path is adding an entry to IO_PATHS:
 * its name, the wire, tsvisor's flags for the card and its back-end (netdev id
 * `n0`), and whatever else the host must have or run for it.
 */
export interface IoPathSpec {
  /** The row's name, and what `--paths` selects it by. */
  name: string;
  wire: keyof typeof WIRES;
  /** `tsvisor run` flags for the card and its back-end; `scratch` is a directory of the path's own (for sockets). */
  args: (scratch: string) => string[];
  /** false when the queues are served outside tsvisor (vhost): their kicks never reach it, and the table shows "–". */
  kicksInVmm: boolean;
  /** Files the host must have (device nodes). */
  requires?: string[];
  /** More host-side setup once the wire is up: a back-end process, whose CPU time counts as tsvisor's when it is tsvisor. */
  setup?: (scratch: string) => Promise<{ teardown: () => void | Promise<void>; pid?: number }>;
}

export const IO_PATHS: IoPathSpec[] = [
  { name: 'e1000/user', wire: 'user', args: () => ['--netdev', 'user,id=n0', '--device', 'e1000,netdev=n0'], kicksInVmm: true },
  { name: 'virtio-net/user', wire: 'user', args: () => ['--netdev', 'user,id=n0', '--device', 'virtio-net-pci,netdev=n0'], kicksInVmm: true },
  { name: 'virtio-net/tap', wire: 'tap', args: () => ['--netdev', tapNetdev('vhost=off'), '--device', 'virtio-net-pci,netdev=n0'], kicksInVmm: true },
  {
    name: 'vhost-net/tap',
    wire: 'tap',
    args: () => ['--netdev', tapNetdev('vhost=on'), '--device', 'virtio-net-pci,netdev=n0'],
    kicksInVmm: false,
    requires: ['/dev/vhost-net'],
  },
  {
    name: 'vhost-user/user',
    wire: 'user',
    args: (scratch) => [
      '--chardev',
      `socket,id=c0,path=${scratch}/net.sock`,
      '--netdev',
      'vhost-user,id=n0,chardev=c0',
      '--device',
      'virtio-net-pci,netdev=n0',
    ],
    kicksInVmm: false,
    // tsvisor's own virtio-net in a `tsvisor vhost-user-net` daemon, on its own user-mode network.
    setup: async (scratch) => {
      const daemon = spawn(process.execPath, [BIN, 'vhost-user-net', '--socket', `${scratch}/net.sock`, '--netdev', 'user,id=u0'], { stdio: 'ignore' });
      const exited = new Promise((r) => daemon.on('exit', r));
      for (let i = 0; i < 600 && !fs.existsSync(`${scratch}/net.sock`); i++) await new Promise((r) => setTimeout(r, 50));
      if (!fs.existsSync(`${scratch}/net.sock`)) throw new UserError('vhost-user/user: tsvisor vhost-user-net did not start listening');
      return {
        pid: daemon.pid,
        teardown: async () => {
          daemon.kill('SIGTERM');
          await exited;
        },
      };
    },
  },
];

export interface IoPathResult {
  path: string;
  /** The download's wall time as the server saw it. */
  seconds: number;
  bytes: number;
  /** The card's register exits (MMIO and PIO, reads and writes). */
  exits: number;
  /** Interrupts the guest took for the card (its /proc/interrupts lines). */
  interrupts: number;
  /** Queue kicks tsvisor's card woke for; null when they go elsewhere (vhost). */
  kicks: number | null;
  /** CPU time (user + system) of tsvisor's threads, less the time its vCPU threads ran the guest, in ms. */
  cpuMs: number;
  /** CPU time tsvisor's vCPU threads spent running the guest, in ms. */
  guestMs: number;
}

export interface IoPathsReport {
  size: number;
  /** When it was measured, ISO 8601. */
  date: string;
  results: IoPathResult[];
}

/** The figures per path, in table and chart order. */
export const METRICS: { heading: string; title: string; value: (r: IoPathResult) => number | null }[] = [
  { heading: 'MB/s', title: 'Throughput (MB/s), higher is better', value: (r) => r.bytes / MiB / r.seconds },
  { heading: 'exits/MB', title: 'VM exits per MB, lower is better', value: (r) => r.exits / (r.bytes / MiB) },
  { heading: 'interrupts/MB', title: 'Guest interrupts per MB', value: (r) => r.interrupts / (r.bytes / MiB) },
  { heading: 'kicks/MB', title: 'Queue kicks reaching tsvisor per MB', value: (r) => (r.kicks === null ? null : r.kicks / (r.bytes / MiB)) },
  { heading: 'CPU ms/MB', title: "CPU time in tsvisor's threads, not running the guest (ms per MB), lower is better", value: (r) => r.cpuMs / (r.bytes / MiB) },
  { heading: 'guest ms/MB', title: 'CPU time running the guest (ms per MB), lower is better', value: (r) => r.guestMs / (r.bytes / MiB) },
];

/** What the figures mean, under the table and the chart; `none` is how each writes a figure not measured. */
const notes = (none: string) => [
  "exits and kicks: tsvisor's card counters; interrupts: the guest's /proc/interrupts for the card;",
  "CPU: user + system time of tsvisor's threads (not a vhost worker's), less guest: its vCPU threads' time running the guest;",
  `kicks ${none}: the queues are served outside tsvisor, which never sees their kicks. Counted from just before to just after the download.`,
];

const formatValue = (v: number | null) => (v === null ? '–' : v.toFixed(1));

export function formatTable(report: IoPathsReport): string {
  const header = ['path', ...METRICS.map((m) => m.heading)];
  const rows = report.results.map((r) => [r.path, ...METRICS.map((m) => formatValue(m.value(r)))]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return (
    [`io-paths: ${formatSize(report.size)} HTTP download into the guest, ${report.date.slice(0, 10)}`, line(header), ...rows.map(line), ...notes('–')].join(
      '\n',
    ) + '\n'
  );
}

export function formatSvg(report: IoPathsReport): string {
  return barChartSvg({
    title: `tsvisor bench io-paths: ${formatSize(report.size)} HTTP download into the guest`,
    subtitle: `${report.date.slice(0, 10)}, one bar per I/O path (card/wire), each figure from just before to just after the download`,
    series: report.results.map((r) => r.path),
    groups: METRICS.map((m) => ({ title: m.title, values: report.results.map(m.value) })),
    notes: notes('n/a'),
  });
}

export async function benchCommand(argv: string[]): Promise<number> {
  const [what, ...rest] = argv;
  if (what !== 'io-paths') throw new UsageError(`bench: unknown benchmark "${what ?? ''}" (known: io-paths)`);
  let values;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        size: { type: 'string' },
        accel: { type: 'string' },
        kernel: { type: 'string' },
        initrd: { type: 'string' },
        paths: { type: 'string' },
        svg: { type: 'string' },
        json: { type: 'string' },
      },
      strict: true,
    }));
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]!);
  }
  const size = parseSize(values.size ?? '64M', '--size');
  const request = (values.accel ?? 'auto') as AccelRequest;
  if (!['auto', 'kvm', 'nested'].includes(request)) throw new UsageError(`--accel "${request}" must be auto, kvm or nested`);
  if ((values.kernel === undefined) !== (values.initrd === undefined))
    throw new UsageError('--kernel and --initrd go together (a guest with busybox udhcpc, ip, ping, awk and wget)');
  const selected = selectPaths(values.paths);
  for (const out of [values.svg, values.json]) {
    if (out === undefined) continue;
    try {
      fs.accessSync(path.dirname(path.resolve(out)), fs.constants.W_OK);
    } catch {
      throw new UserError(`cannot write ${out}: its directory is missing or not writable`);
    }
  }
  const { accel } = chooseAccel(request);
  // The default guest is fetched here: the nested host has no package cache or network of its own.
  const guest = values.kernel && values.initrd ? { kernel: values.kernel, initrd: values.initrd } : defaultGuest();
  let report: IoPathsReport;
  if (accel === 'nested') {
    // The bench runs again inside the nested host (as root there, so the taps can be
    // made); it prints the table and leaves its figures here for the chart.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-io-paths-'));
    try {
      const json = path.join(dir, 'report.json');
      const args = [BIN, 'bench', 'io-paths', '--size', formatSize(size), '--accel', 'kvm', '--kernel', path.resolve(guest.kernel)];
      args.push('--initrd', path.resolve(guest.initrd), '--json', json);
      if (values.paths !== undefined) args.push('--paths', values.paths);
      const status = await runNested({ command: process.execPath, args, memoryMiB: 2048, writable: [dir] });
      if (status !== 0) return status;
      report = JSON.parse(fs.readFileSync(json, 'utf8')) as IoPathsReport;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  } else {
    const runnable: IoPathSpec[] = [];
    for (const spec of selected) {
      const why = missing(spec);
      if (why === undefined) runnable.push(spec);
      else if (values.paths !== undefined) throw new UserError(`io-paths: ${spec.name} cannot run here: ${why}`);
      else process.stderr.write(`io-paths: skipping ${spec.name}: ${why}\n`);
    }
    if (runnable.length === 0) throw new UserError('io-paths: no path can run here');
    const clkTck = clockTicks();
    report = { size, date: new Date().toISOString(), results: [] };
    for (const spec of runnable) report.results.push(await measure(spec, size, guest, clkTck));
    process.stdout.write(formatTable(report));
  }
  if (values.json !== undefined) fs.writeFileSync(values.json, JSON.stringify(report, null, 1) + '\n');
  if (values.svg !== undefined) {
    fs.writeFileSync(values.svg, formatSvg(report));
    process.stderr.write(`io-paths: chart written to ${values.svg}\n`);
  }
  return 0;
}

/** The paths `--paths a,b` names, in the order given; all of them without it. */
export function selectPaths(list: string | undefined, paths: IoPathSpec[] = IO_PATHS): IoPathSpec[] {
  if (list === undefined) return paths;
  const names = list.split(',').map((s) => s.trim());
  return names.map((n) => {
    const spec = paths.find((p) => p.name === n);
    if (!spec) throw new UsageError(`--paths: unknown path "${n}" (known: ${paths.map((p) => p.name).join(', ')})`);
    return spec;
  });
}

function missing(spec: IoPathSpec): string | undefined {
  const file = spec.requires?.find((f) => !fs.existsSync(f));
  return WIRES[spec.wire].missing() ?? (file === undefined ? undefined : `${file} is missing`);
}

/** CAP_NET_ADMIN (bit 12) in this process's effective capabilities. */
function hasNetAdmin(): boolean {
  const cap = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1];
  return cap !== undefined && (BigInt(`0x${cap}`) & (1n << 12n)) !== 0n;
}

/** iproute2's ip: on PATH, or in the sbin directories a user's PATH may leave out. */
function ipCommand(): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean), '/usr/sbin', '/sbin'];
  return dirs.map((d) => path.join(d, 'ip')).find((f) => fs.existsSync(f));
}

/** Clock ticks per second, the unit of /proc/PID/stat's CPU times. */
function clockTicks(): number {
  const n = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim());
  return Number.isInteger(n) && n > 0 ? n : 100;
}

/**
 * A /proc/PID/stat (or task stat) line's command name, its user + system CPU time and
 * the part of it spent running a guest (KVM counts a vCPU thread's time in guest mode
 * as user time, and as guest time too), in clock ticks.
 */
export function parseProcStat(stat: string): { comm: string; ticks: number; guestTicks: number } {
  const open = stat.indexOf('(');
  const close = stat.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error(`not a /proc stat line: ${stat.slice(0, 80)}`);
  // After the command: state (field 3) first, so utime (field 14) and stime (15) are at 11 and 12, guest_time (43) at 40.
  const fields = stat.slice(close + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const guestTicks = Number(fields[40] ?? 0);
  if (!Number.isFinite(ticks) || !Number.isFinite(guestTicks)) throw new Error(`no CPU times in: ${stat.slice(0, 80)}`);
  return { comm: stat.slice(open + 1, close), ticks, guestTicks };
}

/**
 * CPU ticks of a process's own threads, all of them, live and exited: running the
 * guest, and everything else less any vhost worker (since Linux 6.4 a vhost worker is
 * a thread of the process that owns the device; before, a kernel thread of its own).
 */
function processTicks(pid: number): { own: number; guest: number } {
  const all = parseProcStat(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  let own = all.ticks - all.guestTicks;
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const t = parseProcStat(fs.readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8'));
      if (t.comm.startsWith('vhost-')) own -= t.ticks;
    } catch {
      // The thread ended meanwhile.
    }
  }
  return { own, guest: all.guestTicks };
}

function writableDir(dir: string): string | undefined {
  try {
    fs.accessSync(dir, fs.constants.W_OK);
    return dir;
  } catch {
    return undefined;
  }
}

/** Serves `size` bytes at /data and notes when each response started and finished. */
function dataServer(size: number, host: string): Promise<{ port: number; timings: { start: number; end: number }[]; close(): void }> {
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
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve({ port: (server.address() as { port: number }).port, timings, close: () => server.close() }));
  });
}

function nic(stats: MachineStats): NicStats {
  const n = stats.nics[0];
  if (!n) throw new UserError('the guest had no network card');
  return n;
}

/**
 * A guest shell function printing the interrupts the guest took for eth0's card:
 * its virtio device's lines (config, input.N, output.N) or the e1000's "eth0" line,
 * summed over all CPUs.
 */
const GUEST_IRQS =
  `irqs() { D=$(basename $(readlink /sys/class/net/eth0/device)); awk -v d="$D" ` +
  `'$NF == "eth0" || $NF == d || index($NF, d "-") == 1 { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }' /proc/interrupts; }`;

interface Snapshot {
  nic: NicStats;
  ticks: { own: number; guest: number };
}

async function measure(spec: IoPathSpec, size: number, guest: { kernel: string; initrd: string }, clkTck: number): Promise<IoPathResult> {
  const wire: Wire = WIRES[spec.wire];
  // A tmpfs where there is one to write to: sockets cannot live on the nested host's 9p shares.
  const dir = fs.mkdtempSync(path.join(writableDir('/run') ?? os.tmpdir(), 'tsvisor-io-paths-'));
  const statsFile = path.join(dir, 'stats.json');
  const teardowns: (() => void | Promise<void>)[] = [];
  let child: ReturnType<typeof spawn> | undefined;
  let closed: Promise<void> | undefined;
  try {
    teardowns.push(wire.up());
    let backendPid: number | undefined;
    if (spec.setup) {
      const backend = await spec.setup(dir);
      teardowns.push(backend.teardown);
      backendPid = backend.pid;
    }
    const server = await dataServer(size, wire.serverBind);
    teardowns.push(() => server.close());
    const args = [BIN, 'run', '--accel', 'kvm', '--kernel', guest.kernel, '--initrd', guest.initrd, '--append', DEFAULT_GUEST_CMDLINE, '--memory', '512M'];
    args.push(...spec.args(dir), '--stats-json', statsFile);
    const proc = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    child = proc;
    closed = new Promise((resolve) => proc.on('close', () => resolve()));
    let out = '';
    let err = '';
    proc.stderr.on('data', (d) => (err += d));
    // The card's counters (SIGUSR1 makes tsvisor write them) and tsvisor's CPU time, at one instant.
    const snapshot = async (): Promise<Snapshot> => {
      fs.rmSync(statsFile, { force: true });
      const ticks = processTicks(proc.pid!);
      if (backendPid !== undefined) ticks.own += processTicks(backendPid).own;
      proc.kill('SIGUSR1');
      for (let i = 0; i < 600; i++) {
        await new Promise((r) => setTimeout(r, 50));
        try {
          return { nic: nic(JSON.parse(fs.readFileSync(statsFile, 'utf8')) as MachineStats), ticks };
        } catch (e) {
          if (e instanceof UserError) throw e;
          // Not there yet, or half written.
        }
      }
      throw new UserError(`${spec.name}: tsvisor wrote no counters within 30 s of SIGUSR1`);
    };
    let before: Snapshot | undefined;
    let after: Snapshot | undefined;
    let irqs: [number, number] | undefined;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.kill('SIGTERM');
        reject(new UserError(`${spec.name}: the guest did not finish within ${SESSION_TIMEOUT_MS / 60000} minutes`));
      }, SESSION_TIMEOUT_MS);
      const fail = (e: unknown) => {
        proc.stdin.end('poweroff\n');
        reject(e as Error);
      };
      let stage = 0;
      proc.stdout.on('data', (d) => {
        out += d;
        if (out.includes('IO-PATHS-2-FAILED') && stage < 3) {
          stage = 3;
          proc.stdin.end('poweroff\n');
        } else if (stage === 0 && out.includes(USERSPACE_BANNER)) {
          stage = 1;
          proc.stdin.write(`${GUEST_IRQS}; ${wire.guestSetup} && echo IO-PATHS-$((1+1))-READY || echo IO-PATHS-$((1+1))-FAILED\n`);
        } else if (stage === 1 && out.includes('IO-PATHS-2-READY')) {
          stage = 2;
          void snapshot().then((s) => {
            before = s;
            const url = `http://${wire.serverFromGuest}:${server.port}/data`;
            proc.stdin.write(
              `I0=$(irqs); wget -q -O /dev/null ${url} && echo "IO-PATHS-IRQS $I0 $(irqs) IO-PATHS-$((1+1))-DONE" || echo IO-PATHS-$((1+1))-FAILED\n`,
            );
          }, fail);
        } else if (stage === 2) {
          const done = /IO-PATHS-IRQS (\d+) (\d+) IO-PATHS-2-DONE/.exec(out);
          if (!done) return;
          stage = 3;
          irqs = [Number(done[1]), Number(done[2])];
          void snapshot().then((s) => {
            after = s;
            proc.stdin.end('poweroff\n');
          }, fail);
        }
      });
      proc.on('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    if (!before || !after || !irqs || server.timings.length !== 1)
      throw new UserError(`${spec.name}: the download did not complete:\n${out.slice(-2000)}\n${err.slice(-2000)}`);
    const exits = (s: NicStats) => s.exits.mmioReads + s.exits.mmioWrites + s.exits.pioReads + s.exits.pioWrites;
    const t = server.timings[0]!;
    return {
      path: spec.name,
      seconds: (t.end - t.start) / 1000,
      bytes: size,
      exits: exits(after.nic) - exits(before.nic),
      interrupts: irqs[1] - irqs[0],
      kicks: spec.kicksInVmm ? after.nic.kicks - before.nic.kicks : null,
      cpuMs: ((after.ticks.own - before.ticks.own) * 1000) / clkTck,
      guestMs: ((after.ticks.guest - before.ticks.guest) * 1000) / clkTck,
    };
  } finally {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await closed;
    for (const teardown of teardowns.reverse()) {
      try {
        await teardown();
      } catch (e) {
        process.stderr.write(`io-paths: ${spec.name}: cleaning up: ${(e as Error).message}\n`);
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
