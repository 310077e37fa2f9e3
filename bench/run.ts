// `npm run bench`: tsvisor against its peers, measured in the same run.
//  - boot: wall time from start to the default guest's first userspace line,
//    tsvisor against `qemu-system-x86_64 -accel kvm -M pc`, same kernel and initrd;
//  - pio-exit: ns per port-I/O exit of a tiny real-mode guest, tsvisor against a
//    bare KVM_RUN loop in C (bench/pio-exit.c);
//  - blk: virtio-blk sequential read/write MB/s and 4 KiB random-read IOPS from
//    inside a 2-vCPU guest (bench/blk-bench.c, O_DIRECT, one request at a time, and
//    32 at a time from 32 threads), on the same image, tsvisor against `qemu -accel
//    kvm` with virtio-blk-pci, both with one queue per vCPU; the 32-deep reads again
//    with one queue; VM exits per request with ioeventfd/irqfd on and off.
//    vhost-user-blk: the same workload on a disk whose data plane is a vhost-user
//    back-end process (`tsvisor vhost-user-blk`, then qemu-storage-daemon), two
//    queues, tsvisor's `--device vhost-user-blk-pci` against QEMU's
//    vhost-user-blk-pci on the same back-end process: the ratio compares the
//    front-ends. BENCH_BLK_PATHS=virtio-blk,vhost-user-blk picks the paths,
//    BENCH_BLK_BACKENDS=tsvisor,qsd the vhost-user back-ends.
//  - net: TCP throughput between the guest and the host over a tap, both ways
//    (iperf3 from Debian's packages on both ends), tsvisor's virtio-net and e1000
//    against QEMU's virtio-net-pci and e1000 (vhost=off: both serve the tap from
//    the VMM), and virtio-net with vhost=on against QEMU's with vhost=on (the
//    host kernel serves the tap for both); and `tsvisor bench io-paths` (exits and
//    interrupts per MB).
// All run where KVM is hardware-backed: inside the nested KVM host here. The PIO
// benchmark also runs on this machine's own /dev/kvm.
// BENCH_ONLY=boot,pio,blk,net picks sections; BENCH_BLK_PATHS and BENCH_NET_MODELS
// the cases within blk and net.
import { execSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CpioEntry } from '../src/guest/cpio.js';
import { fetchPackage } from '../src/guest/debian.js';
import { defaultGuest, DEFAULT_GUEST_CMDLINE, USERSPACE_BANNER } from '../src/guest/default-guest.js';
import { kvmBacking } from '../src/vmm/accel.js';
import { outLoop, runRealMode } from '../test/support/tiny-guest.js';
import { bootCommands, qemuArgs, timeBoot, tsvisorArgs } from './boot-timing.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = path.join(ROOT, 'bin', 'tsvisor.js');
const SELF = fileURLToPath(import.meta.url);
const BOOT_RUNS = Number(process.env.BENCH_BOOT_RUNS ?? 5);
const PIO_EXITS = Number(process.env.BENCH_PIO_EXITS ?? 20000);

const BLK_MIB = Number(process.env.BENCH_BLK_MIB ?? 128);
const BLK_RANDOM_READS = Number(process.env.BENCH_BLK_RANDOM_READS ?? 4000);
const NET_SECONDS = Number(process.env.BENCH_NET_SECONDS ?? 10);
/** The block paths the blk bench measures: virtio-blk (each VMM serves the image itself) and vhost-user-blk. */
const BLK_PATHS = (process.env.BENCH_BLK_PATHS ?? 'virtio-blk,vhost-user-blk').split(',');
/** The vhost-user-blk back-ends, each one process that serves the tsvisor run and then the QEMU run. */
const BLK_BACKENDS = {
  tsvisor: {
    name: 'tsvisor vhost-user-blk',
    command: (image: string, socket: string): [string, string[]] => [
      process.execPath,
      [BIN, 'vhost-user-blk', '--socket', socket, '--drive', `file=${image},num-queues=2`],
    ],
  },
  qsd: {
    name: 'qemu-storage-daemon',
    command: (image: string, socket: string): [string, string[]] => [
      'qemu-storage-daemon',
      [
        '--blockdev',
        `driver=file,node-name=f0,filename=${image}`,
        '--export',
        `type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=${socket},writable=on,num-queues=2`,
      ],
    ],
  },
} as const;
type BlkBackend = keyof typeof BLK_BACKENDS;
/** BENCH_BLK_BACKENDS=qsd (say) puts the vhost-user-blk path on that back-end only. */
const BLK_BACKEND_NAMES = (process.env.BENCH_BLK_BACKENDS ?? 'tsvisor,qsd').split(',');
for (const [knob, names, known] of [
  ['BENCH_BLK_PATHS', BLK_PATHS, ['virtio-blk', 'vhost-user-blk']],
  ['BENCH_BLK_BACKENDS', BLK_BACKEND_NAMES, Object.keys(BLK_BACKENDS)],
] as const)
  for (const n of names) if (!(known as readonly string[]).includes(n)) throw new Error(`${knob}: unknown "${n}" (known: ${known.join(', ')})`);
const ONLY = new Set((process.env.BENCH_ONLY ?? 'boot,pio,blk,net').split(','));
/** The cards the network bench measures, each against QEMU's same card on the same tap (vhost as given to both). */
const NET_CARDS = {
  'virtio-net': { device: 'virtio-net-pci', vhost: 'off' },
  e1000: { device: 'e1000', vhost: 'off' },
  'vhost-net': { device: 'virtio-net-pci', vhost: 'on' },
} as const;
type NetCard = keyof typeof NET_CARDS;
/** BENCH_NET_MODELS=virtio-net,vhost-net (say) measures those cards only. */
const NET_MODELS = (process.env.BENCH_NET_MODELS ?? 'virtio-net,e1000,vhost-net').split(',').filter((m): m is NetCard => m in NET_CARDS);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Seconds from spawn until `banner` appears on the child's stdout; the child is then killed. */
async function timeUntil(cmd: string, args: string[], banner: string): Promise<number> {
  const r = await timeBoot(cmd, args, banner, { stallMs: 300_000, limitMs: 300_000 });
  if (r.kind !== 'up') throw new Error(`${cmd}: no "${banner}" within 300 s (${r.kind}, last line: ${r.lastLine})`);
  return r.seconds;
}

async function bootBench(kernel: string, initrd: string): Promise<void> {
  const { tsvisor, qemu } = bootCommands(kernel, initrd);
  const t: number[] = [];
  const q: number[] = [];
  for (let i = 0; i < BOOT_RUNS; i++) {
    t.push(await timeUntil(...tsvisor, USERSPACE_BANNER));
    q.push(await timeUntil(...qemu, USERSPACE_BANNER));
  }
  report(
    'boot to first userspace line (s, median)',
    median(t),
    median(q),
    'qemu -accel kvm -M pc',
    `runs: tsvisor ${t.map((x) => x.toFixed(1)).join(' ')} | qemu ${q.map((x) => x.toFixed(1)).join(' ')}`,
  );
}

function compile(source: string, flags: string[] = []): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-bench-'));
  const exe = path.join(dir, path.basename(source, '.c'));
  const r = spawnSync('cc', ['-O2', ...flags, '-o', exe, path.join(ROOT, 'bench', source)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cc failed: ${r.stderr}`);
  return exe;
}

const compilePeer = () => compile('pio-exit.c');

/** Boots a guest, types `input` once its shell is up, and resolves with everything it printed once it exits. */
function session(cmd: string, args: string[], input: string): Promise<{ out: string; err: string }> {
  process.stderr.write(`# ${path.basename(cmd)} ${args.filter((a) => a.startsWith('--io') || a.startsWith('--irq') || a === 'on' || a === 'off').join(' ')}\n`);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let typed = false;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd}: did not finish within 15 minutes:\n${out.slice(-2000)}\n${err.slice(-2000)}`));
    }, 900_000);
    child.stdout.on('data', (d) => {
      out += d;
      if (!typed && out.includes(USERSPACE_BANNER)) {
        typed = true;
        child.stdin.end(input);
      }
    });
    child.stderr.on('data', (d) => (err += d));
    child.on('close', () => {
      clearTimeout(timer);
      resolve({ out, err });
    });
  });
}

type BlkResults = Record<'seqwrite' | 'seqread' | 'randread' | 'randread-qd32', number> & { requests: number };

function blkResults(out: string): BlkResults {
  const r = { requests: 0 } as BlkResults;
  for (const m of out.matchAll(/RESULT ([\w-]+) ([\d.]+) \S+ (\d+)/g)) {
    r[m[1] as 'seqwrite'] = Number(m[2]);
    r.requests += Number(m[3]);
  }
  if (r.seqwrite === undefined || r.seqread === undefined || r.randread === undefined) throw new Error(`the guest reported no results:\n${out.slice(-3000)}`);
  return r;
}

/** Exits the block device caused (its BAR accesses) per request, from `run --stats`. */
function exitsPerRequest(stats: string, requests: number): string {
  const m = /mmio virtio-blk0: reads=(\d+) writes=(\d+)/.exec(stats);
  const k = /virtio-blk0: notifyExits=(\d+) .*\bkicks=(\d+) calls=(\d+)/.exec(stats);
  if (!m || !k) throw new Error(`no virtio-blk0 statistics:\n${stats}`);
  const exits = Number(m[1]) + Number(m[2]);
  return `${(exits / requests).toFixed(3)} exits/request (${exits} BAR exits, ${k[1]} kicks by exit, ${k[2]} kick wakeups in the workers, ${k[3]} interrupts signalled, ${requests} requests)`;
}

/** The default guest's initramfs with bench/blk-bench.c built in (static, so it needs nothing else). */
function blkBenchInitrd(): string {
  const tool = compile('blk-bench.c', ['-static', '-pthread']);
  return defaultGuest(undefined, [{ type: 'file', path: 'bin/blk-bench', data: fs.readFileSync(tool), mode: 0o755 }]).initrd;
}

async function blkBench(kernel: string, initrd: string): Promise<void> {
  // The image lives in the nested host's RAM (tmpfs), so both VMMs are measured, not 9p.
  const image = path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), `tsvisor-bench-${process.pid}.img`);
  fs.writeFileSync(image, '');
  fs.truncateSync(image, (BLK_MIB + 16) * 2 ** 20);
  const commands = [`blk-bench seqwrite /dev/vda ${BLK_MIB}`, `blk-bench seqread /dev/vda ${BLK_MIB}`, `blk-bench randread /dev/vda ${BLK_RANDOM_READS}`];
  const input = [...commands, `blk-bench randread-qd32 /dev/vda ${4 * BLK_RANDOM_READS}`, 'poweroff', ''].join('\n');
  const append = DEFAULT_GUEST_CMDLINE;
  const drive = (queues: number) => ['--drive', `file=${image},format=raw,if=virtio,num-queues=${queues}`];
  const tsvisor = (paths: string, queues = 2) =>
    tsvisorArgs(kernel, initrd, append, ['--cpus', '2', ...drive(queues), '--stats', '--ioeventfd', paths, '--irqfd', paths]);
  const qemu = qemuArgs(kernel, initrd, append, [
    '-smp',
    '2',
    '-drive',
    `file=${image},format=raw,if=none,id=d0,cache=writeback`,
    '-device',
    'virtio-blk-pci,drive=d0',
  ]);
  try {
    if (BLK_PATHS.includes('virtio-blk')) await virtioBlkBench();
    if (BLK_PATHS.includes('vhost-user-blk')) await vhostUserBlkBench(kernel, initrd, image, input);
  } finally {
    fs.rmSync(image, { force: true });
  }

  async function virtioBlkBench(): Promise<void> {
    const on = await session(process.execPath, tsvisor('on'), input);
    const q = blkResults((await session('qemu-system-x86_64', qemu, input)).out);
    const t = blkResults(on.out);
    report('virtio-blk sequential write, 1 MiB O_DIRECT (MB/s)', t.seqwrite, q.seqwrite, 'qemu virtio-blk-pci');
    report('virtio-blk sequential read, 1 MiB O_DIRECT (MB/s)', t.seqread, q.seqread, 'qemu virtio-blk-pci');
    report('virtio-blk 4 KiB random read, queue depth 1 (IOPS)', t.randread, q.randread, 'qemu virtio-blk-pci');
    report('virtio-blk 4 KiB random read, queue depth 32, 2 queues (IOPS)', t['randread-qd32'], q['randread-qd32'], 'qemu virtio-blk-pci');
    const one = blkResults((await session(process.execPath, tsvisor('on', 1), input)).out);
    report('virtio-blk 4 KiB random read, queue depth 32, 2 queues vs 1 (IOPS)', t['randread-qd32'], one['randread-qd32'], 'tsvisor with num-queues=1');
    const off = await session(process.execPath, tsvisor('off'), input);
    const t2 = blkResults(off.out);
    process.stdout.write(`BENCH virtio-blk exits, ioeventfd+irqfd on: ${exitsPerRequest(on.err, t.requests)}\n`);
    process.stdout.write(`BENCH virtio-blk exits, ioeventfd+irqfd off: ${exitsPerRequest(off.err, t2.requests)}\n`);
    report('virtio-blk 4 KiB random read, ioeventfd+irqfd off vs on (IOPS)', t2.randread, t.randread, 'tsvisor with them on');
  }
}

/** A vhost-user back-end process, up once its socket is; what it wrote to stdout and stderr is kept. */
interface Backend {
  log(): string;
  /** SIGTERM, then its exit status (SIGKILL after 30 s). */
  stop(): Promise<string>;
}

async function startBackend(cmd: string, args: string[], socket: string): Promise<Backend> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  let exit: string | undefined;
  const closed = new Promise<string>((resolve) => {
    child.once('error', (e) => resolve((exit = `failed to start: ${e.message}`)));
    child.once('close', (code, signal) => resolve((exit = signal ? `killed by ${signal}` : `exit ${code}`)));
  });
  for (let waited = 0; !fs.statSync(socket, { throwIfNoEntry: false })?.isSocket(); waited += 100) {
    if (exit !== undefined || waited >= 60_000) {
      child.kill('SIGKILL');
      throw new Error(`${path.basename(cmd)} ${args.join(' ')}: no socket ${socket} (${exit ?? 'not within 60 s'}):\n${log.slice(-3000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    log: () => log,
    async stop() {
      if (exit === undefined) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      const status = await closed;
      clearTimeout(timer);
      return status;
    },
  };
}

/**
 * The same workload on a vhost-user-blk disk (two queues) served by each back-end in
 * turn: one back-end process serves the tsvisor run, then the QEMU run, so the ratio
 * compares the front-ends. The sockets go to a tmpfs: the nested host's 9p shares
 * refuse to bind them (ENXIO).
 */
async function vhostUserBlkBench(kernel: string, initrd: string, image: string, input: string): Promise<void> {
  const dir = ['/run', os.tmpdir()].reduce<string | undefined>((found, base) => {
    if (found) return found;
    try {
      return fs.mkdtempSync(path.join(base, 'tsvisor-bench-'));
    } catch {
      return undefined;
    }
  }, undefined);
  if (!dir) throw new Error('no directory for the vhost-user sockets');
  const socket = path.join(dir, 'blk.sock');
  const append = DEFAULT_GUEST_CMDLINE;
  const tsvisor = tsvisorArgs(kernel, initrd, append, [
    '--cpus',
    '2',
    '--chardev',
    `socket,id=c0,path=${socket}`,
    '--device',
    'vhost-user-blk-pci,chardev=c0,num-queues=2',
    '--stats',
  ]);
  // The back-end maps guest RAM: QEMU's must be a shared memfd, of the size qemuArgs gives the guest.
  const machine = qemuArgs(kernel, initrd, append);
  const ram = machine[machine.indexOf('-m') + 1];
  const qemu = qemuArgs(kernel, initrd, append, [
    '-smp',
    '2',
    '-object',
    `memory-backend-memfd,id=mem,size=${ram}M,share=on`,
    '-numa',
    'node,memdev=mem',
    '-chardev',
    `socket,id=c0,path=${socket}`,
    '-device',
    'vhost-user-blk-pci,chardev=c0,num-queues=2',
  ]);
  const failures: string[] = [];
  try {
    for (const key of BLK_BACKEND_NAMES as BlkBackend[]) {
      const { name, command } = BLK_BACKENDS[key];
      process.stderr.write(`# vhost-user-blk on ${name}\n`);
      const backend = await startBackend(...command(image, socket), socket);
      let status = '';
      try {
        const run = await session(process.execPath, tsvisor, input);
        const t = blkResults(`${run.out}\n${run.err.slice(-2000)}`);
        // The front-end's counters for the disk: connected, disconnects, reconnects.
        for (const line of run.err.split('\n').filter((l) => /^\s*vhost-user-blk\d+:/.test(l))) process.stdout.write(`# tsvisor ${line.trim()}\n`);
        const q = blkResults((await session('qemu-system-x86_64', qemu, input)).out);
        const peer = 'qemu vhost-user-blk-pci';
        report(`vhost-user-blk on ${name}, sequential write, 1 MiB O_DIRECT (MB/s)`, t.seqwrite, q.seqwrite, peer);
        report(`vhost-user-blk on ${name}, sequential read, 1 MiB O_DIRECT (MB/s)`, t.seqread, q.seqread, peer);
        report(`vhost-user-blk on ${name}, 4 KiB random read, queue depth 1 (IOPS)`, t.randread, q.randread, peer);
        report(`vhost-user-blk on ${name}, 4 KiB random read, queue depth 32, 2 queues (IOPS)`, t['randread-qd32'], q['randread-qd32'], peer);
      } catch (e) {
        failures.push(`vhost-user-blk on ${name}: ${(e as Error).message}`);
        process.stdout.write(`BENCH vhost-user-blk on ${name}: failed (${(e as Error).message.split('\n')[0]})\n`);
      } finally {
        status = await backend.stop();
      }
      // What the back-end said (tsvisor's daemon: each client's connection and disconnection).
      const lines = backend.log().trimEnd().split('\n').filter(Boolean);
      process.stdout.write(`# ${name} (${status}), ${lines.length} log lines${lines.length > 20 ? ', the last 20' : ''}:\n`);
      for (const line of lines.slice(-20)) process.stdout.write(`#   ${line}\n`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (failures.length) throw new Error(failures.join('\n'));
}

/** iperf3 and the libraries it loads: from Debian's packages, and the host's own libc and OpenSSL (the same release). */
function iperf3(): { bin: string; libraryPath: string; files: CpioEntry[] } {
  const pkgs = ['iperf3', 'libiperf0', 'libsctp1'].map((p) => fetchPackage(p));
  const bin = path.join(pkgs[0]!.dir, 'usr/bin/iperf3');
  const libraryPath = pkgs
    .slice(1)
    .map((p) => path.join(p.dir, 'usr/lib/x86_64-linux-gnu'))
    .join(':');
  const ldd = execSync(`ldd ${bin}`, { encoding: 'utf8', env: { ...process.env, LD_LIBRARY_PATH: libraryPath } });
  const libs = [...ldd.matchAll(/=> (\/\S+)/g)].map((m) => m[1]!);
  const loader = /^\s*(\/\S*ld-linux\S*)/m.exec(ldd)?.[1] ?? '/lib64/ld-linux-x86-64.so.2';
  const files: CpioEntry[] = [
    { type: 'file', path: 'bin/iperf3', data: fs.readFileSync(bin), mode: 0o755 },
    { type: 'file', path: 'lib64/ld-linux-x86-64.so.2', data: fs.readFileSync(loader), mode: 0o755 },
    ...libs.map((l): CpioEntry => ({ type: 'file', path: `lib/x86_64-linux-gnu/${path.basename(l)}`, data: fs.readFileSync(l) })),
  ];
  return { bin, libraryPath, files };
}

const TAP = 'tsvbench0';
const TAP_HOST = '192.168.79.1';

/** Mbit/s from the `receiver` line after `marker` in iperf3's output. */
function iperfRate(out: string, marker: string): number {
  const m = new RegExp(`${marker}[\\s\\S]*?([\\d.]+) Mbits/sec\\s+receiver`).exec(out);
  if (!m) throw new Error(`no iperf3 result after ${marker}:\n${out.slice(-3000)}`);
  return Number(m[1]);
}

async function netBench(kernel: string, initrd: string, iperfBin: string, libraryPath: string): Promise<void> {
  execSync(`ip tuntap add ${TAP} mode tap && ip addr add ${TAP_HOST}/24 dev ${TAP} && ip link set ${TAP} up`);
  // iperf3 maps an unlinked temporary file for its buffers, which 9p (the nested host's $TMPDIR) refuses.
  const server = spawn(iperfBin, ['-s', '-B', TAP_HOST], { stdio: 'ignore', env: { ...process.env, LD_LIBRARY_PATH: libraryPath, TMPDIR: '/dev/shm' } });
  const input = [
    `ip addr add 192.168.79.2/24 dev eth0 && ip link set eth0 up`,
    `for i in $(seq 60); do ping -c 1 -W 1 ${TAP_HOST} >/dev/null && break; done`,
    `echo GUEST-TO-HOST-$((1+1)); iperf3 -c ${TAP_HOST} -t ${NET_SECONDS} -f m | grep receiver`,
    `echo HOST-TO-GUEST-$((1+1)); iperf3 -R -c ${TAP_HOST} -t ${NET_SECONDS} -f m | grep receiver`,
    'poweroff',
    '',
  ].join('\n');
  try {
    for (const model of NET_MODELS) {
      const { vhost } = NET_CARDS[model];
      const device = `${NET_CARDS[model].device},netdev=n0`;
      const tsvisor = tsvisorArgs(kernel, initrd, DEFAULT_GUEST_CMDLINE, [
        '--netdev',
        `tap,id=n0,ifname=${TAP},script=no,vhost=${vhost}`,
        '--device',
        device,
        '--stats',
      ]);
      const qemu = qemuArgs(kernel, initrd, DEFAULT_GUEST_CMDLINE, [
        '-netdev',
        `tap,id=n0,ifname=${TAP},script=no,downscript=no,vhost=${vhost}`,
        '-device',
        device,
      ]);
      const run = await session(process.execPath, tsvisor, input);
      const t = run.out;
      // The card's counters (exits, queued writes, interrupts, throttling), to read the figures by.
      const lines = run.err.split('\n');
      const card = lines.findIndex((l) => l.includes('  nic '));
      for (const line of card >= 0 ? lines.slice(card, card + 2) : []) process.stdout.write(`# ${line.trim()}\n`);
      const q = (await session('qemu-system-x86_64', qemu, input)).out;
      const peer = `qemu ${NET_CARDS[model].device} (tap, vhost=${vhost})`;
      // tsvisor's own words (stderr) with its output when a figure is missing.
      const mine = `${t}\n${run.err.slice(-2000)}`;
      report(`${model} over tap, TCP guest to host (Mbit/s)`, iperfRate(mine, 'GUEST-TO-HOST-2'), iperfRate(q, 'GUEST-TO-HOST-2'), peer);
      report(`${model} over tap, TCP host to guest (Mbit/s)`, iperfRate(mine, 'HOST-TO-GUEST-2'), iperfRate(q, 'HOST-TO-GUEST-2'), peer);
    }
  } finally {
    server.kill();
    execSync(`ip link del ${TAP}`);
  }
  const io = spawnSync(process.execPath, [BIN, 'bench', 'io-paths', '--accel', 'kvm', '--kernel', kernel, '--initrd', initrd], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  process.stdout.write(
    io.stdout
      .split('\n')
      .map((l) => (l ? `BENCH ${l}` : l))
      .join('\n'),
  );
}

async function pioBench(where: string, peer: string): Promise<void> {
  const c = Number(spawnSync(peer, [String(PIO_EXITS)], { encoding: 'utf8' }).stdout.trim());
  const noop = { read: (_o: number, d: Uint8Array) => d.fill(0), write: () => {} };
  const run = await runRealMode(outLoop(PIO_EXITS), [
    [{ name: 'loop', ...noop }, 0x10, 1],
    [{ name: 'com1', ...noop }, 0x3f8, 8],
  ]);
  report(`PIO exit round trip, ${where} (ns/exit)`, run.nanoseconds / (PIO_EXITS + 2), c, 'C KVM_RUN loop');
}

function report(what: string, ours: number, peer: number, peerName: string, extra = ''): void {
  process.stdout.write(
    `BENCH ${what}: tsvisor ${ours.toFixed(ours < 100 ? 2 : 0)}, ${peerName} ${peer.toFixed(peer < 100 ? 2 : 0)}, ratio ${(ours / peer).toFixed(2)}${extra ? `\n      ${extra}` : ''}\n`,
  );
}

async function main(): Promise<void> {
  const [mode, kernel, initrd, innerBlkInitrd, innerNetInitrd, iperfBin, iperfLibs] = process.argv.slice(2);
  if (mode === 'inner') {
    if (ONLY.has('pio')) await pioBench('nested host KVM', compilePeer());
    if (ONLY.has('boot')) await bootBench(kernel!, initrd!);
    if (ONLY.has('blk')) await blkBench(kernel!, innerBlkInitrd!);
    if (ONLY.has('net')) await netBench(kernel!, innerNetInitrd!, iperfBin!, iperfLibs!);
    return;
  }
  const guest = defaultGuest();
  if (fs.existsSync('/dev/kvm') && ONLY.has('pio')) await pioBench(`this machine's /dev/kvm (${kvmBacking()})`, compilePeer());
  // Built here: the nested host has neither the package cache nor the network.
  const blkInitrd = blkBenchInitrd();
  const iperf = iperf3();
  const netInitrd = defaultGuest(undefined, iperf.files).initrd;
  if (kvmBacking() === 'hardware') {
    if (ONLY.has('boot')) await bootBench(guest.kernel, guest.initrd);
    if (ONLY.has('blk')) await blkBench(guest.kernel, blkInitrd);
    if (ONLY.has('net')) await netBench(guest.kernel, netInitrd, iperf.bin, iperf.libraryPath);
  } else {
    const inner = [process.execPath, SELF, 'inner', guest.kernel, guest.initrd, blkInitrd, netInitrd, iperf.bin, iperf.libraryPath];
    // Two vCPUs, as the figures in README were measured: iperf3 and the VMM under test
    // each need a CPU. Two risk the multi-threaded TCG wedge (docs/nested-host-load.md);
    // the watchdog names it if it comes.
    const profiles = process.env.BENCH_CPU_PROF ? ['--writable', process.env.BENCH_CPU_PROF] : [];
    const r = spawnSync(process.execPath, [BIN, 'nested', '--memory', '3G', '--cpus', '2', ...profiles, '--', ...inner], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    if (r.status !== 0) throw new Error(`the nested benchmark failed with status ${r.status}`);
  }
}

await main();
