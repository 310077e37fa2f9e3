// A PCI function's 256-byte configuration space: identity, command/status, the
// capability list, and a per-byte mask of what the guest may write. BAR registers
// are not kept here: the PCI bus owns them, because moving a BAR moves a mapping.
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_CLASS_REVISION = 0x08;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BAR0 = 0x10;
export const PCI_BAR_COUNT = 6;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;
export const PCI_CONFIG_SIZE = 256;

export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
/** IO, memory, bus master, parity, SERR, INTx disable: the command bits a device may honour. */
const COMMAND_WRITABLE = 0x0547;
export const PCI_STATUS_INTERRUPT = 0x08;
export const PCI_STATUS_CAP_LIST = 0x10;

export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_MSIX = 0x11;
const FIRST_CAPABILITY = 0x40;

export interface PciIds {
  vendor: number;
  device: number;
  classCode: number;
  revision?: number;
  headerType?: number;
  subsystemVendor?: number;
  subsystem?: number;
  /** 1 = INTA#; 0 = no legacy interrupt. */
  interruptPin?: number;
}

export class ConfigSpace {
  readonly bytes = new Uint8Array(PCI_CONFIG_SIZE);
  private readonly view = new DataView(this.bytes.buffer);
  private readonly writable = new Uint8Array(PCI_CONFIG_SIZE);
  private lastCapability = 0;
  private nextCapability = FIRST_CAPABILITY;

  constructor(ids: PciIds) {
    this.view.setUint16(PCI_VENDOR_ID, ids.vendor, true);
    this.view.setUint16(PCI_DEVICE_ID, ids.device, true);
    this.view.setUint32(PCI_CLASS_REVISION, ((ids.classCode << 8) | (ids.revision ?? 0)) >>> 0, true);
    this.bytes[PCI_HEADER_TYPE] = ids.headerType ?? 0;
    this.view.setUint16(PCI_SUBSYSTEM_VENDOR_ID, ids.subsystemVendor ?? 0, true);
    this.view.setUint16(PCI_SUBSYSTEM_ID, ids.subsystem ?? 0, true);
    this.bytes[PCI_INTERRUPT_PIN] = ids.interruptPin ?? 0;
    this.setWritable(PCI_COMMAND, [COMMAND_WRITABLE & 0xff, COMMAND_WRITABLE >> 8]);
    this.setWritable(PCI_INTERRUPT_LINE, [0xff]);
  }

  u8(offset: number): number {
    return this.bytes[offset]!;
  }

  u16(offset: number): number {
    return this.view.getUint16(offset, true);
  }

  u32(offset: number): number {
    return this.view.getUint32(offset, true);
  }

  setU8(offset: number, v: number): void {
    this.bytes[offset] = v;
  }

  setU16(offset: number, v: number): void {
    this.view.setUint16(offset, v, true);
  }

  setU32(offset: number, v: number): void {
    this.view.setUint32(offset, v >>> 0, true);
  }

  get command(): number {
    return this.u16(PCI_COMMAND);
  }

  /** Lets the guest write the bits set in `mask`, byte by byte from `offset`. */
  setWritable(offset: number, mask: ArrayLike<number>): void {
    for (let i = 0; i < mask.length; i++) this.writable[offset + i] = mask[i]!;
  }

  /**
   * Appends a capability (`body` follows the ID and next-pointer bytes) to the list
   * and returns its offset.
   */
  addCapability(id: number, body: Uint8Array): number {
    const offset = this.nextCapability;
    const end = offset + 2 + body.length;
    if (end > PCI_CONFIG_SIZE) throw new Error('PCI capabilities do not fit in configuration space');
    this.bytes[offset] = id;
    this.bytes.set(body, offset + 2);
    if (this.lastCapability) this.bytes[this.lastCapability + 1] = offset;
    else this.bytes[PCI_CAPABILITY_LIST] = offset;
    this.setU16(PCI_STATUS, this.u16(PCI_STATUS) | PCI_STATUS_CAP_LIST);
    this.lastCapability = offset;
    this.nextCapability = (end + 3) & ~3;
    return offset;
  }

  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = offset + i < PCI_CONFIG_SIZE ? this.bytes[offset + i]! : 0xff;
  }

  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length && offset + i < PCI_CONFIG_SIZE; i++) {
      const mask = this.writable[offset + i]!;
      this.bytes[offset + i] = (this.bytes[offset + i]! & ~mask) | (data[i]! & mask);
    }
  }
}
