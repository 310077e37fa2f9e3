// A PCI function's 256-byte configuration space, with a mask of the bits the guest may write.
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_CLASS_REVISION = 0x08;
export const PCI_HEADER_TYPE = 0x0e;

export class ConfigSpace {
  readonly bytes = new Uint8Array(256);
  private readonly writable = new Uint8Array(256);

  constructor(ids: { vendor: number; device: number; classCode: number; revision?: number; headerType?: number }) {
    const v = new DataView(this.bytes.buffer);
    v.setUint16(PCI_VENDOR_ID, ids.vendor, true);
    v.setUint16(PCI_DEVICE_ID, ids.device, true);
    v.setUint32(PCI_CLASS_REVISION, ((ids.classCode << 8) | (ids.revision ?? 0)) >>> 0, true);
    this.bytes[PCI_HEADER_TYPE] = ids.headerType ?? 0;
    this.writable.fill(0xff, PCI_COMMAND, PCI_COMMAND + 2);
  }

  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = offset + i < 256 ? this.bytes[offset + i]! : 0xff;
  }

  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length && offset + i < 256; i++) {
      const mask = this.writable[offset + i]!;
      this.bytes[offset + i] = (this.bytes[offset + i]! & ~mask) | (data[i]! & mask);
    }
  }
}
