// The Marvell 88E1011 PHY behind the 82540EM, reached through MDIC. Link is up at
// 1000 Mb/s full duplex with auto-negotiation complete (what the driver polls for
// before it declares the link up) until the MAC takes it down; a reset brings it back.

export const Mdic = {
  DATA_MASK: 0xffff,
  REG_SHIFT: 16,
  PHY_SHIFT: 21,
  OP_WRITE: 0x04000000,
  OP_READ: 0x08000000,
  READY: 0x10000000,
  ERROR: 0x40000000,
} as const;
const PHY_ADDRESS = 1;

const PhyReg = {
  CTRL: 0,
  STATUS: 1,
  ID1: 2,
  ID2: 3,
  AUTONEG_ADV: 4,
  LP_ABILITY: 5,
  AUTONEG_EXP: 6,
  GIG_CTRL: 9,
  GIG_STATUS: 10,
  EXT_STATUS: 15,
  M88_SPEC_CTRL: 0x10,
  M88_SPEC_STATUS: 0x11,
  M88_EXT_SPEC_CTRL: 0x14,
} as const;
const CTRL_RESET = 0x8000;
const CTRL_RESTART_AUTONEG = 0x0200;
const STATUS_LINK = 0x0004;
const M88_SPEC_STATUS_LINK = 0x0400;

/** Power-on values; registers not listed read as zero and keep what is written. */
const INITIAL: Record<number, number> = {
  [PhyReg.CTRL]: 0x1140, // auto-negotiation on, full duplex, 1000 Mb/s
  [PhyReg.STATUS]: 0x796d, // link up, auto-negotiation complete, capabilities
  [PhyReg.ID1]: 0x0141,
  [PhyReg.ID2]: 0x0c20,
  [PhyReg.AUTONEG_ADV]: 0x0de1,
  [PhyReg.LP_ABILITY]: 0x45e0,
  [PhyReg.AUTONEG_EXP]: 0x0001,
  [PhyReg.GIG_CTRL]: 0x0e00,
  [PhyReg.GIG_STATUS]: 0x3c00,
  [PhyReg.EXT_STATUS]: 0x3000,
  [PhyReg.M88_SPEC_CTRL]: 0x0360,
  [PhyReg.M88_SPEC_STATUS]: 0xac00, // 1000 Mb/s, full duplex, resolved, link up
  [PhyReg.M88_EXT_SPEC_CTRL]: 0x0d60,
};
const READ_ONLY = new Set<number>([
  PhyReg.STATUS,
  PhyReg.ID1,
  PhyReg.ID2,
  PhyReg.LP_ABILITY,
  PhyReg.AUTONEG_EXP,
  PhyReg.GIG_STATUS,
  PhyReg.EXT_STATUS,
  PhyReg.M88_SPEC_STATUS,
]);

export class E1000Phy {
  private readonly regs = new Uint16Array(32);

  constructor() {
    this.reset();
  }

  reset(): void {
    this.regs.fill(0);
    for (const [reg, value] of Object.entries(INITIAL)) this.regs[Number(reg)] = value;
  }

  linkDown(): void {
    this.regs[PhyReg.STATUS]! &= ~STATUS_LINK;
    this.regs[PhyReg.M88_SPEC_STATUS]! &= ~M88_SPEC_STATUS_LINK;
  }

  /** Carries out an MDIC command; returns what MDIC reads back (ready, data or error). */
  mdic(value: number): number {
    const reg = (value >>> Mdic.REG_SHIFT) & 0x1f;
    const phy = (value >>> Mdic.PHY_SHIFT) & 0x1f;
    const base = (value & ~(Mdic.READY | Mdic.ERROR)) >>> 0;
    if (phy !== PHY_ADDRESS) return (base | Mdic.READY | Mdic.ERROR) >>> 0;
    if (value & Mdic.OP_READ) return ((base & ~Mdic.DATA_MASK) | this.regs[reg]! | Mdic.READY) >>> 0;
    if (value & Mdic.OP_WRITE) this.write(reg, value & Mdic.DATA_MASK);
    return (base | Mdic.READY) >>> 0;
  }

  private write(reg: number, data: number): void {
    if (READ_ONLY.has(reg)) return;
    if (reg === PhyReg.CTRL) {
      if (data & CTRL_RESET) return this.reset();
      data &= ~CTRL_RESTART_AUTONEG; // negotiation completes at once
    }
    this.regs[reg] = data;
  }
}
