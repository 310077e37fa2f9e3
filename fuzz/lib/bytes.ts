// The fuzz input decoder, as rust-vmm's fuzz targets read theirs: the bytes are
// a list of operations, each `kind, length (u16), arguments`, and every read past
// the end gives zeros. Length-prefixed operations keep a mutation inside one
// operation from shifting all the others, and let fast-check build inputs from
// structured operation lists that the same decoder reads back.
import fc from 'fast-check';

export class ByteReader {
  private at = 0;

  constructor(private readonly data: Uint8Array) {}

  get done(): boolean {
    return this.at >= this.data.length;
  }

  get remaining(): number {
    return Math.max(0, this.data.length - this.at);
  }

  u8(): number {
    return this.data[this.at++] ?? 0;
  }

  u16(): number {
    return this.u8() | (this.u8() << 8);
  }

  u32(): number {
    return (this.u16() | (this.u16() << 16)) >>> 0;
  }

  u64(): bigint {
    const lo = this.u32();
    return (BigInt(this.u32()) << 32n) | BigInt(lo);
  }

  bool(): boolean {
    return (this.u8() & 1) === 1;
  }

  /** A number in [0, n). */
  below(n: number): number {
    return n <= 1 ? 0 : this.u32() % n;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.u8() % items.length]!;
  }

  /** `n` bytes, zero-filled past the end. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    out.set(this.data.subarray(this.at, this.at + n));
    this.at += n;
    return out;
  }

  /** Whatever is left, at most `max` bytes. */
  rest(max = Infinity): Uint8Array {
    const out = this.data.slice(this.at, Math.min(this.data.length, this.at + max));
    this.at += out.length;
    return out;
  }
}

export interface Op {
  kind: number;
  args: ByteReader;
}

/** The operations of an input, at most `max` of them. */
export function* operations(data: Uint8Array, max = 256): Generator<Op> {
  const r = new ByteReader(data);
  for (let n = 0; n < max && !r.done; n++) {
    const kind = r.u8();
    const len = Math.min(r.u16(), r.remaining);
    yield { kind, args: new ByteReader(r.bytes(len)) };
  }
}

/** The first operation's arguments, which targets read their setup from (the device's options, features). */
export function firstArgs(ops: Generator<Op>): ByteReader {
  const first = ops.next();
  return first.done ? new ByteReader(new Uint8Array(0)) : first.value.args;
}

export function encodeOps(ops: readonly { kind: number; args: Uint8Array }[]): Uint8Array {
  const parts: number[] = [];
  for (const op of ops) {
    const len = Math.min(op.args.length, 0xffff);
    parts.push(op.kind & 0xff, len & 0xff, len >> 8, ...op.args.subarray(0, len));
  }
  return Uint8Array.from(parts);
}

/** Little-endian bytes of `value` in `width` bytes. */
export function le(value: number | bigint, width: number): Uint8Array {
  const out = new Uint8Array(width);
  let v = BigInt.asUintN(64, BigInt(value));
  for (let i = 0; i < width; i++, v >>= 8n) out[i] = Number(v & 0xffn);
  return out;
}

/** The little-endian u32 at the start of `bytes` (a register read back). */
export const dword = (bytes: Uint8Array): number => new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);

/** Values that break arithmetic: zero, one, powers of two and their neighbours, all-ones. */
export const INTERESTING = [
  0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x1ff, 0x200, 0x201, 0x7fff, 0x8000, 0xffff, 0x10000, 0x10001, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff,
] as const;

/** Argument bytes: random, or a run of interesting little-endian numbers, which plain random bytes rarely hit. */
const argBytes = (maxLength: number): fc.Arbitrary<Uint8Array> =>
  fc.oneof(
    fc.uint8Array({ maxLength }),
    fc.array(fc.tuple(fc.constantFrom(...INTERESTING), fc.constantFrom(1, 2, 4, 8)), { maxLength: Math.ceil(maxLength / 4) }).map((vs) => {
      const parts = vs.map(([v, w]) => le(v, w));
      const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        out.set(p, at);
        at += p.length;
      }
      return out;
    }),
  );

/**
 * Operation lists for a target whose decoder knows `kinds` operation kinds; `weights`
 * makes some kinds likelier (a target's frequent operations, like kicks).
 */
export function opsArbitrary(kinds: number, opts: { maxOps?: number; maxArgs?: number; weights?: readonly number[] } = {}): fc.Arbitrary<Uint8Array> {
  const kind = opts.weights ? fc.oneof(...opts.weights.map((w, k) => ({ arbitrary: fc.constant(k), weight: w }))) : fc.nat(kinds - 1);
  // 'medium': lists of any length up to maxOps; fast-check's default size stops at 10, too short for a driver's sequences.
  return fc.array(fc.record({ kind, args: argBytes(opts.maxArgs ?? 48) }), { maxLength: opts.maxOps ?? 40, size: 'medium' }).map(encodeOps);
}
