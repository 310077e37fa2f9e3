// How MSI-X vectors reach KVM. With irqfd, each vector gets a GSI routed to its MSI
// message and an eventfd bound to that GSI: raising the vector is one eventfd
// write, which any thread (or a vhost back-end) could do. Without irqfd, each raise
// is a KVM_SIGNAL_MSI ioctl.
import { IrqChip, type GsiRoute, type Vm } from '../kvm/kvm.js';
import { closeFd, eventfd, eventfdSignal } from '../host/libc.js';
import type { MsiMessage, MsiSink } from '../devices/pci/msix.js';

const IOAPIC_PINS = 24;
const PIC_PINS = 16;

/**
 * KVM's GSI routing table. Setting it replaces KVM's default, so it always holds
 * the PIC and IOAPIC pins (what KVM_CREATE_IRQCHIP set up) plus the MSI routes.
 */
export class GsiRouting {
  private readonly msi = new Map<number, MsiMessage>();
  private nextGsi = IOAPIC_PINS;
  /** The routes KVM_CREATE_IRQCHIP installs: GSIs 0-15 to both PICs and the IOAPIC, 16-23 to the IOAPIC. */
  private readonly chipRoutes: GsiRoute[] = [];
  updates = 0;

  constructor(private readonly vm: Vm) {
    for (let pin = 0; pin < PIC_PINS; pin++)
      this.chipRoutes.push({ gsi: pin, kind: 'irqchip', chip: pin < 8 ? IrqChip.PIC_MASTER : IrqChip.PIC_SLAVE, pin: pin % 8 });
    for (let pin = 0; pin < IOAPIC_PINS; pin++) this.chipRoutes.push({ gsi: pin, kind: 'irqchip', chip: IrqChip.IOAPIC, pin });
  }

  allocate(): number {
    return this.nextGsi++;
  }

  setMsi(gsi: number, message: MsiMessage): void {
    this.msi.set(gsi, message);
    const routes: GsiRoute[] = [...this.chipRoutes];
    for (const [g, m] of this.msi) routes.push({ gsi: g, kind: 'msi', ...m });
    this.vm.setGsiRouting(routes);
    this.updates++;
  }
}

/** Vectors delivered through irqfd: one GSI and one eventfd per vector, bound once. */
export class IrqfdMsiSink implements MsiSink {
  private readonly gsis: number[] = [];
  private readonly fds: number[] = [];

  constructor(
    private readonly vm: Vm,
    private readonly routing: GsiRouting,
    vectors: number,
  ) {
    for (let v = 0; v < vectors; v++) {
      const gsi = routing.allocate();
      const fd = eventfd();
      // Route first: KVM refuses an irqfd for a GSI it has no route for.
      routing.setMsi(gsi, { addressLo: 0xfee00000, addressHi: 0, data: 0 });
      vm.irqfd(fd, gsi);
      this.gsis.push(gsi);
      this.fds.push(fd);
    }
  }

  route(vector: number, message: MsiMessage): void {
    this.routing.setMsi(this.gsis[vector]!, message);
  }

  fire(vector: number): void {
    eventfdSignal(this.fds[vector]!);
  }

  bindIrqfd(vector: number, fd: number): void {
    this.vm.irqfd(fd, this.gsis[vector]!);
  }

  unbindIrqfd(vector: number, fd: number): void {
    this.vm.irqfd(fd, this.gsis[vector]!, true);
  }

  close(): void {
    this.fds.forEach((fd, v) => {
      this.vm.irqfd(fd, this.gsis[v]!, true);
      closeFd(fd);
    });
  }
}

/** Vectors delivered with KVM_SIGNAL_MSI, one ioctl per raise. */
export class SignalMsiSink implements MsiSink {
  constructor(private readonly vm: Vm) {}

  route(): void {}

  fire(_vector: number, m: MsiMessage): void {
    this.vm.signalMsi(m.addressLo, m.addressHi, m.data);
  }

  close(): void {}
}
