// Times a guest boot from spawn to a banner on its console, and tells a boot that
// is merely slow from one that stopped: no console output for `stallMs`.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { DEFAULT_GUEST_CMDLINE } from '../src/guest/default-guest.js';

export interface BootResult {
  /** up: the banner appeared; stalled: no output for stallMs; slow: still printing at limitMs; exited: the VMM ended first. */
  kind: 'up' | 'stalled' | 'slow' | 'exited';
  seconds: number;
  /** The console's last line when it did not come up. */
  lastLine: string;
}

export interface BootTimingOptions {
  stallMs: number;
  limitMs: number;
}

/** Spawns `cmd`, waits for `banner` on its stdout, then kills it. */
export function timeBoot(cmd: string, args: readonly string[], banner: string, opts: BootTimingOptions): Promise<BootResult> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'ignore'] });
    let out = '';
    let done = false;
    const finish = (kind: BootResult['kind']) => {
      if (done) return;
      done = true;
      clearTimeout(stall);
      clearTimeout(limit);
      child.kill('SIGKILL');
      const lastLine = kind === 'up' ? '' : (out.trimEnd().split('\n').pop() ?? '').slice(0, 200);
      resolve({ kind, seconds: Number(process.hrtime.bigint() - t0) / 1e9, lastLine });
    };
    let stall = setTimeout(() => finish('stalled'), opts.stallMs);
    const limit = setTimeout(() => finish('slow'), opts.limitMs);
    child.once('error', reject);
    child.stdout.on('data', (d) => {
      out = (out + d).slice(-65536);
      clearTimeout(stall);
      stall = setTimeout(() => finish('stalled'), opts.stallMs);
      if (out.includes(banner)) finish('up');
    });
    child.once('close', () => finish('exited'));
  });
}

const BIN = fileURLToPath(new URL('../../bin/tsvisor.js', import.meta.url));

/** `tsvisor run` of a guest with KVM, as every benchmark starts it; `extra` adds devices and flags. */
export function tsvisorArgs(kernel: string, initrd: string, append: string, extra: string[] = []): string[] {
  // BENCH_CPU_PROF=DIR: each tsvisor run writes V8 CPU profiles (one per thread) there, to say where the time goes.
  const profile = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  return [...profile, BIN, 'run', '--accel', 'kvm', '--kernel', kernel, '--initrd', initrd, '--memory', '512M', '--append', append, ...extra];
}

/** The same guest under `qemu-system-x86_64 -accel kvm -M pc`, the peer every benchmark measures against. */
export function qemuArgs(kernel: string, initrd: string, append: string, extra: string[] = []): string[] {
  const machine = '-accel kvm -M pc -cpu host -m 512 -nodefaults -no-user-config -display none -serial stdio -no-reboot'.split(' ');
  return [...machine, '-kernel', kernel, '-initrd', initrd, '-append', append, ...extra];
}

/** The same guest under tsvisor and under QEMU with KVM, as the boot benchmarks run it. */
export function bootCommands(kernel: string, initrd: string, extraAppend = ''): Record<'tsvisor' | 'qemu', [string, string[]]> {
  const append = `${DEFAULT_GUEST_CMDLINE} ${extraAppend}`.trim();
  return { tsvisor: [process.execPath, tsvisorArgs(kernel, initrd, append)], qemu: ['qemu-system-x86_64', qemuArgs(kernel, initrd, append)] };
}
