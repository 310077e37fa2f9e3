// `tsvisor run`: boots a guest on /dev/kvm, or re-runs itself inside the nested
// KVM host when /dev/kvm cannot run a guest kernel at speed.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KernelImageError } from '../arch/x86/linux-loader.js';
import { KvmUnavailableError } from '../kvm/kvm.js';
import { ImageError, openImage } from '../backends/raw-image.js';
import { consoleCmdline, defaultGuest, defaultGuestCmdline } from '../guest/default-guest.js';
import { NESTED_UPLINK, onNestedUsr1, runNested, STOP_SIGNALS } from '../nested/nested-host.js';
import { chooseAccel } from '../vmm/accel.js';
import { openTap, TapBackend, TapError } from '../net/tap.js';
import { VHOST_NET, VhostError } from '../vhost/vhost-net.js';
import { VhostUserError } from '../vhost/vhost-user-device.js';
import { HostForwardError, UserNetwork } from '../net/user/user-network.js';
import type { NetBackend } from '../net/backend.js';
import { MAX_BLOCK_QUEUES, VirtioBlock } from '../virtio/block.js';
import type { VirtioDevice } from '../virtio/device.js';
import type { MainThreadDevice } from '../virtio/in-process.js';
import { VirtioRng } from '../virtio/rng.js';
import { Machine, type MachineExit, type MachineStats, type NicConfig } from '../vmm/machine.js';
import { ExitCode, UserError } from './errors.js';
import {
  networkArgs,
  parseNetworkArgs,
  vhostUserArgs,
  type DriveSpec,
  type NetdevSpec,
  type NetworkOptions,
  type RunOptions,
  type SerialTarget,
} from './run-options.js';
import { formatSize } from './size.js';

const log = (line: string) => process.stderr.write(`tsvisor: ${line}\n`);

export const EXIT_CODES: Record<MachineExit['kind'], number> = {
  poweroff: ExitCode.OK,
  reboot: ExitCode.OK,
  panic: ExitCode.GUEST_PANIC,
  'triple-fault': ExitCode.GUEST_FAULT,
  'internal-error': ExitCode.GUEST_FAULT,
  stopped: ExitCode.ERROR,
};

function readInput(file: string, what: string): Buffer {
  try {
    const data = fs.readFileSync(file);
    if (data.length === 0) throw new UserError(`${what} ${file} is empty`);
    return data;
  } catch (e) {
    if (e instanceof UserError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not readable' : code === 'EISDIR' ? 'is a directory' : (e as Error).message;
    throw new UserError(`${what} ${file} ${why}`);
  }
}

/** A drive's file must exist and allow what the drive does with it; checked before any VM starts. */
export function checkDrive(d: DriveSpec): void {
  try {
    fs.accessSync(d.file, d.readOnly ? fs.constants.R_OK : fs.constants.R_OK | fs.constants.W_OK);
    if (!fs.statSync(d.file).isFile()) throw new UserError(`drive ${d.file} is not a file`);
  } catch (e) {
    if (e instanceof UserError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(
      `drive ${d.file} ${code === 'ENOENT' ? 'does not exist' : d.readOnly ? 'is not readable' : 'is not readable and writable (add readonly=on?)'}`,
    );
  }
}

/** The default guest's scratch disk: sparse, in a fresh temporary directory removed when tsvisor ends. */
const SCRATCH_DISK_SIZE = 256 * 2 ** 20;

function scratchDrive(): { drive: DriveSpec; remove(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-scratch-'));
  const file = path.join(dir, 'scratch.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, SCRATCH_DISK_SIZE);
  return { drive: { file, readOnly: false, cache: 'writeback', serial: 'scratch' }, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

type GuestOptions = RunOptions & { kernel: string; append: string };

/** Fills in the default guest when no kernel was given: its kernel and initrd, virtio-rng, a scratch disk. */
function withGuest(opts: RunOptions): { opts: GuestOptions; cleanup(): void } {
  if (opts.kernel) return { opts: { ...opts, kernel: opts.kernel, append: opts.append ?? consoleCmdline(opts.console) }, cleanup: () => {} };
  const guest = defaultGuest((l) => process.stderr.write(l + '\n'));
  const scratch = opts.drives.length === 0 ? scratchDrive() : undefined;
  return {
    opts: {
      ...opts,
      kernel: guest.kernel,
      initrd: guest.initrd,
      append: opts.append ?? defaultGuestCmdline(opts.console),
      rng: true,
      drives: scratch ? [scratch.drive] : opts.drives,
      network: opts.network.nics.length || opts.vhostUser.some((v) => v.kind === 'vhost-user-net') ? opts.network : DEFAULT_GUEST_NETWORK,
    },
    cleanup: () => scratch?.remove(),
  };
}

/** The default guest's network card: virtio-net on user-mode networking, as a user would write it. */
const DEFAULT_GUEST_NETWORK: NetworkOptions = parseNetworkArgs(['user,id=net0'], ['virtio-net-pci,netdev=net0']);

/**
 * User-mode networking as the tsvisor inside the nested host must run it: its
 * forwarded ports listen on every address (QEMU delivers them to the nested
 * host's uplink address, with the same port numbers), and DNS goes to the
 * uplink's resolver unless the user named one.
 */
function nestedNetwork(network: NetworkOptions): NetworkOptions {
  const netdevs = network.netdevs.map((n) =>
    n.kind !== 'user'
      ? n
      : {
          ...n,
          user: {
            ...n.user,
            resolver: n.user.resolver ?? { address: NESTED_UPLINK.dns, port: 53 },
            hostForwards: n.user.hostForwards.map((f) => ({ ...f, hostAddress: '' })),
          },
        },
  );
  return { ...network, netdevs };
}

/** The host ports the nested host's QEMU must forward for the guest's hostfwd rules. */
function forwardedPorts(network: NetworkOptions): { hostAddress: string; port: number }[] {
  return network.netdevs.flatMap((n) => (n.kind === 'user' ? n.user.hostForwards.map((f) => ({ hostAddress: f.hostAddress, port: f.hostPort })) : []));
}

/** The `run` argument list that reproduces these options for a tsvisor inside the nested host. */
function innerRunArgs(opts: GuestOptions): string[] {
  const args = ['run', '--accel', 'kvm', '--kernel', path.resolve(opts.kernel), '--append', opts.append];
  if (opts.initrd) args.push('--initrd', path.resolve(opts.initrd));
  args.push('--memory', formatSize(opts.memory), '--cpus', String(opts.cpus));
  args.push('--serial', opts.serial.kind === 'file' ? `file:${path.resolve(opts.serial.path)}` : 'stdio');
  if (opts.stats) args.push('--stats');
  if (opts.statsJson) args.push('--stats-json', path.resolve(opts.statsJson));
  for (const d of opts.drives) {
    const kv = [`file=${path.resolve(d.file).replaceAll(',', ',,')}`, 'format=raw', 'if=virtio', `cache=${d.cache}`];
    if (d.readOnly) kv.push('readonly=on');
    if (d.serial !== undefined) kv.push(`serial=${d.serial.replaceAll(',', ',,')}`);
    args.push('--drive', kv.join(','));
  }
  if (opts.rng) args.push('--device', 'virtio-rng');
  args.push(...vhostUserArgs(opts.vhostUser));
  args.push(...networkArgs(nestedNetwork(opts.network)));
  args.push('--console', opts.console, '--ioeventfd', opts.ioeventfd ? 'on' : 'off', '--irqfd', opts.irqfd ? 'on' : 'off');
  return args;
}

export async function runCommand(given: RunOptions): Promise<number> {
  const { accel, why } = chooseAccel(given.accel);
  if (given.kernel) readInput(given.kernel, 'kernel');
  if (given.initrd) readInput(given.initrd, 'initrd');
  given.drives.forEach(checkDrive);
  const { opts, cleanup } = withGuest(given);
  try {
    if (accel !== 'nested') return await runOnKvm(opts);
    log(`running the guest inside the nested KVM host (${why})`);
    const cli = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));
    // The nested host sees the host's files read-only, except these directories, shared writable at the same paths.
    const writable = [
      ...(opts.serial.kind === 'file' ? [path.dirname(path.resolve(opts.serial.path))] : []),
      ...(opts.statsJson ? [path.dirname(path.resolve(opts.statsJson))] : []),
      ...opts.drives.filter((d) => !d.readOnly).map((d) => path.dirname(fs.realpathSync(d.file))),
    ];
    return await runNested({
      command: process.execPath,
      args: [cli, ...innerRunArgs(opts)],
      writable: [...new Set(writable)],
      memoryMiB: nestedMemoryMiB(opts),
      forwardPorts: forwardedPorts(opts.network),
    });
  } finally {
    cleanup();
  }
}

/** Opens each drive's image and puts it on a virtio-blk device; adds virtio-rng when asked. */
function virtioDevices(opts: GuestOptions): (VirtioDevice | MainThreadDevice)[] {
  const devices: (VirtioDevice | MainThreadDevice)[] = [];
  try {
    opts.drives.forEach((d, i) => {
      const image = openImage({ path: d.file, readOnly: d.readOnly, cache: d.cache });
      devices.push(new VirtioBlock({ name: `virtio-blk${i}`, image, serial: d.serial, queues: d.queues ?? Math.min(opts.cpus, MAX_BLOCK_QUEUES) }));
    });
  } catch (e) {
    void Promise.allSettled(devices.map((d) => d.close()));
    if (e instanceof ImageError) throw new UserError(e.message);
    throw e;
  }
  if (opts.rng) devices.push(new VirtioRng());
  return devices;
}

/** Opens each card's back-end (a tap, user-mode networking and its forwarded ports); closes them all if one fails. */
async function networkCards(network: NetworkOptions): Promise<NicConfig[]> {
  const nics: NicConfig[] = [];
  const counts = { 'virtio-net': 0, e1000: 0 };
  try {
    for (const [i, spec] of network.nics.entries()) {
      const netdev = network.netdevs.find((n) => n.id === spec.netdev)!;
      const backend = await openNetBackend(netdev, netdev.kind === 'user' ? 1 : (netdev.queues ?? spec.queues ?? 1));
      const n = counts[spec.model]++;
      nics.push({
        ...(netdev.kind === 'tap' && netdev.vhost ? { vhost: netdev.vhostdev ?? VHOST_NET } : {}),
        model: spec.model,
        name: spec.model === 'e1000' ? `e1000-${n}` : `virtio-net${n}`,
        backend,
        mac: spec.mac ?? Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56 + i),
        queues: spec.queues ?? backend.queues,
        ctrlMax: spec.ctrlMax,
      });
    }
  } catch (e) {
    await Promise.allSettled(nics.map((n) => n.backend.close()));
    if (e instanceof TapError || e instanceof HostForwardError) throw new UserError(e.message);
    throw e;
  }
  return nics;
}

/** A netdev's back-end: user-mode networking (listening for its forwarded ports), or a tap with `queues` queue pairs. */
export async function openNetBackend(netdev: NetdevSpec, queues: number): Promise<NetBackend> {
  if (netdev.kind === 'user') {
    const user = new UserNetwork(netdev.user);
    await user.listen();
    return user;
  }
  return new TapBackend(
    openTap({ ifname: netdev.kind === 'tap' ? netdev.ifname : undefined, bridge: netdev.kind === 'bridge' ? netdev.bridge : undefined, queues }),
  );
}

/** Enough nested-host RAM for the guest plus the host's own kernel and tsvisor. */
function nestedMemoryMiB(opts: RunOptions): number {
  return Math.max(2048, Math.ceil(opts.memory / 2 ** 20) + 1536);
}

async function runOnKvm(opts: GuestOptions): Promise<number> {
  const kernel = readInput(opts.kernel, 'kernel');
  const initrd = opts.initrd ? readInput(opts.initrd, 'initrd') : undefined;
  // With hvc0 on stdio, the UART's output is kept only when it goes to a file.
  const virtioConsole = opts.console === 'virtio';
  const output = serialSink(virtioConsole && opts.serial.kind === 'stdio' ? { kind: 'discard' } : opts.serial);
  const consoleOutput = virtioConsole ? serialSink({ kind: 'stdio' }) : undefined;
  const nics = await networkCards(opts.network);
  let machine: Machine;
  try {
    machine = Machine.create({
      nics,
      kernel,
      initrd,
      cmdline: opts.append,
      memory: opts.memory,
      cpus: opts.cpus,
      serialOutput: output.write,
      virtioConsoleOutput: consoleOutput?.write,
      virtio: [...virtioDevices(opts), ...opts.vhostUser],
      log,
      ioeventfd: opts.ioeventfd,
      irqfd: opts.irqfd,
    });
  } catch (e) {
    output.close();
    await Promise.allSettled(nics.map((n) => n.backend.close()));
    if (e instanceof KernelImageError) throw new UserError(`kernel ${opts.kernel}: ${e.message}`);
    if (e instanceof KvmUnavailableError || e instanceof VhostError || e instanceof VhostUserError) throw new UserError(e.message);
    throw e;
  }
  const input = attachStdin(machine);
  let signal: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    signal = sig;
    machine.end('stopped', `host signal ${sig}`);
  };
  // SIGUSR1 prints the counters while the guest runs (and rewrites the JSON file).
  const writeJson = () => opts.statsJson && fs.writeFileSync(opts.statsJson, JSON.stringify(machine.stats(), null, 1) + '\n');
  const printStats = () => {
    process.stderr.write(formatStats(machine.stats()));
    writeJson();
  };
  for (const sig of STOP_SIGNALS) process.on(sig, onSignal);
  process.on('SIGUSR1', printStats);
  const stopNestedUsr1 = onNestedUsr1(printStats);
  const exit = await machine.run();
  stopNestedUsr1();
  for (const sig of STOP_SIGNALS) process.off(sig, onSignal);
  process.off('SIGUSR1', printStats);
  input.detach();
  await output.flush();
  await consoleOutput?.flush();
  output.close();
  if (opts.stats) process.stderr.write(formatStats(machine.stats()));
  writeJson();
  for (const e of machine.deviceErrors.slice(0, 5)) log(`device error: ${e.split('\n')[0]}`);
  await machine.close();
  if (exit.kind !== 'poweroff' && exit.kind !== 'reboot') log(`guest ended: ${exit.kind} (${exit.detail})`);
  if (signal) return 128 + os.constants.signals[signal];
  return EXIT_CODES[exit.kind];
}

interface SerialSink {
  write(bytes: Uint8Array): void;
  flush(): Promise<void>;
  close(): void;
}

/** Batches guest console output so a burst of bytes is one write, not one per byte. */
function serialSink(target: SerialTarget | { kind: 'discard' }): SerialSink {
  let pending: Buffer[] = [];
  let scheduled = false;
  let fd: number | undefined;
  if (target.kind === 'file') {
    try {
      fd = fs.openSync(target.path, 'w');
    } catch (e) {
      throw new UserError(`--serial file ${target.path} cannot be written: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  const drain = () => {
    scheduled = false;
    if (pending.length === 0) return;
    const buf = Buffer.concat(pending);
    pending = [];
    if (fd !== undefined) fs.writeSync(fd, buf);
    else if (target.kind === 'stdio') process.stdout.write(buf);
  };
  return {
    write(bytes) {
      pending.push(Buffer.from(bytes));
      if (!scheduled) {
        scheduled = true;
        setImmediate(drain);
      }
    },
    flush() {
      drain();
      return fd !== undefined ? Promise.resolve() : new Promise((resolve) => process.stdout.write('', () => resolve()));
    },
    close() {
      if (fd !== undefined) fs.closeSync(fd);
      fd = undefined;
    },
  };
}

const CTRL_A = 0x01;

/** Feeds stdin to the guest's UART. On a terminal: raw mode, and Ctrl-A x ends the VM. */
function attachStdin(machine: Machine): { detach(): void } {
  const stdin = process.stdin;
  const tty = stdin.isTTY === true;
  // Inside the nested host stdin is a virtio port, but a terminal is at its other end.
  const escapes = tty || process.env.TSVISOR_CONSOLE_ESCAPE === '1';
  let escape = false;
  const onData = (chunk: Buffer) => {
    if (!escapes) return machine.consoleInput(chunk);
    const out: number[] = [];
    for (const b of chunk) {
      if (escape) {
        escape = false;
        if (b === 0x78 /* x */) return machine.end('poweroff', 'Ctrl-A x on the console');
        out.push(b); // Ctrl-A Ctrl-A sends one Ctrl-A
      } else if (b === CTRL_A) escape = true;
      else out.push(b);
    }
    machine.consoleInput(Uint8Array.from(out));
  };
  if (tty) stdin.setRawMode(true);
  stdin.on('data', onData);
  stdin.on('error', () => {});
  return {
    detach() {
      stdin.off('data', onData);
      if (tty) stdin.setRawMode(false);
      stdin.pause();
      stdin.unref?.();
    },
  };
}

export function formatStats(s: MachineStats): string {
  const lines = ['tsvisor stats:'];
  for (const v of s.vcpus) {
    const exits =
      Object.entries(v.exits)
        .map(([k, n]) => `${k}=${n}`)
        .join(' ') || 'none';
    lines.push(`  vcpu${v.id} exits: ${exits}${v.deviceErrors ? ` device-errors=${v.deviceErrors}` : ''}`);
  }
  for (const [bus, devices] of [
    ['pio', s.pio],
    ['mmio', s.mmio],
  ] as const) {
    for (const [name, c] of Object.entries(devices))
      lines.push(`  ${bus} ${name}: reads=${c.reads} writes=${c.writes}${c.queued ? ` queued=${c.queued}` : ''}`);
    const u = s.unclaimed[bus];
    const top = s.unclaimedTop[bus].map(([a, n]) => `0x${a.toString(16)}:${n}`).join(' ');
    lines.push(`  ${bus} unclaimed: reads=${u.reads} writes=${u.writes}${top ? ` (by address: ${top})` : ''}`);
  }
  lines.push(
    `  serial0: ${Object.entries(s.serial)
      .map(([k, n]) => `${k}=${n}`)
      .join(' ')}`,
  );
  lines.push(`  coalesced writes (no exit): ${s.coalescedWrites}`);
  for (const [name, c] of Object.entries(s.virtio))
    lines.push(
      `  ${name}: ${Object.entries(c)
        .map(([k, n]) => `${k}=${n}`)
        .join(' ')}`,
    );
  for (const n of s.nics) {
    const e = n.exits;
    const drops = Object.entries(n.drops)
      .map(([k, v]) => `${k.replace(/^(backend\.)?drop\./, '$1')}=${v}`)
      .join(' ');
    lines.push(
      `  nic ${n.name} (${n.model} on ${n.backend}): exits mmio-reads=${e.mmioReads} mmio-writes=${e.mmioWrites} pio-reads=${e.pioReads} pio-writes=${e.pioWrites}` +
        (n.queuedWrites ? ` queued-writes=${n.queuedWrites}` : '') +
        ` kicks=${n.kicks} interrupts=${n.interrupts} tx=${n.txPackets}/${n.txBytes}B rx=${n.rxPackets}/${n.rxBytes}B drops: ${drops || 'none'}`,
    );
    lines.push(
      `    ${Object.entries(n.detail)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ')}`,
    );
  }
  for (const [name, why] of Object.entries(s.deviceFailures)) lines.push(`  ${name} needed a reset: ${why}`);
  lines.push(`  event loop wakeups: ${s.eventLoopWakeups}`);
  if (s.strayErrors) lines.push(`  errors caught outside any device: ${s.strayErrors}`);
  return lines.join('\n') + '\n';
}
