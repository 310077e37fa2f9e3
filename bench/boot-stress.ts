// Boot-stall reproduction: N boots of the default guest inside the nested KVM host,
// each under tsvisor and under QEMU (-accel kvm), while busy processes load the
// real host. Per boot: time to userspace, or how it failed (no console output for
// --stall seconds, still printing at --limit, the VMM exited). A nested host whose
// watchdog has missed its heartbeat for two intervals, or that reports nothing for
// longer than a boot may take, is itself stalled: it is ended, counted, and a fresh
// one runs the remaining boots.
//
//   node dist/bench/boot-stress.js [--boots N] [--load K] [--nice N] [--vmm tsvisor,qemu]
//        [--stall SECONDS] [--limit SECONDS] [--cpus N] [--guest-append 'ARGS']
//
// The nested host's own knobs come from the environment (TSVISOR_NESTED_*, see
// nestedHostKnobs), so one script measures every configuration; --guest-append
// adds to the booted guest's command line (both VMMs).
import { spawn, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { defaultGuest, USERSPACE_BANNER } from '../src/guest/default-guest.js';
import { nestedHostKnobs } from '../src/nested/nested-host.js';
import { WATCHDOG_LINES } from '../src/nested/watchdog.js';
import { killOnSilence } from '../test/support/silence.js';
import { bootCommands, timeBoot, type BootResult } from './boot-timing.js';

const BIN = fileURLToPath(new URL('../../bin/tsvisor.js', import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const VMMS = ['tsvisor', 'qemu'] as const;
type Vmm = (typeof VMMS)[number];

interface Options {
  boots: number;
  load: number;
  nice: number;
  vmms: Vmm[];
  stallSeconds: number;
  limitSeconds: number;
  cpus: number;
  guestAppend: string;
}

function parseOptions(argv: string[]): Options {
  const o: Options = { boots: 20, load: 1, nice: 10, vmms: [...VMMS], stallSeconds: 60, limitSeconds: 600, cpus: nestedHostKnobs().cpus, guestAppend: '' };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i]!, argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const n = Number(value);
    if (flag === '--guest-append') {
      o.guestAppend = value;
      continue;
    }
    if (flag === '--vmm') {
      o.vmms = value.split(',').map((v) => {
        if (!(VMMS as readonly string[]).includes(v)) throw new Error(`--vmm: ${v} is not one of ${VMMS.join(', ')}`);
        return v as Vmm;
      });
      continue;
    }
    if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} needs a whole number, not ${value}`);
    if (flag === '--boots') o.boots = n;
    else if (flag === '--load') o.load = n;
    else if (flag === '--nice') o.nice = n;
    else if (flag === '--stall') o.stallSeconds = n;
    else if (flag === '--limit') o.limitSeconds = n;
    else if (flag === '--cpus') o.cpus = n;
    else throw new Error(`unknown flag ${flag}`);
  }
  return o;
}

/** One boot's outcome, as the inner side reports it on a line of its own. */
interface BootLine {
  boot: number;
  vmm: Vmm;
  result: BootResult;
}

const LINE_PREFIX = 'BOOT-STRESS ';

/** Inside the nested host: the boots, one VMM after the other, a line each. */
async function inner(
  kernel: string,
  initrd: string,
  first: number,
  boots: number,
  vmms: Vmm[],
  stallSeconds: number,
  limitSeconds: number,
  guestAppend: string,
): Promise<void> {
  const commands = bootCommands(kernel, initrd, guestAppend);
  for (let boot = first; boot < boots; boot++) {
    for (const vmm of vmms) {
      const [cmd, args] = commands[vmm];
      const result = await timeBoot(cmd, args, USERSPACE_BANNER, { stallMs: stallSeconds * 1000, limitMs: limitSeconds * 1000 });
      process.stdout.write(LINE_PREFIX + JSON.stringify({ boot, vmm, result } satisfies BootLine) + '\n');
    }
  }
}

function startLoad(n: number, nice: number): ChildProcess[] {
  return Array.from({ length: n }, () => spawn('nice', ['-n', String(nice), 'sh', '-c', 'while :; do :; done'], { stdio: 'ignore' }));
}

/** Runs boots [first, o.boots) in one nested host; resolves with the lines it reported and whether it stalled. */
function nestedRun(o: Options, kernel: string, initrd: string, first: number, onLine: (l: BootLine) => void): Promise<{ next: number; stalled: boolean }> {
  const args = [
    BIN,
    'nested',
    '--cpus',
    String(o.cpus),
    '--',
    process.execPath,
    SELF,
    'inner',
    kernel,
    initrd,
    String(first),
    String(o.boots),
    o.vmms.join(','),
    String(o.stallSeconds),
    String(o.limitSeconds),
    o.guestAppend,
  ];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  // Every boot ends within --limit; past that plus a margin with no report, the nested host stopped.
  const silenceMs = (o.limitSeconds + 120) * 1000;
  let next = first;
  const silence = killOnSilence(child, silenceMs);
  // Sooner: the host's own heartbeat has been missing for two stall intervals.
  readline.createInterface({ input: child.stderr! }).on('line', (line) => {
    process.stderr.write(line + '\n');
    if (line.startsWith(WATCHDOG_LINES.stillStalled)) silence.expire();
  });
  readline.createInterface({ input: child.stdout! }).on('line', (line) => {
    if (!line.startsWith(LINE_PREFIX)) return;
    const l = JSON.parse(line.slice(LINE_PREFIX.length)) as BootLine;
    silence.arm();
    onLine(l);
    if (l.vmm === o.vmms[o.vmms.length - 1]) next = l.boot + 1;
  });
  return new Promise((resolve) => {
    child.once('close', () => {
      silence.stop();
      resolve({ next, stalled: silence.stalled });
    });
  });
}

const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]! : NaN);

function table(o: Options, lines: BootLine[], hostStalls: number): string {
  const rows = o.vmms.map((vmm) => {
    const mine = lines.filter((l) => l.vmm === vmm);
    const up = mine.filter((l) => l.result.kind === 'up').map((l) => l.result.seconds);
    const failed = mine.length - up.length;
    return { vmm, runs: mine.length, failed, median: median(up), max: up.length ? Math.max(...up) : NaN };
  });
  const out = [
    `load: ${o.load} busy process(es) at nice ${o.nice}; nested host: ${o.cpus} vCPUs, ${JSON.stringify({ ...nestedHostKnobs(), cpus: undefined })}; guest append: "${o.guestAppend}"; stall = no console output for ${o.stallSeconds} s`,
    `nested host stalls (no heartbeat for two watchdog intervals, or no report for ${o.limitSeconds + 120} s; host restarted): ${hostStalls}`,
    '| VMM | boots | stalled or failed | median to userspace (s) | max (s) |',
    '|---|---|---|---|---|',
    ...rows.map((r) => `| ${r.vmm} | ${r.runs} | ${r.failed} | ${r.median.toFixed(1)} | ${r.max.toFixed(1)} |`),
  ];
  const [t, q] = [rows.find((r) => r.vmm === 'tsvisor'), rows.find((r) => r.vmm === 'qemu')];
  if (t && q) out.push(`median ratio tsvisor/qemu: ${(t.median / q.median).toFixed(2)}`);
  return out.join('\n') + '\n';
}

async function outer(o: Options): Promise<void> {
  const guest = defaultGuest();
  const load = startLoad(o.load, o.nice);
  const lines: BootLine[] = [];
  let hostStalls = 0;
  try {
    for (let first = 0; first < o.boots;) {
      const r = await nestedRun(o, guest.kernel, guest.initrd, first, (l) => {
        lines.push(l);
        const what =
          l.result.kind === 'up' ? `${l.result.seconds.toFixed(1)} s` : `${l.result.kind} at ${l.result.seconds.toFixed(0)} s, last line: ${l.result.lastLine}`;
        process.stdout.write(`boot ${l.boot + 1}/${o.boots} ${l.vmm}: ${what}\n`);
      });
      if (r.stalled) {
        hostStalls++;
        process.stdout.write(`# the nested host stalled; a fresh one runs the rest\n`);
      } else if (r.next === first) {
        throw new Error('the nested host ended without reporting a boot');
      }
      // The boot that was running when the host stalled is counted above, then skipped.
      first = r.stalled ? r.next + 1 : r.next;
    }
  } finally {
    for (const p of load) p.kill('SIGKILL');
  }
  process.stdout.write(table(o, lines, hostStalls));
}

const [mode, ...rest] = process.argv.slice(2);
try {
  if (mode === 'inner') {
    const [kernel, initrd, first, boots, vmms, stall, limit, guestAppend] = rest;
    await inner(kernel!, initrd!, Number(first), Number(boots), vmms!.split(',') as Vmm[], Number(stall), Number(limit), guestAppend ?? '');
  } else {
    await outer(parseOptions(process.argv.slice(2)));
  }
} catch (e) {
  process.stderr.write(`boot-stress: ${(e as Error).message}\n`);
  process.exitCode = 2;
}
