// The 82540EM's serial EEPROM (a 64-word Microwire part) as its driver sees it:
// bit-banged through EECD (chip select, clock, data in, data out), or read a word
// at a time through EERD. Words 0-2 hold the MAC; the words up to 0x3F sum to
// 0xBABA, which the driver checks before it trusts the rest.

const WORDS = 64;
const ADDRESS_BITS = 6;
const CHECKSUM_WORD = 0x3f;
const CHECKSUM_SUM = 0xbaba;
const OPCODE_READ = 0b110; // start bit, then 10

export const Eecd = { SK: 0x1, CS: 0x2, DI: 0x4, DO: 0x8, REQ: 0x40, GNT: 0x80, PRES: 0x100 } as const;
const EERD_START = 0x1;
const EERD_DONE = 0x10;
const EERD_ADDR_SHIFT = 8;
const EERD_DATA_SHIFT = 16;

export class E1000Eeprom {
  readonly words = new Uint16Array(WORDS);
  private eecd: number = Eecd.PRES;
  /** Bits clocked in since chip select: the opcode, then the address. */
  private bitsIn = 0;
  private shiftIn = 0;
  /** While reading: the word being clocked out and the next bit position (16: none yet). */
  private reading = false;
  private address = 0;
  private outBit = 16;
  private eerd = 0;

  constructor(mac: Uint8Array, ids: { device: number; vendor: number; subsystem: number; subsystemVendor: number }) {
    for (let i = 0; i < 3; i++) this.words[i] = mac[2 * i]! | (mac[2 * i + 1]! << 8);
    this.words[0x0b] = ids.subsystem;
    this.words[0x0c] = ids.subsystemVendor;
    this.words[0x0d] = ids.device;
    this.words[0x0e] = ids.vendor;
    let sum = 0;
    for (let i = 0; i < CHECKSUM_WORD; i++) sum += this.words[i]!;
    this.words[CHECKSUM_WORD] = (CHECKSUM_SUM - sum) & 0xffff;
  }

  readEecd(): number {
    let v = this.eecd & ~Eecd.DO;
    if (this.reading && this.outBit < 16 && (this.words[this.address]! >> this.outBit) & 1) v |= Eecd.DO;
    return v;
  }

  writeEecd(value: number): void {
    const was = this.eecd;
    // The driver requests the EEPROM (REQ) and waits for the grant (GNT).
    this.eecd = (value & (Eecd.SK | Eecd.CS | Eecd.DI | Eecd.REQ)) | Eecd.PRES | (value & Eecd.REQ ? Eecd.GNT : 0);
    if (!(value & Eecd.CS)) return this.deselect();
    const risingClock = value & Eecd.SK && !(was & Eecd.SK);
    if (risingClock) this.clock((value & Eecd.DI) !== 0);
  }

  private deselect(): void {
    this.bitsIn = this.shiftIn = 0;
    this.reading = false;
    this.outBit = 16;
  }

  private clock(bit: boolean): void {
    if (this.reading) {
      // Bits go out most significant first; a read keeps going into the next word.
      if (this.outBit === 0) {
        this.address = (this.address + 1) % WORDS;
        this.outBit = 16;
      }
      this.outBit--;
      return;
    }
    this.shiftIn = (this.shiftIn << 1) | (bit ? 1 : 0);
    this.bitsIn++;
    if (this.bitsIn === 3 && this.shiftIn !== OPCODE_READ) return this.deselect(); // only reads are supported
    if (this.bitsIn === 3 + ADDRESS_BITS) {
      this.address = this.shiftIn & (WORDS - 1);
      this.reading = true;
      this.outBit = 16;
    }
  }

  readEerd(): number {
    return this.eerd;
  }

  writeEerd(value: number): void {
    if (!(value & EERD_START)) return;
    const addr = (value >>> EERD_ADDR_SHIFT) & 0xff;
    const data = addr < WORDS ? this.words[addr]! : 0xffff;
    this.eerd = ((data << EERD_DATA_SHIFT) | (addr << EERD_ADDR_SHIFT) | EERD_DONE) >>> 0;
  }
}
