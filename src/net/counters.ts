// Counters devices and back-ends keep for --stats: named numbers in a
// Float64Array, so a device worker can count into a SharedArrayBuffer the main
// thread reads without asking (one thread writes, any thread reads); drops by
// reason; another component's counters nested under a prefix.

export class Counters<Name extends string> {
  readonly values: Float64Array<ArrayBufferLike>;
  private readonly index: Record<string, number>;

  /** Over `storage` (at least names.length long) when given, else over memory of its own. */
  constructor(
    readonly names: readonly Name[],
    storage?: Float64Array<ArrayBufferLike>,
  ) {
    if (storage && storage.length < names.length) throw new RangeError(`counters: ${names.length} names over ${storage.length} slots`);
    this.values = storage ?? new Float64Array(names.length);
    this.index = Object.fromEntries(names.map((n, i) => [n, i]));
  }

  add(name: Name, n = 1): void {
    this.values[this.index[name]!]! += n;
  }

  set(name: Name, n: number): void {
    this.values[this.index[name]!] = n;
  }

  get(name: Name): number {
    return this.values[this.index[name]!]!;
  }

  record(): Record<Name, number> {
    return Object.fromEntries(this.names.map((n, i) => [n, this.values[i]!])) as Record<Name, number>;
  }
}

export class DropCounter<Reason extends string> {
  private readonly counters: Counters<Reason>;

  constructor(reasons: readonly Reason[], storage?: Float64Array<ArrayBufferLike>) {
    this.counters = new Counters(reasons, storage);
  }

  count(reason: Reason): void {
    this.counters.add(reason);
  }

  get(reason: Reason): number {
    return this.counters.get(reason);
  }

  /** `drop.<reason>` for every reason seen. */
  stats(): Record<string, number> {
    return Object.fromEntries(
      Object.entries(this.counters.record())
        .filter(([, v]) => v !== 0)
        .map(([k, v]) => [`drop.${k}`, v as number]),
    );
  }
}

export function prefixed(prefix: string, stats: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(stats).map(([k, v]) => [prefix + k, v]));
}
