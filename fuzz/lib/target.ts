// What a fuzz target is, and the oracles every target shares. A target runs one
// input against fresh device state; it fails the case by throwing: an exception
// out of a device entry point propagates as is, and a broken property throws
// OracleError. A device that declares itself broken (DEVICE_NEEDS_RESET, a
// stopped ring) is fine.
import type fc from 'fast-check';
import type { BusDevice } from '../../src/devices/bus.js';

export interface FuzzTarget<C = unknown> {
  readonly name: string;
  /** One line for listings. */
  readonly description: string;
  /** Shared, expensive state (temp files, loopback servers), made once per run. */
  setup?(): C | Promise<C>;
  teardown?(ctx: C): void | Promise<void>;
  /** Runs one input from fresh device state. */
  run(ctx: C, data: Uint8Array): void | Promise<void>;
  /** Structured inputs for fast-check; the decoder reads them like any bytes. */
  readonly arbitrary: fc.Arbitrary<Uint8Array>;
  /** Wall time one case may take before it counts as a hang. */
  readonly budgetMs?: number;
}

export class OracleError extends Error {
  override name = 'OracleError';
}

export function check(ok: unknown, what: string): asserts ok {
  if (!ok) throw new OracleError(what);
}

/**
 * A register read through `region` with guard bytes around the buffer: the device
 * must fill exactly the bytes asked for. Returns the value read.
 */
export function guardedRead(region: BusDevice, offset: number, width: number): Uint8Array {
  const buf = new Uint8Array(width + 2).fill(0xee);
  const data = buf.subarray(1, 1 + width);
  region.read(offset, data);
  check(buf[0] === 0xee && buf[width + 1] === 0xee, `${region.name} read at 0x${offset.toString(16)} (${width} bytes) wrote outside its buffer`);
  return data;
}

/** Every guest-facing register width, weighted to the common ones. */
export const WIDTHS = [1, 2, 4, 4, 8] as const;
