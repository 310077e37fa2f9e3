// What a PCI function offers the bus it is plugged into. The bus owns placement
// (BAR addresses, decoding, INTx wiring); the function only describes its BARs and
// serves accesses at offsets inside them.
import type { BusDevice, IrqLine } from '../bus.js';
import type { ConfigSpace } from './config-space.js';

export type BarKind = 'memory' | 'io';

export interface PciBar {
  /** 0..5 */
  readonly index: number;
  readonly kind: BarKind;
  /** A power of two. */
  readonly size: number;
  /** Serves accesses at offsets inside the BAR. */
  readonly region: BusDevice;
}

/**
 * Has KVM queue guest writes to [addr, addr+len) in its coalesced ring instead of
 * exiting for each (they are applied before the next exit is handled); returns the undo.
 */
export type CoalescedZoneRegistrar = (addr: number, len: number) => () => void;

export interface PciDevice {
  readonly name: string;
  readonly config: ConfigSpace;
  readonly bars: readonly PciBar[];
  /** The bus wired the function's INTx pin; called once, when plugged. */
  plugged?(intx: IrqLine): void;
  /** BAR `index` now decodes at `address`, or no longer decodes (undefined). */
  barMapped?(index: number, address: number | undefined): void;
  /** The guest wrote configuration bytes [offset, offset+length) (after the write mask applied). */
  configWritten?(offset: number, length: number): void;
  /** Lets registers that are windows onto something else fill in `data` (already holding the config bytes). */
  configRead?(offset: number, data: Uint8Array): void;
}
