// Boots the default guest under tsvisor once per scenario and prints one
// `SCENARIO <json>` line each. It runs where /dev/kvm is hardware-backed: inside
// the nested KVM host here, directly on a machine with VT-x/AMD-V.
// usage: node boot-scenarios.js KERNEL INITRD [SCENARIO...]   (default: all)
// Disk images go to $TSVISOR_TEST_DIR (a host directory the caller inspects afterwards).
import { execSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { NET_SCENARIOS, startTestServers } from './net-scenarios.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));
const [kernel, initrd, ...only] = process.argv.slice(2);

export interface DriveSpec {
  /** File name inside the test directory; a sparse image of sizeMiB is made fresh. */
  file: string;
  sizeMiB: number;
  options?: string;
}

export interface Scenario {
  name: string;
  input: string;
  append?: string;
  cpus?: number;
  /** Send the console to a file (--serial file:PATH) instead of stdout. */
  serialFile?: boolean;
  stats?: boolean;
  drives?: DriveSpec[];
  args?: string[];
  /** Type the input only once this appears on the console (as a user at a prompt would). */
  inputAfter?: string;
  /** SIGKILL tsvisor as soon as this appears on the console. */
  killOn?: string;
  /** When `marker` appears on the console, cut the drive's file down to `sizeMiB` behind tsvisor's back. */
  truncateOn?: { marker: string; file: string; sizeMiB: number };
  /** Shell commands run where tsvisor runs, before it starts (taps, bridges) and after it ends. */
  hostSetup?: string;
  hostTeardown?: string;
  /** When `marker` appears, fetch `url` from the host (the reply goes in the result), then type `then`. */
  hostFetch?: { marker: string; url: string; then: string };
  /** Scenarios with the same group boot at the same time (guests that talk to each other). */
  group?: string;
}

export interface ScenarioResult {
  name: string;
  status: number | null;
  signal: string | null;
  console: string;
  /** What reached stdout (empty when the console went to a file). */
  stdout: string;
  stderr: string;
  seconds: number;
  /** What hostFetch got (or the error it met). */
  fetched?: string;
  /** hostSetup's failure, if it failed. */
  setupError?: string;
  /** The scenario was killed for running past SCENARIO_TIMEOUT_MS (or, in a group, another one was). */
  timedOut?: boolean;
}

/** No scenario takes this long on a working host. */
export const SCENARIO_TIMEOUT_MS = 360_000;

export const BOOT_SCENARIOS: Scenario[] = [
  { name: 'command', cpus: 2, stats: true, input: 'uname -r\necho tsv-$((6*7))\nnproc\npoweroff\n' },
  { name: 'reboot', input: 'reboot\n', serialFile: true },
  { name: 'sysrq-panic', input: 'echo c > /proc/sysrq-trigger\n' },
  { name: 'early-panic', input: '', append: 'console=ttyS0 quiet panic=-1 rdinit=/no/such/init' },
  {
    // The guest's own drivers on every virtio device, a filesystem the host reads back, a read-only
    // drive, and the shell on hvc0 instead of the UART.
    name: 'virtio-devices',
    stats: true,
    args: ['--console', 'virtio', '--device', 'virtio-rng'],
    inputAfter: "Enter 'help'",
    append: 'console=ttyS0 console=hvc0 quiet panic=-1',
    drives: [
      { file: 'data.img', sizeMiB: 64, options: 'serial=tsv-data' },
      { file: 'ro.img', sizeMiB: 8, options: 'readonly=on' },
    ],
    input: [
      'tty',
      'for d in /sys/bus/virtio/devices/*; do echo "vdev $(cat $d/device) $(basename $(readlink $d/driver))"; done',
      'for f in /sys/bus/pci/devices/*; do echo "pci $(cat $f/vendor):$(cat $f/device) class=$(cat $f/class)"; done',
      'echo "serial=$(cat /sys/block/vda/serial)"',
      'echo "hwrng=$(head -c 4096 /dev/hwrng | wc -c)"',
      'mkdir -p /mnt && mke2fs -q -L tsvdata /dev/vda && mount -t ext2 /dev/vda /mnt',
      'echo "hello from the guest" > /mnt/hello.txt && seq 1 20000 > /mnt/numbers.txt && sync && umount /mnt && echo FS-$((1+1))',
      'echo "ro=$(cat /sys/block/vdb/ro)"',
      'dd if=/dev/zero of=/dev/vdb bs=512 count=1; echo "ro-write-status=$?"',
      'poweroff',
      '',
    ].join('\n'),
  },
  {
    // Two vCPUs, two request queues (the default: one per vCPU), a reader pinned to
    // each vCPU: the guest's blk-mq maps each CPU to its own queue, so both workers run.
    name: 'two-queues',
    cpus: 2,
    stats: true,
    drives: [{ file: 'mq.img', sizeMiB: 32 }],
    input: [
      "echo \"mq-dirs: $(ls /sys/block/vda/mq | tr '\\n' ' ')\"",
      '(taskset -c 0 dd if=/dev/vda of=/dev/null bs=4k count=4096 iflag=direct 2>/dev/null && echo CPU0-DONE) & (taskset -c 1 dd if=/dev/vda of=/dev/null bs=4k skip=4096 count=4096 iflag=direct 2>/dev/null && echo CPU1-DONE) & wait',
      'grep virtio0-req /proc/interrupts',
      'poweroff',
      '',
    ].join('\n'),
  },
  {
    // Data the guest synced is in the image even when tsvisor dies right after. With
    // MSI off in the guest, the disk's interrupts take the INTx path through the IOAPIC.
    name: 'crash',
    append: 'console=ttyS0 quiet panic=-1 pci=nomsi',
    drives: [{ file: 'crash.img', sizeMiB: 16 }],
    input:
      'seq 100000 199999 > /tmp/pattern && dd if=/tmp/pattern of=/dev/vda bs=4096 conv=fsync 2>/dev/null && grep virtio /proc/interrupts && sync && echo SYNCED-$((1+1))\nsleep 600\n',
    killOn: 'SYNCED-2',
  },
  {
    // The exit path (no ioeventfd, KVM_SIGNAL_MSI), and a request beyond the end of the image.
    name: 'out-of-range',
    stats: true,
    args: ['--ioeventfd', 'off', '--irqfd', 'off'],
    drives: [{ file: 'small.img', sizeMiB: 8 }],
    input: [
      'dd if=/dev/vda of=/dev/null bs=4096 count=64 iflag=direct && echo READ-$((1+1))',
      'echo TRUNCATE-$((1+1)); sleep 3',
      'dd if=/dev/vda of=/dev/null bs=4096 skip=1800 count=1 iflag=direct; echo "oor-status=$?"',
      'echo alive-$((6*7))',
      'poweroff',
      '',
    ].join('\n'),
    truncateOn: { marker: 'TRUNCATE-2', file: 'small.img', sizeMiB: 4 },
  },
];

/** Where scenarios put their disk images. */
export const testDir = (): string => process.env.TSVISOR_TEST_DIR ?? os.tmpdir();

/** Boots one scenario; `onShell` is called when its input is typed (the guest's shell is up). */
function runScenario(s: Scenario, onShell: () => void = () => {}): Promise<ScenarioResult> {
  const args = ['run', '--accel', 'kvm', '--kernel', kernel!, '--initrd', initrd!, '--memory', '512M', '--cpus', String(s.cpus ?? 1)];
  args.push('--append', s.append ?? 'console=ttyS0 quiet panic=-1');
  const consoleFile = path.join(os.tmpdir(), `${s.name}-console.log`);
  if (s.serialFile) args.push('--serial', `file:${consoleFile}`);
  if (s.stats) args.push('--stats');
  for (const d of s.drives ?? []) {
    const file = path.join(testDir(), d.file);
    fs.rmSync(file, { force: true });
    fs.writeFileSync(file, '');
    fs.truncateSync(file, d.sizeMiB * 2 ** 20);
    args.push('--drive', `file=${file}${d.options ? ',' + d.options : ''}`);
  }
  args.push(...(s.args ?? []));
  const t0 = Date.now();
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let fetched: string | undefined;
  let fetching = false;
  let err = '';
  let truncated = false;
  let typed = false;
  const type = () => {
    typed = true;
    onShell();
    if (s.hostFetch) child.stdin.write(s.input);
    else child.stdin.end(s.input);
  };
  child.stdout.on('data', (d) => {
    out += d;
    if (!typed && s.inputAfter && out.includes(s.inputAfter)) type();
    if (s.killOn && out.includes(s.killOn)) child.kill('SIGKILL');
    const f = s.hostFetch;
    if (f && !fetching && out.includes(f.marker)) {
      fetching = true;
      fetch(f.url, { signal: AbortSignal.timeout(30_000) })
        .then((r) => r.text())
        .then(
          (text) => (fetched = text),
          (e: Error) => (fetched = `fetch failed: ${e.message} ${(e.cause as Error | undefined)?.message ?? ''}`),
        )
        .finally(() => child.stdin.end(f.then));
    }
    if (s.truncateOn && !truncated && out.includes(s.truncateOn.marker)) {
      truncated = true;
      fs.truncateSync(path.join(testDir(), s.truncateOn.file), s.truncateOn.sizeMiB * 2 ** 20);
    }
  });
  child.stderr.on('data', (d) => (err += d));
  if (!s.inputAfter) type();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, SCENARIO_TIMEOUT_MS);
  return new Promise((resolve) =>
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      const console = s.serialFile ? fs.readFileSync(consoleFile, 'utf8') : out;
      resolve({ name: s.name, status, signal, console, stdout: out, stderr: err, seconds: (Date.now() - t0) / 1000, fetched, timedOut });
    }),
  );
}

export const SCENARIOS: Scenario[] = [...BOOT_SCENARIOS, ...NET_SCENARIOS];

/** Runs the host commands a scenario (or group) needs; the error text if they failed. */
function hostCommand(command: string | undefined): string | undefined {
  if (!command) return undefined;
  try {
    execSync(command, { stdio: ['ignore', 'ignore', 'pipe'] });
    return undefined;
  } catch (e) {
    return `${command}: ${(e as { stderr?: Buffer }).stderr?.toString().trim() ?? (e as Error).message}`;
  }
}

/** Boots a scenario, or a group of them together, between its host setup and teardown. */
async function runGroup(group: Scenario[]): Promise<ScenarioResult[]> {
  const setupError = hostCommand(group[0]!.hostSetup);
  try {
    if (setupError) return group.map((s) => ({ name: s.name, status: null, signal: null, console: '', stdout: '', stderr: '', seconds: 0, setupError }));
    // Each guest of a group boots once the one before it has its shell: guests booting
    // at the same moment load the nested host most, and one has triple-faulted there.
    const runs: Promise<ScenarioResult>[] = [];
    for (const s of group) {
      let shell!: () => void;
      const ready = new Promise<void>((resolve) => (shell = resolve));
      const run = runScenario(s, shell);
      runs.push(run);
      await Promise.race([ready, run]);
    }
    const results = await Promise.all(runs);
    // Guests of a group need each other: when one hung, all of them boot again.
    if (group.length > 1 && results.some((r) => r.timedOut)) for (const r of results) r.timedOut = true;
    return results;
  } finally {
    hostCommand(group[0]!.hostTeardown);
  }
}

if (kernel && initrd) {
  const chosen = SCENARIOS.filter((s) => only.length === 0 || only.includes(s.name));
  const servers = chosen.some((s) => NET_SCENARIOS.includes(s)) ? await startTestServers() : undefined;
  const groups: Scenario[][] = [];
  for (const s of chosen) {
    const mates = s.group ? groups.find((g) => g[0]!.group === s.group) : undefined;
    if (mates) mates.push(s);
    else groups.push([s]);
  }
  for (const group of groups) {
    for (const r of await runGroup(group)) process.stdout.write(`SCENARIO ${JSON.stringify(r)}\n`);
  }
  servers?.close();
}
