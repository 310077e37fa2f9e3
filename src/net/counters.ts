// Counters network devices and back-ends share: drops by reason, and another
// component's counters nested under a prefix, both flattened for --stats.

export class DropCounter<Reason extends string> {
  private readonly byReason = new Map<Reason, number>();

  count(reason: Reason): void {
    this.byReason.set(reason, (this.byReason.get(reason) ?? 0) + 1);
  }

  get(reason: Reason): number {
    return this.byReason.get(reason) ?? 0;
  }

  /** `drop.<reason>` for every reason seen. */
  stats(): Record<string, number> {
    return Object.fromEntries([...this.byReason].map(([k, v]) => [`drop.${k}`, v]));
  }
}

export function prefixed(prefix: string, stats: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(stats).map(([k, v]) => [prefix + k, v]));
}
