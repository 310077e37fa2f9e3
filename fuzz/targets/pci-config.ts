// PCI configuration space of every function on bus 0 (host bridge, virtio-rng,
// virtio-net, e1000), through the 0xCF8/0xCFC ports and straight through the
// bus, in every width and alignment; BARs sized with all-ones, moved anywhere
// (over each other, to zero, past 4 GiB), decoding switched on and off, and
// accesses to wherever they now decode. Oracles: a sized BAR reads back its
// size mask and type bits; reads fill exactly the bytes asked for; the e1000's
// coalesced zones (kept by a model of KVM's list) are registered once each, undone
// once each, and are at every moment all of its ranges at one base or none. The virtio
// functions are plugged as the machine plugs them (onMainThread, the fds watched
// by hand and pumped after each access, memfd-backed RAM), and closed at the end
// of the case, their eventfds with them.
import { COALESCED_RANGES } from '../../src/devices/net/e1000.js';
import type { PciDevice } from '../../src/devices/pci/device.js';
import { onMainThread } from '../../src/virtio/in-process.js';
import { VirtioPciDevice } from '../../src/virtio/pci-transport.js';
import { dword, le, operations, opsArbitrary, type ByteReader } from '../lib/bytes.js';
import { sharedGuestMemory } from '../lib/guest.js';
import { ManualWatch } from '../../test/support/fd-watch.js';
import { busAccess, e1000, pcRig, virtioDevice, type PcRig } from '../lib/pc.js';
import { check, WIDTHS, type FuzzTarget } from '../lib/target.js';

const Op = { ADDRESS: 0, DATA: 1, SIZE_BAR: 2, DIRECT: 3, BAR_ACCESS: 4, COMMAND: 5 } as const;
const KINDS = 6;
const BAR0 = 0x10;

export const pciConfig: FuzzTarget = {
  name: 'pci-config',
  description: 'config space reads/writes of all widths over the PCI bus with virtio and e1000 functions, BAR sizing and moving',
  arbitrary: opsArbitrary(KINDS, { weights: [2, 3, 2, 3, 2, 1], maxOps: 60 }),
  async run(_ctx, data) {
    const rig = pcRig();
    const memory = sharedGuestMemory();
    const fds = new ManualWatch();
    const transports = [0, 2].map(
      (kind) => new VirtioPciDevice(onMainThread(virtioDevice(kind).device, { memory, watch: fds.watch }), { memory, msi: rig.msi, watch: fds.watch }),
    );
    try {
      for (const t of transports) rig.pci.add(t);
      const zones = new ZoneModel();
      rig.pci.add(e1000(memory, zones.registrar).nic);
      accesses(rig, fds, data, () => zones.check());
    } finally {
      for (const t of transports) await t.close();
      memory.close();
    }
    check(fds.watched === 0, `${fds.watched} fds still watched after the devices closed`);
  },
};

/** KVM's coalesced zones as the e1000 registers them; what the device catches is remembered for check(). */
class ZoneModel {
  private readonly zones = new Map<string, number>();
  private readonly faults: string[] = [];
  readonly registrar = (addr: number, len: number): (() => void) => {
    const key = `0x${addr.toString(16)}+0x${len.toString(16)}`;
    if (this.zones.has(key)) this.faults.push(`zone ${key} registered twice`);
    this.zones.set(key, addr);
    let undone = false;
    return () => {
      if (undone || !this.zones.delete(key)) this.faults.push(`zone ${key} undone twice`);
      undone = true;
    };
  };

  check(): void {
    check(this.faults.length === 0, this.faults.join('; '));
    if (this.zones.size === 0) return;
    const base = Math.min(...this.zones.values()) - COALESCED_RANGES[0]!.offset;
    const expected = COALESCED_RANGES.map((r) => `0x${(base + r.offset).toString(16)}+0x${r.length.toString(16)}`);
    check(
      this.zones.size === expected.length && expected.every((k) => this.zones.has(k)),
      `the e1000's zones are not its ranges at one base: ${[...this.zones.keys()].join(' ')}`,
    );
  }
}

/** The case's accesses, each followed by what the event loop would do for the fds they signalled, then `after`. */
function accesses(rig: PcRig, fds: ManualWatch, data: Uint8Array, after: () => void): void {
  const functions = rig.pci.devices();
  const fn = (r: ByteReader): [number, PciDevice] => functions[r.u8() % functions.length]!;
  const cfgRead = (devfn: number, offset: number, width: number): Uint8Array => {
    const buf = new Uint8Array(width + 2).fill(0xee);
    rig.pci.configRead(devfn, offset, buf.subarray(1, 1 + width));
    check(buf[0] === 0xee && buf[width + 1] === 0xee, `config read at ${devfn}:0x${offset.toString(16)} (${width} bytes) wrote outside its buffer`);
    return buf.subarray(1, 1 + width);
  };
  for (const { kind, args: r } of operations(data)) {
    switch (kind % KINDS) {
      case Op.ADDRESS: {
        const value = r.u8() < 220 ? 0x80000000 | ((r.bool() ? fn(r)[0] : r.u8()) << 8) | (r.u8() & 0xfc) : r.u32();
        rig.pio.write(0xcf8 + (r.u8() < 230 ? 0 : r.u8() & 3), le(value, r.u8() < 230 ? 4 : r.pick(WIDTHS)).subarray(0, 4));
        break;
      }
      case Op.DATA:
        busAccess(rig.pio, 0xcfc + (r.u8() & 3), r.pick(WIDTHS.slice(0, 3)), r);
        break;
      case Op.SIZE_BAR: {
        const [devfn, device] = fn(r);
        const index = r.below(6);
        const reg = BAR0 + 4 * index;
        const saved = dword(cfgRead(devfn, reg, 4));
        rig.pci.configWrite(devfn, reg, le(0xffffffff, 4));
        const bar = device.bars.find((b) => b.index === index);
        const expected = bar ? (~(bar.size - 1) | (bar.kind === 'io' ? 1 : 0)) >>> 0 : 0;
        const got = dword(cfgRead(devfn, reg, 4));
        check(got === expected, `BAR ${index} of ${device.name} sized as 0x${got.toString(16)}, not 0x${expected.toString(16)}`);
        const other = dword(cfgRead(fn(r)[0], BAR0 + 4 * r.below(6), 4));
        rig.pci.configWrite(devfn, reg, le(r.pick([saved, other, 0, 0xffffffff, r.u32()]), 4));
        break;
      }
      case Op.DIRECT: {
        const [devfn] = fn(r);
        const offset = r.bool() ? r.u8() : r.u16() % 0x110;
        const width = r.pick(WIDTHS);
        if (r.bool()) rig.pci.configWrite(devfn, offset, r.bytes(width));
        else cfgRead(devfn, offset, width);
        break;
      }
      case Op.BAR_ACCESS: {
        // Wherever the BAR decodes now, or anywhere in the MMIO window.
        const [devfn, device] = fn(r);
        const bar = device.bars[r.u8() % Math.max(1, device.bars.length)];
        const base = bar ? dword(cfgRead(devfn, BAR0 + 4 * bar.index, 4)) & ~0xf : 0xc0000000 + (r.u32() % 0x100000);
        const addr = base + (bar ? r.below(bar.size) : 0);
        busAccess(bar?.kind === 'io' ? rig.pio : rig.mmio, addr, r.pick(WIDTHS), r);
        break;
      }
      default:
        rig.pci.configWrite(fn(r)[0], 0x04, le(r.u16(), 2));
    }
    fds.pump();
    after();
  }
}
