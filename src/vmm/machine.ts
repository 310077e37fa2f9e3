// A whole x86 VM: KVM objects, guest RAM, the loaded kernel, the legacy devices on
// the port bus, and one thread per vCPU. Which thread owns what is written down
// once, in README.md ("Threads: who owns what").
import { writeAcpiTables } from '../arch/x86/acpi/tables.js';
import { bootMsrs, bootRegs, configureLint, longModeSregs, writeBootTables } from '../arch/x86/cpu-state.js';
import { vcpuCpuid } from '../arch/x86/cpuid.js';
import { e820Map } from '../arch/x86/e820.js';
import { ramRegions, TSS_ADDR } from '../arch/x86/layout.js';
import { buildZeroPage, checkKernelImage, loadInitrd, loadKernel, writeCmdline, writeZeroPage } from '../arch/x86/linux-loader.js';
import { Bus, type DeviceCounters } from '../devices/bus.js';
import { E1000 } from '../devices/net/e1000.js';
import type { Serial } from '../devices/legacy/serial.js';
import { PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_SIZE, type PciConfigIo } from '../devices/pci/config-io.js';
import type { PciBus } from '../devices/pci/pci-bus.js';
import { Cap, ExitReason, SystemEvent } from '../kvm/ioctls.js';
import { Kvm, type Vm } from '../kvm/kvm.js';
import { GuestMemory } from '../memory/guest-memory.js';
import type { NetBackend } from '../net/backend.js';
import { VirtioNet } from '../virtio/net.js';
import { VirtioConsole } from '../virtio/console.js';
import { VirtioId, type VirtioDevice } from '../virtio/device.js';
import { TapBackend } from '../net/tap.js';
import { VhostNet } from '../vhost/vhost-net.js';
import { VhostUserDevice, type VhostUserSpec } from '../vhost/vhost-user-device.js';
import { onMainThread, type MainThreadDevice } from '../virtio/in-process.js';
import { VirtioPciDevice, type IoEventRegistrar } from '../virtio/pci-transport.js';
import { EventLoop } from './event-loop.js';
import { GsiRouting, IrqfdMsiSink, SignalMsiSink } from './msi.js';
import { PanicWatcher } from './panic-watcher.js';
import { COM1_IRQ, COM1_PORT, COM1_PORTS, installPcDevices } from './pc-devices.js';
import { VcpuThread, type LocalDevices, type VcpuStop } from './vcpu-thread.js';
import type { CoalescedRingShare } from './vcpu-worker.js';

/** A network card: the device model the guest's driver sees, and the back-end its packets use. */
export interface NicConfig {
  model: 'virtio-net' | 'e1000';
  name: string;
  backend: NetBackend;
  mac: Uint8Array;
  /** virtio-net queue pairs. */
  queues?: number;
  /** virtio-net: the largest control command read from the guest (default MAX_CTRL_COMMAND). */
  ctrlMax?: number;
  /** virtio-net over a tap: the data path in the host kernel, through this vhost-net device (/dev/vhost-net). */
  vhost?: string;
}

export interface MachineConfig {
  kernel: Buffer;
  initrd?: Buffer;
  cmdline: string;
  memory: number;
  cpus: number;
  /** Where the guest's UART output goes. */
  serialOutput: (bytes: Uint8Array) => void;
  /** Network cards, each on its own PCI slot, before the other devices (so the first is eth0). */
  nics?: NicConfig[];
  /** virtio devices, each on its own PCI slot, in this order; a vhost-user one as plain data (the machine connects it). */
  virtio?: (VirtioDevice | MainThreadDevice | VhostUserSpec)[];
  /** Lines about devices for the user (a vhost-user back-end went away, came back). */
  log?: (line: string) => void;
  /** Adds a virtio-console (the guest's hvc0) whose output goes here; host input then goes to it. */
  virtioConsoleOutput?: (bytes: Uint8Array) => void;
  /** Queue kicks through ioeventfd (no exit); off: every kick is an MMIO exit. Default on. */
  ioeventfd?: boolean;
  /** MSI-X vectors through irqfd; off: KVM_SIGNAL_MSI per interrupt. Default on. */
  irqfd?: boolean;
  kvmPath?: string;
}

/** `stopped`: the host asked tsvisor to stop (a signal), not the guest. */
export type MachineExitKind = 'poweroff' | 'reboot' | 'panic' | 'triple-fault' | 'internal-error' | 'stopped';

export interface MachineExit {
  kind: MachineExitKind;
  detail: string;
}

/** A network card among the virtio devices (its counters go with the cards'). */
const isCard = (v: VirtioPciDevice): boolean => v.device.type === VirtioId.NET;

export class Machine {
  readonly pio = new Bus('pio');
  readonly mmio = new Bus('mmio');
  readonly serial: Serial;
  readonly pci: PciBus;
  private readonly pciConfig: PciConfigIo;
  readonly virtio: VirtioPciDevice[] = [];
  readonly nics: { config: NicConfig; device: VirtioPciDevice | E1000 }[] = [];
  private readonly virtioConsole: VirtioConsole | undefined;
  private readonly events = new EventLoop((e) => this.deviceError(e));
  private readonly msiSinks: (IrqfdMsiSink | SignalMsiSink)[] = [];
  private readonly threads: VcpuThread[] = [];
  /** KVM's coalesced ring is in use (the vCPU threads and the main thread drain it). */
  private coalescing = false;
  private exit: MachineExit | undefined;
  private finish: (() => void) | undefined;
  private readonly panicWatcher = new PanicWatcher(() => this.end('panic', 'the kernel reported a panic on its console'));
  readonly deviceErrors: string[] = [];
  /** Errors no device contained, caught at the process level while the VM ran. */
  private strayErrors = 0;

  private constructor(
    private readonly kvm: Kvm,
    readonly vm: Vm,
    readonly memory: GuestMemory,
    private readonly config: MachineConfig,
  ) {
    ({
      serial: this.serial,
      pci: this.pci,
      pciConfig: this.pciConfig,
    } = installPcDevices(this.pio, {
      mmio: this.mmio,
      setGsi: (gsi, level) => vm.irqLine(gsi, level),
      com1Irq: { set: (level) => vm.irqLine(COM1_IRQ, level) },
      serialOutput: (bytes) => {
        this.panicWatcher.feed(bytes);
        config.serialOutput(bytes);
      },
      onReset: () => this.reset('reset through the i8042'),
      onPowerOff: () => this.end('poweroff', 'ACPI S5'),
      onPanic: () => this.end('panic', 'pvpanic'),
    }));
    const consoleOutput = config.virtioConsoleOutput;
    if (consoleOutput) {
      this.virtioConsole = new VirtioConsole((bytes) => {
        this.panicWatcher.feed(bytes);
        consoleOutput(bytes);
      });
    }
  }

  /** Host input for the guest's console: hvc0 when there is a virtio-console, else the UART. */
  consoleInput(bytes: Uint8Array): void {
    if (this.virtioConsole) this.virtioConsole.input(bytes);
    else this.serial.enqueueInput(bytes);
  }

  static create(config: MachineConfig): Machine {
    // Bad input is reported as such, also where there is no KVM to run it on.
    checkKernelImage(config.kernel);
    const kvm = Kvm.open(config.kvmPath);
    const vm = kvm.createVm();
    const memory = GuestMemory.create(ramRegions(config.memory));
    memory.regions.forEach((r, slot) => vm.setUserMemoryRegion(slot, r.start, r.size, r.hostAddress));
    vm.setTssAddr(TSS_ADDR);
    vm.createIrqchip();
    vm.createPit2();
    const machine = new Machine(kvm, vm, memory, config);
    machine.load();
    machine.plugDevices();
    return machine;
  }

  /** The network cards, then each virtio device behind a virtio-pci transport, with its kick and interrupt paths. */
  private plugDevices(): void {
    const { vm, config } = this;
    const routing = config.irqfd !== false ? new GsiRouting(vm) : undefined;
    const ioevents: IoEventRegistrar | undefined = config.ioeventfd !== false ? (addr, len, fd) => this.ioevent(addr, len, fd) : undefined;
    const watch = (fd: number, onReadable: () => void) => {
      const token = this.events.add(fd, onReadable);
      return () => this.events.remove(token);
    };
    const plugVirtio = (given: VirtioDevice | MainThreadDevice): VirtioPciDevice => {
      const device = 'queueNotify' in given ? onMainThread(given, { memory: this.memory, watch }) : given;
      const vectors = device.queueSizes.length + 1;
      const msi = routing ? new IrqfdMsiSink(vm, routing, vectors) : new SignalMsiSink(vm);
      this.msiSinks.push(msi);
      const transport = new VirtioPciDevice(device, { memory: this.memory, msi, watch, ioevents });
      this.pci.add(transport);
      this.virtio.push(transport);
      return transport;
    };
    for (const nic of config.nics ?? []) {
      if (nic.model === 'e1000') {
        const e1000 = new E1000(this.memory, nic.backend, nic.mac, nic.name, this.coalescing ? (addr, len) => this.coalesceMmio(addr, len) : undefined);
        this.pci.add(e1000);
        nic.backend.attach(e1000, this.events);
        this.nics.push({ config: nic, device: e1000 });
      } else {
        const options = { mac: nic.mac, pairs: nic.queues ?? 1, maxCtrlCommand: nic.ctrlMax };
        const net =
          nic.vhost && nic.backend instanceof TapBackend
            ? new VhostNet(nic.backend, { ...options, device: nic.vhost }, nic.name, this.memory)
            : new VirtioNet(nic.backend, options, nic.name, this.events);
        this.nics.push({ config: nic, device: plugVirtio(net) });
      }
    }
    const counts = { 'vhost-user-blk': 0, 'vhost-user-net': 0 };
    for (const given of [...(config.virtio ?? []), ...(this.virtioConsole ? [this.virtioConsole] : [])]) {
      const device =
        'kind' in given
          ? new VhostUserDevice(given, `${given.kind}${counts[given.kind]++}`, { memory: this.memory, watch, log: config.log ?? (() => {}) })
          : given;
      plugVirtio(device);
    }
  }

  private coalesceMmio(addr: number, len: number): () => void {
    this.vm.registerCoalescedZone(addr, len, false);
    return () => this.vm.unregisterCoalescedZone(addr, len, false);
  }

  /** KVM signals `fd` on a guest write to [addr, addr+len) instead of exiting; returns the undo. */
  private ioevent(addr: number, len: number, fd: number): () => void {
    this.vm.ioeventfd(fd, addr, len, { pio: false });
    return () => this.vm.ioeventfd(fd, addr, len, { pio: false, deassign: true });
  }

  private load(): void {
    const { config, memory } = this;
    const kernel = loadKernel(memory, config.kernel);
    writeCmdline(memory, kernel, config.cmdline);
    const initrd = config.initrd ? loadInitrd(memory, kernel, config.initrd) : undefined;
    const rsdpAddr = writeAcpiTables(memory, config.cpus);
    const e820 = e820Map(ramRegions(config.memory));
    writeZeroPage(memory, buildZeroPage({ kernel, cmdline: config.cmdline, initrd, e820, rsdpAddr }));
    writeBootTables(memory);

    const supported = this.kvm.supportedCpuid();
    const ring = this.coalescePciAddressWrites();
    this.coalescing = ring !== undefined;
    const local: LocalDevices = {
      vmFd: this.vm.fd,
      devices: [
        { kind: 'serial', name: this.serial.name, port: COM1_PORT, length: COM1_PORTS, state: this.serial.shared, gsi: COM1_IRQ },
        { kind: 'pci-config', name: this.pciConfig.name, port: PCI_CONFIG_IO_PORT, length: PCI_CONFIG_IO_SIZE, state: this.pciConfig.shared },
      ],
      ring,
    };
    for (let id = 0; id < config.cpus; id++) {
      const vcpu = this.vm.createVcpu(id);
      vcpu.setCpuid(vcpuCpuid(supported, id, config.cpus));
      vcpu.setMsrs(bootMsrs());
      vcpu.setDefaultFpu();
      vcpu.setLapic(configureLint(vcpu.getLapic()));
      if (id === 0) {
        vcpu.setSregs(longModeSregs(vcpu.getSregs()));
        vcpu.setRegs(bootRegs(kernel.entry));
      }
      this.threads.push(new VcpuThread(vcpu, { pio: this.pio, mmio: this.mmio }, (e) => this.deviceError(e), local));
    }
  }

  /**
   * PCI config accesses come in pairs: a 0xCF8 address write, then a data access.
   * Queuing the address writes in KVM's coalesced ring halves their exits; the vCPU
   * threads apply them before the next exit's access. The e1000 adds its zones to the
   * same ring when its BAR is placed.
   */
  private coalescePciAddressWrites(): CoalescedRingShare | undefined {
    const ringPage = this.kvm.checkExtension(Cap.COALESCED_MMIO);
    if (ringPage <= 0 || this.kvm.checkExtension(Cap.COALESCED_PIO) <= 0 || (ringPage + 1) * 4096 > this.kvm.vcpuMmapSize()) return undefined;
    this.vm.registerCoalescedZone(PCI_CONFIG_IO_PORT, 4, true);
    return { offset: ringPage * 4096, lock: new SharedArrayBuffer(4) };
  }

  private deviceError(e: unknown): void {
    if (this.deviceErrors.length < 100) this.deviceErrors.push(e instanceof Error ? (e.stack ?? e.message) : String(e));
  }

  /** A CPU reset ends the VM; after a panic banner it is the panic's reboot. */
  private reset(detail: string): void {
    if (this.panicWatcher.panicking) this.end('panic', `${detail} after the kernel panicked`);
    else this.end('reboot', detail);
  }

  /** Records why the VM ends (the first reason wins) and stops every vCPU. */
  end(kind: MachineExitKind, detail: string): void {
    if (this.exit) return;
    this.exit = { kind, detail };
    for (const t of this.threads) t.requestStop();
    this.finish?.();
  }

  /** Runs until the guest powers off, resets, panics or fails; resolves with why. */
  async run(): Promise<MachineExit> {
    // The last line of defence: an error that escaped every device guard (a socket
    // or timer callback, a promise) is recorded and counted, and the VM goes on.
    const stray = (e: unknown) => {
      this.strayErrors++;
      this.deviceError(e);
    };
    process.on('uncaughtException', stray);
    process.on('unhandledRejection', stray);
    try {
      return await this.runVcpus();
    } finally {
      process.off('uncaughtException', stray);
      process.off('unhandledRejection', stray);
    }
  }

  private async runVcpus(): Promise<MachineExit> {
    const allStopped = new Promise<void>((resolve) => {
      this.finish = resolve;
      if (this.exit) resolve();
    });
    const mmapSize = this.kvm.vcpuMmapSize();
    // Every function is plugged by now: the vCPU threads answer probes of the others.
    this.pciConfig.publishPresent(this.pci.devices().map(([devfn]) => devfn));
    // The vCPU threads transmit on the UART themselves; the pump passes the bytes on.
    const serialOutput = this.serial.pumpOutput();
    const runs = this.threads.map((t) =>
      t.run(mmapSize).then((stop) => {
        if (!this.exit) this.end(...classifyStop(stop));
      }),
    );
    await allStopped;
    await Promise.all(runs);
    this.serial.close();
    await serialOutput;
    return this.exit!;
  }

  stats(): MachineStats {
    return {
      vcpus: this.threads.map((t) => ({ id: t.vcpu.id, exits: t.exitCounts(), deviceErrors: t.deviceErrors })),
      pio: Object.fromEntries(mergeCounters(this.pio.counters(), ...this.threads.map((t) => t.localAccesses()))),
      mmio: Object.fromEntries(this.mmio.counters()),
      unclaimed: { pio: { ...this.pio.unclaimed }, mmio: { ...this.mmio.unclaimed } },
      unclaimedTop: { pio: topAddresses(this.pio), mmio: topAddresses(this.mmio) },
      serial: { ...this.serial.counters },
      coalescedWrites: this.threads.reduce((n, t) => n + t.coalescedWrites, 0),
      virtio: Object.fromEntries(this.virtio.filter((v) => !isCard(v)).map((v) => [v.name, v.stats()])),
      nics: [
        ...this.nics.map((n) => this.nicStats(n.config, n.device, n.config.backend.description)),
        // A card served over vhost-user has no tsvisor back-end: it is a plain virtio device here.
        ...this.virtio
          .filter((v) => v.device instanceof VhostUserDevice && isCard(v))
          .map((v) => this.nicStats({ name: v.name, model: 'virtio-net' }, v, `vhost-user ${(v.device as VhostUserDevice).path}`)),
      ],
      deviceFailures: Object.fromEntries(
        [
          ...this.virtio.map((v) => [v.name, v.lastFailure]),
          ...this.nics.map((n) => [n.config.name, n.device instanceof E1000 ? n.device.lastError : undefined]),
        ].filter((entry): entry is [string, string] => entry[1] !== undefined),
      ),
      eventLoopWakeups: this.events.wakeups,
      strayErrors: this.strayErrors,
    };
  }

  /**
   * One network card's accounting, the same fields for every model: the exits its
   * registers cost, kicks that arrived without an exit, interrupts, traffic, drops.
   */
  private nicStats(nic: Pick<NicConfig, 'name' | 'model'>, device: VirtioPciDevice | E1000, backend: string): NicStats {
    const none: DeviceCounters = { reads: 0, writes: 0, queued: 0 };
    const mmio = this.mmio.counters().get(nic.name) ?? none;
    const pio = this.pio.counters().get(nic.name) ?? none;
    const own = device.stats();
    const transport = device instanceof VirtioPciDevice ? device.counters : undefined;
    const pick = (prefix: string) => Object.fromEntries(Object.entries(own).filter(([k]) => k.startsWith(prefix)));
    return {
      name: nic.name,
      model: nic.model,
      backend,
      exits: { mmioReads: mmio.reads, mmioWrites: mmio.writes, pioReads: pio.reads, pioWrites: pio.writes },
      queuedWrites: mmio.queued + pio.queued,
      kicks: transport ? (own.kicks ?? 0) : 0,
      interrupts: transport ? (own.calls ?? 0) : (own.interrupts ?? 0),
      txPackets: own.txPackets ?? 0,
      txBytes: own.txBytes ?? 0,
      rxPackets: own.rxPackets ?? 0,
      rxBytes: own.rxBytes ?? 0,
      drops: { ...pick('drop.'), ...pick('backend.drop.') },
      detail: own,
    };
  }

  /** Lets devices finish in-flight I/O and close their back-ends, then frees the VM. */
  async close(): Promise<void> {
    this.events.close();
    await Promise.allSettled([
      ...this.virtio.map((v) => v.close()),
      ...this.nics.filter((n) => n.device instanceof E1000).map((n) => (n.device as E1000).close()),
    ]);
    for (const s of this.msiSinks) s.close();
    for (const t of this.threads) t.vcpu.close();
    this.vm.close();
    this.memory.close();
    this.kvm.close();
  }
}

export interface MachineStats {
  vcpus: { id: number; exits: Record<string, number>; deviceErrors: number }[];
  pio: Record<string, DeviceCounters>;
  mmio: Record<string, DeviceCounters>;
  unclaimed: { pio: { reads: number; writes: number }; mmio: { reads: number; writes: number } };
  /** The most-hit unclaimed addresses and their access counts. */
  unclaimedTop: { pio: [number, number][]; mmio: [number, number][] };
  serial: Record<string, number>;
  /** Writes KVM queued in the coalesced ring instead of exiting. */
  coalescedWrites: number;
  /** Per virtio device other than network cards: transport counters (kicks by exit and by eventfd, interrupts) and the device's own. */
  virtio: Record<string, Record<string, number>>;
  nics: NicStats[];
  /** Why a device last broke (a virtio device set DEVICE_NEEDS_RESET, an e1000 took its link down), by device. */
  deviceFailures: Record<string, string>;
  eventLoopWakeups: number;
  strayErrors: number;
}

export interface NicStats {
  name: string;
  model: NicConfig['model'];
  backend: string;
  /** Exits the card's registers caused, by bus and direction. */
  exits: { mmioReads: number; mmioWrites: number; pioReads: number; pioWrites: number };
  /** Register writes KVM queued in its coalesced ring instead of exiting. */
  queuedWrites: number;
  /** Queue kicks the data plane woke for, whether they came by exit or by ioeventfd. */
  kicks: number;
  interrupts: number;
  txPackets: number;
  txBytes: number;
  rxPackets: number;
  rxBytes: number;
  /** Packets dropped, by where and why. */
  drops: Record<string, number>;
  /** Everything the device and its back-end count. */
  detail: Record<string, number>;
}

/** Access counts by device, summed over the main thread's bus and the vCPU threads' own devices. */
function mergeCounters(...sources: Map<string, DeviceCounters>[]): Map<string, DeviceCounters> {
  const out = new Map<string, DeviceCounters>();
  for (const source of sources) {
    for (const [name, c] of source) {
      const sum = out.get(name) ?? { reads: 0, writes: 0, queued: 0 };
      out.set(name, { reads: sum.reads + c.reads, writes: sum.writes + c.writes, queued: sum.queued + c.queued });
    }
  }
  return out;
}

function topAddresses(bus: Bus, n = 8): [number, number][] {
  return [...bus.unclaimedByAddress].sort((a, b) => b[1] - a[1]).slice(0, n);
}

/** What a vCPU's own stop means for the VM. */
export function classifyStop(stop: VcpuStop): [MachineExitKind, string] {
  const who = `vCPU ${stop.vcpu}`;
  switch (stop.reason) {
    case ExitReason.SHUTDOWN:
      return ['triple-fault', `${who}: triple fault (KVM_EXIT_SHUTDOWN)`];
    case ExitReason.SYSTEM_EVENT:
      if (stop.detail === SystemEvent.SHUTDOWN) return ['poweroff', `${who}: system event shutdown`];
      if (stop.detail === SystemEvent.RESET) return ['reboot', `${who}: system event reset`];
      return ['panic', `${who}: system event crash`];
    case ExitReason.HLT:
      return ['poweroff', `${who}: halted with no interrupt controller`];
    case ExitReason.FAIL_ENTRY:
      return ['internal-error', `${who}: KVM could not enter the guest (hardware reason 0x${(stop.detail >>> 0).toString(16)})`];
    case ExitReason.INTERNAL_ERROR:
      return ['internal-error', `${who}: KVM internal error (suberror ${stop.detail})`];
    case -1:
      return ['internal-error', `${who}: KVM_RUN failed (errno ${stop.detail})`];
    default:
      return ['internal-error', `${who}: unexpected exit ${stop.reason}`];
  }
}
