// The nested KVM host: where /dev/kvm is missing or only software-backed (PVM),
// tsvisor runs a command inside `qemu-system-x86_64 -accel tcg -cpu max`, whose
// emulated AMD SVM gives a real /dev/kvm one level down.
//
// Inside: Debian's generic kernel with kvm-amd and the 9p stack loaded from an
// initramfs; the host's / shared read-only; a scratch directory (and any directory
// the caller asks for) shared writable at the same path as outside; the command
// run chrooted into the host's / with stdin/stdout and stderr on two virtio-serial
// ports. Unlike a UART, a virtio-serial port holds host input until the command
// opens it, so piped input is never lost while the nested host boots. The exit
// status comes back through the scratch directory. A third port carries the
// heartbeat the progress watchdog (watchdog.ts) waits for, and the kernel's
// console goes to a file the watchdog quotes. The host's tsvisor cache is the
// command's read-only lower cache layer (nestedCacheEnv), so a tsvisor inside reuses
// the host's packages and initramfs files instead of fetching and building them again.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { UserError } from '../cli/errors.js';
import { aptUpdate, cacheDir, fetchBusybox, fetchKernel, FetchError, hasCommand, isRoot, readOnlyCacheDirs } from '../guest/debian.js';
import { buildInitramfs, LOAD_MODULES } from '../guest/initramfs.js';
import { indexModules, resolveModules } from '../guest/kernel-modules.js';
import { HEARTBEAT_SECONDS, lastLogLine, NestedWatchdog, procThreads, stallSeconds } from './watchdog.js';

export const QEMU = 'qemu-system-x86_64';

/** What the nested host needs loaded: 9p for the host's files, KVM, and what later tests use. */
const HOST_MODULES = ['9p', '9pnet_virtio', 'virtio_pci', 'virtio_console', 'kvm_amd'];
const OPTIONAL_HOST_MODULES = ['tun', 'vhost_net', 'bridge', 'virtio_blk', 'virtio_net'];

/** Host signals that stop tsvisor cleanly (and exit 128+signo), here and in `run`. */
export const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** Appears in the command's $TMPDIR when tsvisor outside got SIGUSR1 (see onNestedUsr1). */
const NESTED_USR1_FILE = '.sigusr1';

/**
 * Inside the nested host, calls `handler` whenever the tsvisor outside received
 * SIGUSR1; returns the undo. Elsewhere it does nothing.
 */
export function onNestedUsr1(handler: () => void): () => void {
  const dir = process.env.TSVISOR_NESTED === '1' ? process.env.TMPDIR : undefined;
  if (!dir) return () => {};
  const file = path.join(dir, NESTED_USR1_FILE);
  const timer = setInterval(() => {
    if (!fs.existsSync(file)) return;
    fs.rmSync(file, { force: true });
    handler();
  }, 500);
  timer.unref();
  return () => clearInterval(timer);
}

/** Exit status when the nested host itself failed (the command never reported one). */
export const NESTED_HOST_FAILED = 125;

/** The nested host's own address on its QEMU user-mode uplink, and that network's DNS server. */
export const NESTED_UPLINK = { address: '10.0.2.15', gateway: '10.0.2.2', dns: '10.0.2.3' } as const;

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
${LOAD_MODULES}
port() { for p in /sys/class/virtio-ports/*; do [ "$(cat "$p/name")" = "$1" ] && echo "/dev/\${p##*/}"; done; }
stdio=$(port tsvisor.stdio)
stderr=$(port tsvisor.stderr)
exec 2>"$stderr"
# Proof of life for tsvisor's watchdog: needs this kernel's timers and scheduler, nothing else.
# The bytes tsvisor sends back are read and dropped: each is an interrupt that wakes this
# kernel, should it have lost its own timer (a port opens once, so both use fd 4).
exec 4<>"$(port tsvisor.heartbeat)"
cat <&4 >/dev/null &
while :; do echo; sleep ${HEARTBEAT_SECONDS}; done >&4 &
exec 4>&-
ip link set lo up
# The uplink (QEMU user-mode networking): outbound traffic and forwarded ports.
if [ -e /sys/class/net/eth0 ]; then
  ip addr add ${NESTED_UPLINK.address}/24 dev eth0 && ip link set eth0 up && ip route add default via ${NESTED_UPLINK.gateway}
fi
scratch=$(sed -n 's/.*tsvisor.scratch=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
fail() { echo "nested host: $*" >&2; poweroff -f; }
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host || fail "cannot mount the host's files"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs tmpfs /host/run
while read -r tag dir; do
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "$tag" "/host$dir" || fail "cannot mount $dir"
done < /host$scratch/.mounts
[ -e /dev/kvm ] || fail "no /dev/kvm (kvm-amd did not load)"
# A virtio port opens once, so stdin and stdout share descriptor 3. The command reads
# stdin through a FIFO fed by cat: a program blocked reading the port itself could
# not exit (Node joins its blocked reader threads at exit).
exec 3<>"$stdio"
mkfifo /stdin
cat <&3 >/stdin &
feeder=$!
chroot /host /bin/sh "$scratch/.command" </stdin >&3
echo $? > "/host$scratch/.exit-status"
kill $feeder
sync
poweroff -f
`;

export interface NestedRunOptions {
  command: string;
  args: readonly string[];
  /** Host directories the command may write, shared at the same path. */
  writable?: readonly string[];
  env?: Record<string, string>;
  cwd?: string;
  /** Passed to the command's stdin; 'inherit' connects this process's stdin. */
  stdin?: 'inherit' | 'ignore';
  memoryMiB?: number;
  cpus?: number;
  /** Host TCP ports QEMU forwards to the same port in the nested host (for hostfwd inside it). */
  forwardPorts?: readonly { hostAddress: string; port: number }[];
  log?: (line: string) => void;
}

export function qemuAvailable(): boolean {
  return hasCommand(QEMU);
}

/** Installs Debian's qemu-system-x86 when running as root; otherwise says what to run. */
export function ensureQemu(log: (line: string) => void): void {
  if (qemuAvailable()) return;
  if (!isRoot()) throw new FetchError(`${QEMU} is needed for the nested KVM host; run: sudo apt-get install -y qemu-system-x86`);
  log('tsvisor: installing qemu-system-x86 for the nested KVM host');
  const install = () => spawnSync('apt-get', ['install', '-y', '-q', 'qemu-system-x86'], { stdio: ['ignore', 'inherit', 'inherit'] });
  let r = install();
  if (r.status !== 0 && aptUpdate(log)) r = install();
  if (r.status !== 0 || !qemuAvailable()) throw new FetchError(`installing qemu-system-x86 failed; run: apt-get update && apt-get install -y qemu-system-x86`);
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Variables the command inherits from this process. */
const PASSED_ENV = /^(PATH|TERM|LANG|LC_\w+|TSVISOR_\w+|BENCH_\w+|NODE_\w+|CI)$/;

/**
 * The command's tsvisor cache. The host's cache is visible read-only at its own path:
 * it becomes the lower layer (TSVISOR_CACHE_RO, with any the host already had), and
 * what is missing from it goes to the scratch directory. A host cache inside a
 * writable directory is used as is.
 */
export function nestedCacheEnv(writable: readonly string[], scratch: string): Record<string, string> {
  const hostCache = path.resolve(cacheDir());
  if (writable.some((d) => hostCache === path.resolve(d) || hostCache.startsWith(path.resolve(d) + path.sep))) return { TSVISOR_CACHE: hostCache };
  return { TSVISOR_CACHE: path.join(scratch, '.cache', 'tsvisor'), TSVISOR_CACHE_RO: [hostCache, ...readOnlyCacheDirs()].join(path.delimiter) };
}

export function commandScript(opts: NestedRunOptions, scratch: string): string {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (PASSED_ENV.test(k) && v !== undefined) env[k] = v;
  const cache = nestedCacheEnv([scratch, ...(opts.writable ?? [])], scratch);
  Object.assign(env, { HOME: scratch, TMPDIR: scratch, TSVISOR_NESTED: '1', TSVISOR_ACCEL: 'kvm' }, cache, opts.env);
  const lines = [
    ...Object.entries(env).map(([k, v]) => `export ${k}=${shellQuote(v)}`),
    `cd ${shellQuote(opts.cwd ?? process.cwd())} 2>/dev/null || cd /`,
    `exec ${[opts.command, ...opts.args].map(shellQuote).join(' ')}`,
  ];
  return lines.join('\n') + '\n';
}

/**
 * The nested host's configuration, each part replaceable from the environment to
 * study how it behaves under load (README: "When the nested host stalls").
 */
export function nestedHostKnobs(env = process.env) {
  return {
    accel: env.TSVISOR_NESTED_ACCEL ?? 'tcg,thread=multi',
    cpu: env.TSVISOR_NESTED_CPU ?? 'max',
    /**
     * vCPUs, unless the caller asks (`tsvisor nested --cpus`). One: with two, QEMU 7.2's
     * multi-threaded TCG wedged 3 times in 40 boots beside one busy host process (a vCPU
     * re-running a stale translation of code the kernel had just patched, stuck in
     * `__schedule`); with one, 0 in 40 boots, and boots as fast (docs/nested-host-load.md).
     */
    cpus: nestedCpus(env.TSVISOR_NESTED_CPUS),
    /**
     * Added to the nested host kernel's command line; `kvm_amd.X=Y` reaches the module too.
     * Setting it replaces the default. `tsc=reliable`: without it the kernel distrusts the
     * TSC of a multi-CPU AMD-vendor CPU and keeps time with the HPET, whose 32-bit counter
     * at 100 MHz froze the nested host's clock, and every timer, for 21 s more after a 25 s
     * SIGSTOP of QEMU (a 60 s sleep took 103 s); with the TSC the heartbeat was back 0.5 s
     * after SIGCONT and the sleep took 60.2 s (docs/nested-host-load.md).
     */
    append: env.TSVISOR_NESTED_APPEND?.trim() ?? 'tsc=reliable',
    qemuArgs: (env.TSVISOR_NESTED_QEMU_ARGS ?? '').split(/\s+/).filter(Boolean),
    kernelPackage: env.TSVISOR_NESTED_KERNEL_PACKAGE ?? env.TSVISOR_KERNEL_PACKAGE,
  };
}

/** The nested host's vCPU counts tsvisor accepts (from TSVISOR_NESTED_CPUS or `tsvisor nested --cpus`). */
export function isNestedCpuCount(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= 8;
}

function nestedCpus(value: string | undefined): number {
  if (value === undefined || value === '') return 1;
  const n = Number(value);
  if (!isNestedCpuCount(n)) throw new UserError(`TSVISOR_NESTED_CPUS="${value}" must be 1 to 8`);
  return n;
}

function hostInitramfs(kernelPackage: string | undefined, log?: (line: string) => void): { kernel: string; initrd: string } {
  const kernel = fetchKernel(log, kernelPackage);
  const busybox = fetchBusybox(log);
  const modules = resolveModules(indexModules(kernel.modulesDir), HOST_MODULES, OPTIONAL_HOST_MODULES);
  return { kernel: kernel.vmlinuz, initrd: buildInitramfs(`nested-host-${kernel.version}`, { busybox, init: INIT, modules }) };
}

async function serveSocket(socketPath: string, onConnection: (conn: net.Socket) => void): Promise<{ path: string; server: net.Server }> {
  const server = net.createServer(onConnection);
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return { path: socketPath, server };
}

/** Runs the command in a fresh nested host; resolves with its exit status. */
export async function runNested(opts: NestedRunOptions): Promise<number> {
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const stallMs = stallSeconds() * 1000;
  ensureQemu(log);
  const knobs = nestedHostKnobs();
  const { kernel, initrd } = hostInitramfs(knobs.kernelPackage, log);
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-nested-'));
  try {
    const writable = [scratch, ...(opts.writable ?? [])].map((d) => path.resolve(d));
    const interactive = opts.stdin !== 'ignore' && process.stdin.isTTY === true;
    const escape: Record<string, string> = interactive ? { TSVISOR_CONSOLE_ESCAPE: '1' } : {};
    fs.writeFileSync(path.join(scratch, '.command'), commandScript({ ...opts, env: { ...escape, ...opts.env } }, scratch));
    fs.writeFileSync(path.join(scratch, '.mounts'), writable.map((d, i) => `rw${i} ${d}\n`).join(''));
    // QEMU connects both ports to sockets served here. stdin is copied in without
    // ever closing the socket, so the end of piped input is not a port hang-up.
    const stdioSocket = await serveSocket(path.join(scratch, '.stdio.sock'), (conn) => {
      conn.pipe(process.stdout, { end: false });
      if (opts.stdin === 'ignore') return;
      if (interactive) process.stdin.setRawMode(true);
      process.stdin.on('data', (d) => conn.write(d));
    });
    const stderrSocket = await serveSocket(path.join(scratch, '.stderr.sock'), (conn) => conn.pipe(process.stderr, { end: false }));
    // A nested host with one vCPU has once sat idle for 204 s with none of its timers
    // firing (QEMU idle too) until something outside woke it: a byte every heartbeat
    // interval is an interrupt that bounds such a lost timer to that interval.
    const heartbeatSocket = await serveSocket(path.join(scratch, '.heartbeat.sock'), (conn) => {
      conn.on('data', () => watchdog.heartbeat());
      conn.on('error', () => {});
      const poke = setInterval(() => conn.write('\n'), HEARTBEAT_SECONDS * 1000).unref();
      conn.on('close', () => clearInterval(poke));
    });
    // The console is always kept: even `quiet` lets errors through (RCU stalls, soft
    // lockups), which the watchdog quotes. With debugging on it is verbose and outlives the run.
    const debug = process.env.TSVISOR_NESTED_DEBUG === '1';
    const consoleLog = debug ? path.join(os.tmpdir(), 'tsvisor-nested-console.log') : path.join(scratch, 'console.log');
    if (debug) log(`nested host console: ${consoleLog}`);
    const append = ['console=ttyS0', ...(debug ? [] : ['quiet']), 'panic=-1', `tsvisor.scratch=${scratch}`, knobs.append].join(' ').trim();
    const qemuArgs = [
      '-accel',
      knobs.accel,
      '-cpu',
      knobs.cpu,
      '-smp',
      String(opts.cpus ?? knobs.cpus),
      '-m',
      `${opts.memoryMiB ?? 4096}M`,
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-vga',
      'none',
      '-no-reboot',
      '-kernel',
      kernel,
      '-initrd',
      initrd,
      '-append',
      append,
      '-serial',
      `file:${consoleLog}`,
      '-netdev',
      ['user', 'id=uplink', ...(opts.forwardPorts ?? []).map((f) => `hostfwd=tcp:${f.hostAddress}:${f.port}-:${f.port}`)].join(','),
      '-device',
      'virtio-net-pci,netdev=uplink',
      '-device',
      'virtio-serial-pci',
      '-chardev',
      `socket,id=stdio,path=${stdioSocket.path}`,
      '-device',
      'virtserialport,chardev=stdio,name=tsvisor.stdio',
      '-chardev',
      `socket,id=stderr,path=${stderrSocket.path}`,
      '-device',
      'virtserialport,chardev=stderr,name=tsvisor.stderr',
      '-chardev',
      `socket,id=heartbeat,path=${heartbeatSocket.path}`,
      '-device',
      'virtserialport,chardev=heartbeat,name=tsvisor.heartbeat',
      '-virtfs',
      'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
      ...writable.flatMap((d, i) => ['-virtfs', `local,path=${d},mount_tag=rw${i},security_model=none,multidevs=remap`]),
      ...knobs.qemuArgs,
    ];
    const child = spawn(QEMU, qemuArgs, { stdio: ['ignore', 'inherit', 'inherit'] });
    const watchdog = new NestedWatchdog(
      stallMs,
      {
        now: () => performance.now(),
        qemuThreads: () => (child.pid === undefined ? undefined : procThreads(child.pid)),
        lastConsoleLine: () => lastLogLine(consoleLog),
      },
      log,
    );
    // Unreferenced: the watchdog alone never keeps tsvisor running.
    const watch = setInterval(() => watchdog.check(), watchdog.checkEveryMs).unref();
    // Stopping tsvisor stops the nested host with it (QEMU ends cleanly on SIGTERM).
    let signalled: NodeJS.Signals | undefined;
    const forward = (sig: NodeJS.Signals) => {
      signalled = sig;
      child.kill('SIGTERM');
    };
    for (const sig of STOP_SIGNALS) process.on(sig, forward);
    // SIGUSR1 cannot cross into the nested host; a file in the shared scratch directory does.
    const usr1 = () => fs.writeFileSync(path.join(scratch, NESTED_USR1_FILE), '');
    process.on('SIGUSR1', usr1);
    const qemuStatus = await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code) => resolve(code ?? 1));
    });
    clearInterval(watch);
    for (const sig of STOP_SIGNALS) process.off(sig, forward);
    process.off('SIGUSR1', usr1);
    stdioSocket.server.close();
    stderrSocket.server.close();
    heartbeatSocket.server.close();
    if (interactive) process.stdin.setRawMode(false);
    process.stdin.pause();
    if (signalled) return 128 + os.constants.signals[signalled];
    const statusFile = path.join(scratch, '.exit-status');
    if (!fs.existsSync(statusFile)) {
      const last = lastLogLine(consoleLog);
      log(
        `tsvisor: the nested KVM host stopped before the command finished (qemu exit ${qemuStatus}${last ? `; its console last printed ${JSON.stringify(last)}` : ''}); TSVISOR_NESTED_DEBUG=1 shows its whole console`,
      );
      return NESTED_HOST_FAILED;
    }
    return Number(fs.readFileSync(statusFile, 'utf8').trim());
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}
