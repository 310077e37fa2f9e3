// Typed KVM objects, created as Kvm -> Vm -> Vcpu (the kvm-ioctls shape).
// Failed ioctls throw SysError naming the ioctl and the errno.
import {
  API_VERSION,
  Cap,
  Ioctl,
  IOEVENTFD_FLAG_DATAMATCH,
  IOEVENTFD_FLAG_DEASSIGN,
  IOEVENTFD_FLAG_PIO,
  IRQFD_FLAG_DEASSIGN,
  PIT_SPEAKER_DUMMY,
} from './ioctls.js';
import {
  cpuidBuffer,
  decodeCpuid,
  decodeMsrs,
  decodeRegs,
  decodeSregs,
  encodeCpuid,
  encodeDefaultFpu,
  encodeMemoryRegion,
  encodeMsrs,
  encodeRegs,
  encodeSregs,
  type CpuidEntry,
  type MsrEntry,
  type Regs,
  type Sregs,
  SREGS_SIZE,
} from './structs.js';
import { closeFd, errnoName, ioctlBuf, ioctlInt, mmapShared, munmap, O_RDWR, openFile, SysError, type Mapping } from '../host/libc.js';

export const KVM_DEVICE = '/dev/kvm';

/** There is no usable /dev/kvm (missing, or no permission). */
export class KvmUnavailableError extends Error {
  override name = 'KvmUnavailableError';
}

export class Kvm {
  private constructor(readonly fd: number) {}

  static open(path = KVM_DEVICE): Kvm {
    let fd: number;
    try {
      fd = openFile(path, O_RDWR);
    } catch (e) {
      if (!(e instanceof SysError)) throw e;
      throw new KvmUnavailableError(`cannot open ${path} (${errnoName(e.errno)}): --accel auto or nested runs the guest in the nested KVM host instead`);
    }
    const kvm = new Kvm(fd);
    const version = kvm.apiVersion();
    if (version !== API_VERSION) {
      kvm.close();
      throw new Error(`${path}: KVM API version ${version}, tsvisor needs ${API_VERSION}`);
    }
    return kvm;
  }

  apiVersion(): number {
    return ioctlInt(this.fd, Ioctl.GET_API_VERSION, 'KVM_GET_API_VERSION');
  }

  checkExtension(cap: number): number {
    return ioctlInt(this.fd, Ioctl.CHECK_EXTENSION, 'KVM_CHECK_EXTENSION', cap);
  }

  vcpuMmapSize(): number {
    return ioctlInt(this.fd, Ioctl.GET_VCPU_MMAP_SIZE, 'KVM_GET_VCPU_MMAP_SIZE');
  }

  supportedCpuid(): CpuidEntry[] {
    const buf = cpuidBuffer(256);
    ioctlBuf(this.fd, Ioctl.GET_SUPPORTED_CPUID, 'KVM_GET_SUPPORTED_CPUID', buf);
    return decodeCpuid(buf);
  }

  /** The most vCPUs KVM recommends for one VM. */
  maxVcpus(): number {
    return this.checkExtension(Cap.NR_VCPUS) || 4;
  }

  createVm(): Vm {
    return new Vm(this, ioctlInt(this.fd, Ioctl.CREATE_VM, 'KVM_CREATE_VM', 0));
  }

  close(): void {
    closeFd(this.fd);
  }
}

const IRQ_ROUTING_IRQCHIP = 1;
const IRQ_ROUTING_MSI = 2;
export const IrqChip = { PIC_MASTER: 0, PIC_SLAVE: 1, IOAPIC: 2 } as const;

/** One entry of KVM's GSI routing table: a pin of an in-kernel interrupt controller, or an MSI message. */
export type GsiRoute =
  { gsi: number; kind: 'irqchip'; chip: number; pin: number } | { gsi: number; kind: 'msi'; addressLo: number; addressHi: number; data: number };

export class Vm {
  constructor(
    readonly kvm: Kvm,
    readonly fd: number,
  ) {}

  setUserMemoryRegion(slot: number, guestAddr: number, size: number, hostAddr: bigint, flags = 0): void {
    ioctlBuf(this.fd, Ioctl.SET_USER_MEMORY_REGION, 'KVM_SET_USER_MEMORY_REGION', encodeMemoryRegion(slot, flags, guestAddr, size, hostAddr));
  }

  setTssAddr(addr: number): void {
    ioctlInt(this.fd, Ioctl.SET_TSS_ADDR, 'KVM_SET_TSS_ADDR', addr);
  }

  setIdentityMapAddr(addr: number): void {
    const buf = Buffer.alloc(8);
    buf.writeBigUInt64LE(BigInt(addr));
    ioctlBuf(this.fd, Ioctl.SET_IDENTITY_MAP_ADDR, 'KVM_SET_IDENTITY_MAP_ADDR', buf);
  }

  createIrqchip(): void {
    ioctlInt(this.fd, Ioctl.CREATE_IRQCHIP, 'KVM_CREATE_IRQCHIP');
  }

  createPit2(): void {
    const buf = Buffer.alloc(64);
    buf.writeUInt32LE(PIT_SPEAKER_DUMMY, 0);
    ioctlBuf(this.fd, Ioctl.CREATE_PIT2, 'KVM_CREATE_PIT2', buf);
  }

  /** Sets the level of a GSI on the in-kernel PIC/IOAPIC. Callable from any thread. */
  irqLine(gsi: number, level: boolean): void {
    irqLine(this.fd, gsi, level);
  }

  /**
   * Lets KVM queue guest writes to [addr, addr+len) in the coalesced ring instead of
   * exiting for each; userspace applies them before handling the next exit.
   */
  registerCoalescedZone(addr: number, len: number, pio: boolean): void {
    ioctlBuf(this.fd, Ioctl.REGISTER_COALESCED_MMIO, 'KVM_REGISTER_COALESCED_MMIO', coalescedZone(addr, len, pio));
  }

  /** Undoes registerCoalescedZone for exactly that zone (a BAR that moved). */
  unregisterCoalescedZone(addr: number, len: number, pio: boolean): void {
    ioctlBuf(this.fd, Ioctl.UNREGISTER_COALESCED_MMIO, 'KVM_UNREGISTER_COALESCED_MMIO', coalescedZone(addr, len, pio));
  }

  /** Makes guest writes to addr (PIO or MMIO) signal eventFd inside KVM instead of exiting. */
  ioeventfd(eventFd: number, addr: number, len: number, opts: { pio: boolean; datamatch?: bigint; deassign?: boolean }): void {
    const buf = Buffer.alloc(64);
    buf.writeBigUInt64LE(opts.datamatch ?? 0n, 0);
    buf.writeBigUInt64LE(BigInt(addr), 8);
    buf.writeUInt32LE(len, 16);
    buf.writeInt32LE(eventFd, 20);
    let flags = opts.pio ? IOEVENTFD_FLAG_PIO : 0;
    if (opts.datamatch !== undefined) flags |= IOEVENTFD_FLAG_DATAMATCH;
    if (opts.deassign) flags |= IOEVENTFD_FLAG_DEASSIGN;
    buf.writeUInt32LE(flags, 24);
    ioctlBuf(this.fd, Ioctl.IOEVENTFD, 'KVM_IOEVENTFD', buf);
  }

  /** Makes a write to eventFd raise gsi inside KVM. */
  irqfd(eventFd: number, gsi: number, deassign = false): void {
    const buf = Buffer.alloc(32);
    buf.writeUInt32LE(eventFd, 0);
    buf.writeUInt32LE(gsi, 4);
    buf.writeUInt32LE(deassign ? IRQFD_FLAG_DEASSIGN : 0, 8);
    ioctlBuf(this.fd, Ioctl.IRQFD, 'KVM_IRQFD', buf);
  }

  /** Replaces the whole GSI routing table (KVM_SET_GSI_ROUTING). */
  setGsiRouting(routes: readonly GsiRoute[]): void {
    const ENTRY = 48;
    const buf = Buffer.alloc(8 + ENTRY * routes.length);
    buf.writeUInt32LE(routes.length, 0);
    routes.forEach((r, i) => {
      const at = 8 + i * ENTRY;
      buf.writeUInt32LE(r.gsi, at);
      if (r.kind === 'irqchip') {
        buf.writeUInt32LE(IRQ_ROUTING_IRQCHIP, at + 4);
        buf.writeUInt32LE(r.chip, at + 16);
        buf.writeUInt32LE(r.pin, at + 20);
      } else {
        buf.writeUInt32LE(IRQ_ROUTING_MSI, at + 4);
        buf.writeUInt32LE(r.addressLo >>> 0, at + 16);
        buf.writeUInt32LE(r.addressHi >>> 0, at + 20);
        buf.writeUInt32LE(r.data >>> 0, at + 24);
      }
    });
    ioctlBuf(this.fd, Ioctl.SET_GSI_ROUTING, 'KVM_SET_GSI_ROUTING', buf);
  }

  signalMsi(addressLo: number, addressHi: number, data: number): void {
    const buf = Buffer.alloc(32);
    buf.writeUInt32LE(addressLo >>> 0, 0);
    buf.writeUInt32LE(addressHi >>> 0, 4);
    buf.writeUInt32LE(data >>> 0, 8);
    ioctlBuf(this.fd, Ioctl.SIGNAL_MSI, 'KVM_SIGNAL_MSI', buf);
  }

  createVcpu(id: number): Vcpu {
    const fd = ioctlInt(this.fd, Ioctl.CREATE_VCPU, 'KVM_CREATE_VCPU', id);
    return new Vcpu(id, fd, mmapShared(fd, this.kvm.vcpuMmapSize()));
  }

  close(): void {
    closeFd(this.fd);
  }
}

/**
 * A vCPU as the main thread sees it: state setup before the first run, and the
 * shared kvm_run page (used to request an immediate exit). KVM_RUN itself is
 * issued by the vCPU's worker thread (see vmm/vcpu-worker.ts).
 */
export class Vcpu {
  constructor(
    readonly id: number,
    readonly fd: number,
    readonly run: Mapping,
  ) {}

  getRegs(): Regs {
    const buf = Buffer.alloc(144);
    ioctlBuf(this.fd, Ioctl.GET_REGS, 'KVM_GET_REGS', buf);
    return decodeRegs(buf);
  }

  setRegs(regs: Regs): void {
    ioctlBuf(this.fd, Ioctl.SET_REGS, 'KVM_SET_REGS', encodeRegs(regs));
  }

  getSregs(): Sregs {
    const buf = Buffer.alloc(SREGS_SIZE);
    ioctlBuf(this.fd, Ioctl.GET_SREGS, 'KVM_GET_SREGS', buf);
    return decodeSregs(buf);
  }

  setSregs(sregs: Sregs): void {
    ioctlBuf(this.fd, Ioctl.SET_SREGS, 'KVM_SET_SREGS', encodeSregs(sregs));
  }

  setDefaultFpu(): void {
    ioctlBuf(this.fd, Ioctl.SET_FPU, 'KVM_SET_FPU', encodeDefaultFpu());
  }

  setMsrs(entries: readonly MsrEntry[]): void {
    const n = ioctlBuf(this.fd, Ioctl.SET_MSRS, 'KVM_SET_MSRS', encodeMsrs(entries));
    if (n !== entries.length) {
      const bad = entries[n]!;
      throw new Error(`KVM_SET_MSRS: KVM refused MSR 0x${bad.index.toString(16)}`);
    }
  }

  getMsrs(indices: readonly number[]): MsrEntry[] {
    const buf = encodeMsrs(indices.map((index) => ({ index, data: 0n })));
    const n = ioctlBuf(this.fd, Ioctl.GET_MSRS, 'KVM_GET_MSRS', buf);
    return decodeMsrs(buf).slice(0, n);
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    ioctlBuf(this.fd, Ioctl.SET_CPUID2, 'KVM_SET_CPUID2', encodeCpuid(entries));
  }

  getLapic(): Buffer {
    const buf = Buffer.alloc(1024);
    ioctlBuf(this.fd, Ioctl.GET_LAPIC, 'KVM_GET_LAPIC', buf);
    return buf;
  }

  setLapic(state: Buffer): void {
    ioctlBuf(this.fd, Ioctl.SET_LAPIC, 'KVM_SET_LAPIC', state);
  }

  /** Asks the vCPU to return from KVM_RUN at its next entry (KVM_CAP_IMMEDIATE_EXIT). */
  requestImmediateExit(): void {
    new Uint8Array(this.run.buffer)[1] = 1;
  }

  close(): void {
    munmap(this.run);
    closeFd(this.fd);
  }
}

/** struct kvm_coalesced_mmio_zone: u64 addr, u32 size, u32 pio. */
function coalescedZone(addr: number, len: number, pio: boolean): Buffer {
  const buf = Buffer.alloc(16);
  buf.writeBigUInt64LE(BigInt(addr), 0);
  buf.writeUInt32LE(len, 8);
  buf.writeUInt32LE(pio ? 1 : 0, 12);
  return buf;
}

const irqLineArg = Buffer.alloc(8);

/** KVM_IRQ_LINE on a VM fd, for threads that hold the fd but not the Vm object (vCPU threads). */
export function irqLine(vmFd: number, gsi: number, level: boolean): void {
  irqLineArg.writeUInt32LE(gsi, 0);
  irqLineArg.writeUInt32LE(level ? 1 : 0, 4);
  ioctlBuf(vmFd, Ioctl.IRQ_LINE, 'KVM_IRQ_LINE', irqLineArg);
}
