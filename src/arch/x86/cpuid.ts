// Shapes KVM_GET_SUPPORTED_CPUID into what one vCPU of this VM reports:
// its own APIC ID, the VM's CPU count in the topology leaves, and the hypervisor bit.
import type { CpuidEntry } from '../../kvm/structs.js';

const LEAF_FEATURES = 0x1;
const LEAF_CACHE_PARAMS = 0x4;
const LEAF_PMU = 0xa;
const LEAF_TOPOLOGY = 0xb;
const LEAF_AMD_SIZES = 0x80000008;
const ECX_HYPERVISOR = 1 << 31;
const EDX_HTT = 1 << 28;

export function vcpuCpuid(supported: readonly CpuidEntry[], apicId: number, cpus: number): CpuidEntry[] {
  return supported.map((src) => {
    const e = { ...src };
    switch (e.function) {
      case LEAF_FEATURES:
        e.ebx = ((apicId & 0xff) << 24) | ((cpus & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff); // CLFLUSH line size 8 qwords
        e.ecx = (e.ecx | ECX_HYPERVISOR) >>> 0;
        e.edx = cpus > 1 ? (e.edx | EDX_HTT) >>> 0 : (e.edx & ~EDX_HTT) >>> 0;
        break;
      case LEAF_CACHE_PARAMS:
        // Cores sharing the package, minus one, in EAX[31:26]; one thread per core.
        e.eax = ((e.eax & 0x3ff) | ((cpus - 1) << 26)) >>> 0;
        break;
      case LEAF_PMU:
        // No virtual PMU: guests probing counters would only get #GPs.
        e.eax = e.ebx = e.ecx = e.edx = 0;
        break;
      case LEAF_TOPOLOGY: {
        // One thread per core, `cpus` cores per package.
        const coreShift = 32 - Math.clz32(Math.max(cpus - 1, 0));
        e.edx = apicId;
        if (e.index === 0) {
          e.eax = 0;
          e.ebx = 1;
          e.ecx = (1 << 8) | e.index;
        } else if (e.index === 1) {
          e.eax = coreShift;
          e.ebx = cpus;
          e.ecx = (2 << 8) | e.index;
        } else {
          e.eax = e.ebx = 0;
          e.ecx = e.index;
        }
        break;
      }
      case LEAF_AMD_SIZES:
        e.ecx = (e.ecx & ~0xff) | ((cpus - 1) & 0xff);
        break;
    }
    return e;
  });
}
