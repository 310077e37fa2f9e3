// Which accelerator a VM runs on: /dev/kvm directly when it is backed by hardware
// virtualization, or the nested KVM host when it is missing or software-only (PVM,
// where guest ring-0 code is emulated one instruction at a time).
import fs from 'node:fs';
import { Cap } from '../kvm/ioctls.js';
import { Kvm, KVM_DEVICE } from '../kvm/kvm.js';

export type AccelRequest = 'auto' | 'kvm' | 'nested';
export type Accel = 'kvm' | 'nested';
export type KvmBacking = 'hardware' | 'pvm' | 'software' | 'none';

export interface KvmProbe {
  device: string;
  present: boolean;
  accessible: boolean;
  apiVersion?: number;
  backing: KvmBacking;
  maxVcpus?: number;
  caps?: Record<string, boolean>;
  error?: string;
}

function cpuFlags(): Set<string> {
  try {
    const line = fs
      .readFileSync('/proc/cpuinfo', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('flags'));
    return new Set(line?.split(':')[1]?.trim().split(/\s+/) ?? []);
  } catch {
    return new Set();
  }
}

export function kvmBacking(): KvmBacking {
  if (!fs.existsSync(KVM_DEVICE)) return 'none';
  if (fs.existsSync('/sys/module/kvm_pvm')) return 'pvm';
  const flags = cpuFlags();
  return flags.has('vmx') || flags.has('svm') ? 'hardware' : 'software';
}

export function probeKvm(): KvmProbe {
  const probe: KvmProbe = { device: KVM_DEVICE, present: fs.existsSync(KVM_DEVICE), accessible: false, backing: kvmBacking() };
  if (!probe.present) return probe;
  try {
    const kvm = Kvm.open();
    probe.accessible = true;
    probe.apiVersion = kvm.apiVersion();
    probe.maxVcpus = kvm.maxVcpus();
    probe.caps = Object.fromEntries(
      (['IRQCHIP', 'PIT2', 'IOEVENTFD', 'IRQFD', 'IMMEDIATE_EXIT', 'SIGNAL_MSI', 'IRQ_ROUTING'] as const).map((c) => [
        c.toLowerCase(),
        kvm.checkExtension(Cap[c]) > 0,
      ]),
    );
    kvm.close();
  } catch (e) {
    probe.error = (e as Error).message;
  }
  return probe;
}

export function chooseAccel(request: AccelRequest, backing = kvmBacking()): { accel: Accel; why: string } {
  if (request === 'kvm') return { accel: 'kvm', why: 'requested with --accel kvm' };
  if (request === 'nested') return { accel: 'nested', why: 'requested with --accel nested' };
  switch (backing) {
    case 'hardware':
      return { accel: 'kvm', why: '/dev/kvm is hardware-backed' };
    case 'pvm':
      return { accel: 'nested', why: '/dev/kvm is PVM (software): guest kernels would run emulated' };
    case 'software':
      return { accel: 'nested', why: '/dev/kvm has no VT-x/AMD-V behind it' };
    case 'none':
      return { accel: 'nested', why: 'there is no /dev/kvm' };
  }
}
