// A PC's buses without KVM: the legacy devices on the port bus, PCI bus 0 behind
// the configuration ports, BARs on the MMIO bus, and the devices the guest can
// find there, over a back-end that can refuse packets. Shared by the
// register-traffic targets. Also the main thread's fd watching without an event
// loop, for virtio-pci transports and the main-thread data planes behind them.
import { Bus } from '../../src/devices/bus.js';
import { E1000 } from '../../src/devices/net/e1000.js';
import type { CoalescedZoneRegistrar } from '../../src/devices/pci/device.js';
import type { MsiSink } from '../../src/devices/pci/msix.js';
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { VirtioConsole } from '../../src/virtio/console.js';
import type { MainThreadDevice } from '../../src/virtio/in-process.js';
import { InProcessNet } from '../../test/support/in-process-net.js';
import { VirtioRng } from '../../src/virtio/rng.js';
import { installPcDevices, type PcDevices } from '../../src/vmm/pc-devices.js';
import { FakeBackend, NO_POLLER } from '../../test/support/fake-net-backend.js';
import { withVnetHdr } from '../../src/net/backend.js';
import type { ByteReader } from './bytes.js';
import { frame } from './frames.js';
import { check } from './target.js';

export const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);

export interface PcRig extends PcDevices {
  pio: Bus;
  mmio: Bus;
  /** What the devices did to the world: resets, power-offs, panics, interrupts, MSIs. */
  events: { control: number; irqs: number; msis: number; output: number };
  msi: MsiSink;
}

export function pcRig(): PcRig {
  const pio = new Bus('pio');
  const mmio = new Bus('mmio');
  const events = { control: 0, irqs: 0, msis: 0, output: 0 };
  const devices = installPcDevices(pio, {
    mmio,
    setGsi: () => events.irqs++,
    com1Irq: { set: () => events.irqs++ },
    serialOutput: (b) => (events.output += b.length),
    onReset: () => events.control++,
    onPowerOff: () => events.control++,
    onPanic: () => events.control++,
  });
  return { ...devices, pio, mmio, events, msi: { route: () => {}, fire: () => events.msis++ } };
}

/** A port or MMIO access of `width` bytes: reads go through guard bytes, so a device filling too much is caught. */
export function busAccess(bus: Bus, addr: number, width: number, r: ByteReader): void {
  if (r.bool()) return void bus.write(addr, r.bytes(width));
  const buf = new Uint8Array(width + 2).fill(0xee);
  bus.read(addr, buf.subarray(1, 1 + width));
  check(buf[0] === 0xee && buf[width + 1] === 0xee, `${bus.name} read at 0x${addr.toString(16)} (${width} bytes) wrote outside its buffer`);
}

/**
 * A recording back-end that throws on some sends, as user-mode networking once
 * did for a UDP datagram to port 0: a device must drop such a packet and go on
 * (return the chain, move the ring), not let the error out.
 */
export class RefusingBackend extends FakeBackend {
  /** Every how-many-th packet is refused; 0: none. */
  private every = 0;
  private sends = 0;

  /** Picks from the input whether (mostly not) and how often sends throw. */
  refuse(r: ByteReader): void {
    this.every = r.u8() < 192 ? 0 : 1 + (r.u8() % 3);
  }

  override send(queue: number, packet: Uint8Array): void {
    if (this.every && ++this.sends % this.every === 0) throw new Error('the back-end refused the packet');
    super.send(queue, packet);
  }
}

/** The virtio devices that need no image, and their host-side entry points; onMainThread() puts one behind a transport. */
export function virtioDevice(kind: number, backend = new RefusingBackend(1 + ((kind >> 2) & 1))): { device: MainThreadDevice; host: (r: ByteReader) => void } {
  switch (kind % 3) {
    case 0:
      return { device: new VirtioRng(), host: () => {} };
    case 1: {
      const device = new VirtioConsole(() => {});
      return { device, host: (r) => device.input(r.rest(4096)) };
    }
    default: {
      const device = new InProcessNet(backend, { mac: MAC, pairs: backend.queues });
      return { device, host: (r) => void device.receive(r.u8() % backend.queues, withVnetHdr(frame(r))) };
    }
  }
}

export function e1000(memory: GuestMemory, zones?: CoalescedZoneRegistrar): { nic: E1000; backend: RefusingBackend } {
  const backend = new RefusingBackend();
  const nic = new E1000(memory, backend, MAC, 'e1000', zones);
  backend.attach(nic, NO_POLLER);
  return { nic, backend };
}
