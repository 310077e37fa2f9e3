// MSI-X (PCI Local Bus 3.0, 6.8.2): the capability in configuration space, the
// vector table and the pending-bit array in a BAR. A function raises a vector;
// this module decides whether it is delivered now (enabled, unmasked) or left
// pending until the guest unmasks it. Delivery itself belongs to an MsiSink.
import type { BusDevice } from '../bus.js';
import { PCI_CAP_ID_MSIX, type ConfigSpace } from './config-space.js';

export interface MsiMessage {
  addressLo: number;
  addressHi: number;
  data: number;
}

export interface MsiSink {
  /** Vector `vector` will be raised with `message` from now on (lets irqfd routes follow the table). */
  route(vector: number, message: MsiMessage): void;
  fire(vector: number, message: MsiMessage): void;
  /**
   * Sinks backed by irqfd can let another eventfd raise `vector` inside KVM, with no
   * thread of the VMM in between (a device's call fd); the route must be current first.
   */
  bindIrqfd?(vector: number, fd: number): void;
  unbindIrqfd?(vector: number, fd: number): void;
}

const ENTRY_SIZE = 16;
const ENTRY_CONTROL = 12;
const ENTRY_MASKED = 1;
const CONTROL_ENABLE = 0x8000;
const CONTROL_FUNCTION_MASK = 0x4000;
export const MSIX_MAX_VECTORS = 2048;

export class Msix {
  private readonly table: Uint8Array;
  private readonly tableView: DataView;
  private readonly pending: Uint8Array;
  private capOffset = 0;
  private config: ConfigSpace | undefined;
  /** The message last handed to the sink per vector, so routes change only when the table does. */
  private readonly routed: (MsiMessage | undefined)[];
  /** Raises that found their vector masked and were left pending. */
  deferred = 0;
  /** Called after the guest changed the enable or mask bits, or the table. */
  onChange: () => void = () => {};

  constructor(
    readonly vectors: number,
    private readonly sink: MsiSink,
  ) {
    if (vectors < 1 || vectors > MSIX_MAX_VECTORS) throw new Error(`bad MSI-X vector count ${vectors}`);
    this.table = new Uint8Array(vectors * ENTRY_SIZE);
    this.tableView = new DataView(this.table.buffer);
    this.pending = new Uint8Array(Math.ceil(vectors / 64) * 8);
    this.routed = new Array(vectors).fill(undefined);
    this.reset();
  }

  get tableSize(): number {
    return this.table.length;
  }

  get pbaSize(): number {
    return this.pending.length;
  }

  /** Adds the capability: table and PBA live in BARs `tableBar`/`pbaBar` at the given offsets. */
  addCapability(config: ConfigSpace, tableBar: number, tableOffset: number, pbaBar: number, pbaOffset: number): void {
    const body = new Uint8Array(10);
    const v = new DataView(body.buffer);
    v.setUint16(0, this.vectors - 1, true);
    v.setUint32(2, (tableOffset | tableBar) >>> 0, true);
    v.setUint32(6, (pbaOffset | pbaBar) >>> 0, true);
    this.capOffset = config.addCapability(PCI_CAP_ID_MSIX, body);
    config.setWritable(this.capOffset + 3, [(CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8]);
    this.config = config;
  }

  private get control(): number {
    return this.config ? this.config.u16(this.capOffset + 2) : 0;
  }

  /** MSI-X is on: the function must not use INTx. */
  get enabled(): boolean {
    return (this.control & CONTROL_ENABLE) !== 0;
  }

  /** The PCI bus saw a config write; a change of the control bits may release pending vectors. */
  configWritten(offset: number, length: number): void {
    if (!this.capOffset || offset > this.capOffset + 3 || offset + length <= this.capOffset + 2) return;
    this.releasePending();
    this.onChange();
  }

  reset(): void {
    this.table.fill(0);
    for (let v = 0; v < this.vectors; v++) this.tableView.setUint32(v * ENTRY_SIZE + ENTRY_CONTROL, ENTRY_MASKED, true);
    this.pending.fill(0);
    this.routed.fill(undefined);
    if (this.config) this.config.setU16(this.capOffset + 2, this.control & ~(CONTROL_ENABLE | CONTROL_FUNCTION_MASK));
  }

  /** The function or the vector is masked: a raise would only set the pending bit. */
  masked(vector: number): boolean {
    return (this.control & CONTROL_FUNCTION_MASK) !== 0 || (this.tableView.getUint32(vector * ENTRY_SIZE + ENTRY_CONTROL, true) & ENTRY_MASKED) !== 0;
  }

  private message(vector: number): MsiMessage {
    const at = vector * ENTRY_SIZE;
    return { addressLo: this.tableView.getUint32(at, true), addressHi: this.tableView.getUint32(at + 4, true), data: this.tableView.getUint32(at + 8, true) };
  }

  /** Raises `vector`: delivered now, or left pending while masked. False when MSI-X is off or the vector does not exist. */
  raise(vector: number): boolean {
    if (!this.enabled || vector >= this.vectors) return false;
    if (this.masked(vector)) {
      this.pending[vector >> 3]! |= 1 << (vector & 7);
      this.deferred++;
      return true;
    }
    this.deliver(vector);
    return true;
  }

  private deliver(vector: number): void {
    this.sink.fire(vector, this.syncRoute(vector));
  }

  /** Hands the sink `vector`'s message if it changed since the last time; returns it. */
  syncRoute(vector: number): MsiMessage {
    const message = this.message(vector);
    const last = this.routed[vector];
    if (!last || last.addressLo !== message.addressLo || last.addressHi !== message.addressHi || last.data !== message.data) {
      this.routed[vector] = message;
      this.sink.route(vector, message);
    }
    return message;
  }

  private releasePending(): void {
    if (!this.enabled) return;
    for (let v = 0; v < this.vectors; v++) {
      const bit = 1 << (v & 7);
      if (this.pending[v >> 3]! & bit && !this.masked(v)) {
        this.pending[v >> 3]! &= ~bit;
        this.deliver(v);
      }
    }
  }

  /** The vector table, served from a BAR. */
  readonly tableRegion: BusDevice = {
    name: 'msix-table',
    read: (offset, data) => {
      for (let i = 0; i < data.length; i++) data[i] = this.table[offset + i] ?? 0xff;
    },
    write: (offset, data) => {
      if (offset + data.length > this.table.length) return;
      this.table.set(data, offset);
      // Unmasking a vector delivers what it had pending; a new message moves its route on next use.
      if ((offset % ENTRY_SIZE) + data.length > ENTRY_CONTROL) this.releasePending();
      this.onChange();
    },
  };

  /** The pending-bit array: read-only to the guest. */
  readonly pbaRegion: BusDevice = {
    name: 'msix-pba',
    read: (offset, data) => {
      for (let i = 0; i < data.length; i++) data[i] = this.pending[offset + i] ?? 0xff;
    },
    write: () => {},
  };
}
