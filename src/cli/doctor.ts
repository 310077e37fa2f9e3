// `tsvisor doctor`: what this machine offers tsvisor, and which accelerator `run` would use.
import { spawnSync } from 'node:child_process';
import { chooseAccel, probeKvm } from '../vmm/accel.js';
import { QEMU, qemuAvailable, runNested } from '../nested/nested-host.js';

export interface DoctorReport {
  kvm: ReturnType<typeof probeKvm>;
  accel: ReturnType<typeof chooseAccel>;
  nested: { qemu: string | null; starts?: boolean; seconds?: number; error?: string };
}

function qemuVersion(): string | null {
  if (!qemuAvailable()) return null;
  const r = spawnSync(QEMU, ['--version'], { encoding: 'utf8' });
  return r.stdout.split('\n')[0] ?? 'unknown';
}

export async function doctor(opts: { json: boolean; quick: boolean }): Promise<number> {
  const kvm = probeKvm();
  const accel = chooseAccel('auto', kvm.backing);
  const report: DoctorReport = { kvm, accel, nested: { qemu: qemuVersion() } };
  if (!opts.quick && report.nested.qemu) {
    const t0 = Date.now();
    try {
      const status = await runNested({ command: 'test', args: ['-c', '/dev/kvm'], stdin: 'ignore', memoryMiB: 1024, log: () => {} });
      report.nested.starts = status === 0;
      if (status !== 0) report.nested.error = `the nested host ran, but its /dev/kvm check returned ${status}`;
    } catch (e) {
      report.nested.starts = false;
      report.nested.error = (e as Error).message;
    }
    report.nested.seconds = (Date.now() - t0) / 1000;
  }
  if (opts.json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  } else {
    const yes = (b: boolean | undefined) => (b ? 'yes' : 'no');
    const lines = [
      `/dev/kvm present:      ${yes(kvm.present)}`,
      `/dev/kvm accessible:   ${yes(kvm.accessible)}${kvm.error ? ` (${kvm.error})` : ''}`,
      `KVM API version:       ${kvm.apiVersion ?? '-'}`,
      `KVM backing:           ${kvm.backing}`,
      `KVM max vCPUs:         ${kvm.maxVcpus ?? '-'}`,
      `KVM capabilities:      ${
        kvm.caps
          ? Object.entries(kvm.caps)
              .map(([k, v]) => `${k}=${yes(v)}`)
              .join(' ')
          : '-'
      }`,
      `qemu for nested host:  ${report.nested.qemu ?? `missing (apt-get install qemu-system-x86)`}`,
      `nested host starts:    ${report.nested.starts === undefined ? 'not tried' : `${yes(report.nested.starts)}${report.nested.seconds !== undefined ? ` (${report.nested.seconds.toFixed(1)} s)` : ''}${report.nested.error ? ` (${report.nested.error})` : ''}`}`,
      `tsvisor run would use: ${accel.accel} (${accel.why})`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
  }
  const usable = accel.accel === 'kvm' ? kvm.accessible : report.nested.starts !== false && report.nested.qemu !== null;
  return usable ? 0 : 1;
}
