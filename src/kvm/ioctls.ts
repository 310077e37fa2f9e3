// The one table of KVM ioctl numbers, capabilities and exit reasons (linux/kvm.h, x86_64).
const KVMIO = 0xae;
const io = (nr: number) => (KVMIO << 8) | nr;
const iow = (nr: number, size: number) => ((1 << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
const ior = (nr: number, size: number) => ((2 << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
const iowr = (nr: number, size: number) => ((3 << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;

export const Ioctl = {
  // system (/dev/kvm)
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, 8),
  // VM
  SET_USER_MEMORY_REGION: iow(0x46, 32),
  SET_TSS_ADDR: io(0x47),
  SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  CREATE_VCPU: io(0x41),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, 8),
  REGISTER_COALESCED_MMIO: iow(0x67, 16),
  UNREGISTER_COALESCED_MMIO: iow(0x68, 16),
  SET_GSI_ROUTING: iow(0x6a, 8),
  IRQFD: iow(0x76, 32),
  CREATE_PIT2: iow(0x77, 64),
  IOEVENTFD: iow(0x79, 64),
  SIGNAL_MSI: iow(0xa5, 32),
  // vCPU
  RUN: io(0x80),
  GET_REGS: ior(0x81, 144),
  SET_REGS: iow(0x82, 144),
  GET_SREGS: ior(0x83, 312),
  SET_SREGS: iow(0x84, 312),
  GET_MSRS: iowr(0x88, 8),
  SET_MSRS: iow(0x89, 8),
  GET_FPU: ior(0x8c, 416),
  SET_FPU: iow(0x8d, 416),
  GET_LAPIC: ior(0x8e, 1024),
  SET_LAPIC: iow(0x8f, 1024),
  SET_CPUID2: iow(0x90, 8),
} as const;

export const Cap = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  COALESCED_MMIO: 15,
  IRQ_ROUTING: 25,
  IRQFD: 32,
  PIT2: 33,
  IOEVENTFD: 36,
  SET_IDENTITY_MAP_ADDR: 37,
  MAX_VCPUS: 66,
  SIGNAL_MSI: 77,
  IMMEDIATE_EXIT: 136,
  COALESCED_PIO: 162,
} as const;

export const API_VERSION = 12;

export const ExitReason = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
  IOAPIC_EOI: 26,
} as const;

const exitNames = new Map<number, string>(Object.entries(ExitReason).map(([k, v]) => [v, k.toLowerCase()]));

export function exitReasonName(reason: number): string {
  return exitNames.get(reason) ?? `exit_${reason}`;
}

export const IoDirection = { IN: 0, OUT: 1 } as const;

export const SystemEvent = { SHUTDOWN: 1, RESET: 2, CRASH: 3 } as const;

/** Byte offsets inside the shared kvm_run page. */
export const RunOffset = {
  immediateExit: 1,
  exitReason: 8,
  // io
  ioDirection: 32,
  ioSize: 33,
  ioPort: 34,
  ioCount: 36,
  ioDataOffset: 40,
  // mmio
  mmioPhysAddr: 32,
  mmioData: 40,
  mmioLen: 48,
  mmioIsWrite: 52,
  // internal error / fail entry / system event share the union start
  union: 32,
} as const;

export const PIT_SPEAKER_DUMMY = 1;
export const IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const IOEVENTFD_FLAG_PIO = 1 << 1;
export const IOEVENTFD_FLAG_DEASSIGN = 1 << 2;
export const IRQFD_FLAG_DEASSIGN = 1 << 0;
export const MEM_READONLY = 1 << 1;
