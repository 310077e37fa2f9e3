// The MC146818 CMOS real-time clock at ports 0x70/0x71, showing the host's UTC time.
// A guest that sets the clock (SET bit in register B) moves an offset, not the host clock.
import type { BusDevice } from '../bus.js';

export const RTC_PORT = 0x70;

const SECONDS = 0x00;
const MINUTES = 0x02;
const HOURS = 0x04;
const WEEKDAY = 0x06;
const DAY = 0x07;
const MONTH = 0x08;
const YEAR = 0x09;
const REG_A = 0x0a;
const REG_B = 0x0b;
const REG_C = 0x0c;
const REG_D = 0x0d;
const CENTURY = 0x32;

const B_SET = 0x80;
const B_BINARY = 0x04;
const B_24H = 0x02;
const D_VALID_RAM = 0x80;
const HOUR_PM = 0x80;

export class Rtc implements BusDevice {
  readonly name = 'rtc';
  private index = 0;
  private cmos = new Uint8Array(128);
  /** Guest time minus host time, in milliseconds. */
  private offsetMs = 0;

  constructor(private readonly now: () => number = Date.now) {
    this.cmos[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
    this.cmos[REG_B] = B_24H;
    this.cmos[REG_D] = D_VALID_RAM;
  }

  private encode(v: number): number {
    return this.cmos[REG_B]! & B_BINARY ? v : ((v / 10) | 0) * 16 + (v % 10);
  }

  private decode(v: number): number {
    return this.cmos[REG_B]! & B_BINARY ? v : (v >> 4) * 10 + (v & 0x0f);
  }

  private encodeHour(h: number): number {
    if (this.cmos[REG_B]! & B_24H) return this.encode(h);
    const pm = h >= 12;
    const h12 = h % 12 === 0 ? 12 : h % 12;
    return this.encode(h12) | (pm ? HOUR_PM : 0);
  }

  private decodeHour(v: number): number {
    if (this.cmos[REG_B]! & B_24H) return this.decode(v);
    const h12 = this.decode(v & 0x7f) % 12;
    return v & HOUR_PM ? h12 + 12 : h12;
  }

  /** Loads the time registers from the (offset) clock, unless the guest is setting them. */
  private latchTime(): void {
    if (this.cmos[REG_B]! & B_SET) return;
    const d = new Date(this.now() + this.offsetMs);
    this.cmos[SECONDS] = this.encode(d.getUTCSeconds());
    this.cmos[MINUTES] = this.encode(d.getUTCMinutes());
    this.cmos[HOURS] = this.encodeHour(d.getUTCHours());
    this.cmos[WEEKDAY] = this.encode(d.getUTCDay() + 1);
    this.cmos[DAY] = this.encode(d.getUTCDate());
    this.cmos[MONTH] = this.encode(d.getUTCMonth() + 1);
    this.cmos[YEAR] = this.encode(d.getUTCFullYear() % 100);
    this.cmos[CENTURY] = this.encode(Math.floor(d.getUTCFullYear() / 100));
  }

  private commitTime(): void {
    const year = this.decode(this.cmos[CENTURY]!) * 100 + this.decode(this.cmos[YEAR]!);
    const t = Date.UTC(
      year,
      this.decode(this.cmos[MONTH]!) - 1,
      this.decode(this.cmos[DAY]!),
      this.decodeHour(this.cmos[HOURS]!),
      this.decode(this.cmos[MINUTES]!),
      this.decode(this.cmos[SECONDS]!),
    );
    if (Number.isFinite(t)) this.offsetMs = t - this.now();
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === 0) {
      data[0] = this.index;
      return;
    }
    if (this.index <= YEAR || this.index === CENTURY) this.latchTime();
    data[0] = this.cmos[this.index]!;
    if (this.index === REG_C) this.cmos[REG_C] = 0; // reading C acknowledges its flags
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0]!;
    if (offset === 0) {
      this.index = v & 0x7f; // bit 7 is the NMI mask
      return;
    }
    switch (this.index) {
      case REG_C:
      case REG_D:
        return; // read-only
      case REG_A:
        this.cmos[REG_A] = v & 0x7f; // UIP is read-only and never set
        return;
      case REG_B: {
        const wasSetting = this.cmos[REG_B]! & B_SET;
        if (!wasSetting && v & B_SET) this.latchTime();
        this.cmos[REG_B] = v;
        if (wasSetting && !(v & B_SET)) this.commitTime();
        return;
      }
      default:
        this.cmos[this.index] = v;
        if ((this.index <= YEAR || this.index === CENTURY) && !(this.cmos[REG_B]! & B_SET)) this.commitTime();
    }
  }
}
