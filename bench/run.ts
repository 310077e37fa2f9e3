// `npm run bench`: tsvisor against its peers, measured in the same run.
//  - boot: wall time from start to the default guest's first userspace line,
//    tsvisor against `qemu-system-x86_64 -accel kvm -M pc`, same kernel and initrd;
//  - pio-exit: ns per port-I/O exit of a tiny real-mode guest, tsvisor against a
//    bare KVM_RUN loop in C (bench/pio-exit.c).
// Both run where KVM is hardware-backed: inside the nested KVM host here. The PIO
// benchmark also runs on this machine's own /dev/kvm.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultGuest, DEFAULT_GUEST_CMDLINE, USERSPACE_BANNER } from '../src/guest/default-guest.js';
import { kvmBacking } from '../src/vmm/accel.js';
import { outLoop, runRealMode } from '../test/support/tiny-guest.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = path.join(ROOT, 'bin', 'tsvisor.js');
const SELF = fileURLToPath(import.meta.url);
const BOOT_RUNS = Number(process.env.BENCH_BOOT_RUNS ?? 5);
const PIO_EXITS = Number(process.env.BENCH_PIO_EXITS ?? 20000);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Seconds from spawn until `banner` appears on the child's stdout; the child is then killed. */
function timeUntil(cmd: string, args: string[], banner: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'ignore'] });
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd}: no "${banner}" within 300 s`));
    }, 300_000);
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes(banner)) {
        clearTimeout(timer);
        resolve(Number(process.hrtime.bigint() - t0) / 1e9);
        child.kill('SIGKILL');
      }
    });
  });
}

async function bootBench(kernel: string, initrd: string): Promise<void> {
  const tsvisor = [BIN, 'run', '--accel', 'kvm', '--kernel', kernel, '--initrd', initrd, '--memory', '512M', '--append', DEFAULT_GUEST_CMDLINE];
  const qemu = ['-accel', 'kvm', '-M', 'pc', '-cpu', 'host', '-m', '512', '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot', '-kernel', kernel, '-initrd', initrd, '-append', DEFAULT_GUEST_CMDLINE];
  const t: number[] = [];
  const q: number[] = [];
  for (let i = 0; i < BOOT_RUNS; i++) {
    t.push(await timeUntil(process.execPath, tsvisor, USERSPACE_BANNER));
    q.push(await timeUntil('qemu-system-x86_64', qemu, USERSPACE_BANNER));
  }
  report('boot to first userspace line (s, median)', median(t), median(q), 'qemu -accel kvm -M pc', `runs: tsvisor ${t.map((x) => x.toFixed(1)).join(' ')} | qemu ${q.map((x) => x.toFixed(1)).join(' ')}`);
}

function compilePeer(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-bench-'));
  const exe = path.join(dir, 'pio-exit');
  const r = spawnSync('cc', ['-O2', '-o', exe, path.join(ROOT, 'bench', 'pio-exit.c')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cc failed: ${r.stderr}`);
  return exe;
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
  process.stdout.write(`BENCH ${what}: tsvisor ${ours.toFixed(ours < 100 ? 2 : 0)}, ${peerName} ${peer.toFixed(peer < 100 ? 2 : 0)}, ratio ${(ours / peer).toFixed(2)}${extra ? `\n      ${extra}` : ''}\n`);
}

async function main(): Promise<void> {
  const [mode, kernel, initrd] = process.argv.slice(2);
  if (mode === 'inner' || mode === 'inner-pio') {
    await pioBench('nested host KVM', compilePeer());
    if (mode === 'inner') await bootBench(kernel!, initrd!);
    return;
  }
  const guest = defaultGuest();
  if (fs.existsSync('/dev/kvm')) await pioBench(`this machine's /dev/kvm (${kvmBacking()})`, compilePeer());
  if (kvmBacking() === 'hardware') {
    await bootBench(guest.kernel, guest.initrd);
  } else {
    const r = spawnSync(process.execPath, [BIN, 'nested', '--', process.execPath, SELF, 'inner', guest.kernel, guest.initrd], { stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status !== 0) throw new Error(`the nested benchmark failed with status ${r.status}`);
  }
}

await main();
