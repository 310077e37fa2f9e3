// Hand-made guests of a few instructions, run on /dev/kvm through tsvisor's own
// KVM layer and vCPU thread: they exercise the exit path without a kernel.
import { Bus, type BusDevice } from '../../src/devices/bus.js';
import { Kvm } from '../../src/kvm/kvm.js';
import { GuestMemory, gpa } from '../../src/memory/guest-memory.js';
import { VcpuThread, type VcpuStop } from '../../src/vmm/vcpu-thread.js';

const CODE = 0x1000;

/** Real-mode code: `out 0x10, al` N times, then 'A' to 0x3f8, then hlt. */
export function outLoop(n: number): Uint8Array {
  if (n < 1 || n > 0xffff) throw new Error('loop count must fit in cx');
  // mov cx,n; mov dx,0x10; l: out dx,al; dec cx; jnz l; mov dx,0x3f8; mov al,'A'; out dx,al; hlt
  return Uint8Array.from([0xb9, n & 0xff, n >> 8, 0xba, 0x10, 0x00, 0xee, 0x49, 0x75, 0xfc, 0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xf4]);
}

export interface TinyRun {
  stop: VcpuStop;
  exits: Record<string, number>;
  nanoseconds: number;
}

/** Runs real-mode `code` at 0x1000 with the given port devices until it stops. */
export async function runRealMode(code: Uint8Array, devices: [BusDevice, number, number][]): Promise<TinyRun> {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const mem = GuestMemory.create([{ start: gpa(0), size: 0x10000 }]);
  vm.setUserMemoryRegion(0, 0, 0x10000, mem.regions[0]!.hostAddress);
  mem.write(CODE, code);
  const vcpu = vm.createVcpu(0);
  const sregs = vcpu.getSregs();
  sregs.cs.base = 0n;
  sregs.cs.selector = 0;
  vcpu.setSregs(sregs);
  const regs = vcpu.getRegs();
  regs.rip = BigInt(CODE);
  regs.rflags = 2n;
  vcpu.setRegs(regs);
  const pio = new Bus('pio');
  for (const [dev, base, len] of devices) pio.insert(dev, base, len);
  const errors: unknown[] = [];
  const thread = new VcpuThread(vcpu, { pio, mmio: new Bus('mmio') }, (e) => errors.push(e));
  const t0 = process.hrtime.bigint();
  const stop = await thread.run(kvm.vcpuMmapSize());
  const nanoseconds = Number(process.hrtime.bigint() - t0);
  vcpu.close();
  vm.close();
  mem.close();
  kvm.close();
  if (errors.length) throw errors[0];
  return { stop, exits: thread.exitCounts(), nanoseconds };
}
