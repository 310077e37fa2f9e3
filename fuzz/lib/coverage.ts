// Coverage feedback from V8's own block coverage (node:inspector), which needs no
// native code or instrumentation pass. Precise coverage with call counts resets
// its counters on every take, so each take covers what ran since the last one.
//
// V8 reports, per function, the function's range and the blocks whose count
// differs from their enclosing range's; a block that ran as often as its parent
// is not listed. So a block is known from the first time V8 lists it (usually as
// not run), and counts as covered once the innermost range listed around it in a
// take has a non-zero count. A "feature" is such a covered block.
import { Session } from 'node:inspector';
import { fileURLToPath } from 'node:url';

interface Range {
  startOffset: number;
  endOffset: number;
  count: number;
}

interface ScriptCoverage {
  url: string;
  functions: { ranges: Range[] }[];
}

/** The device code under test: compiled src/, not the harness or node_modules. */
const SRC = fileURLToPath(new URL('../../src/', import.meta.url));

/**
 * One session for the process, started once: V8 keeps block counters only for code
 * compiled while precise coverage is on, so stopping and restarting it between
 * targets would leave the code the earlier targets ran counted per function only.
 */
let shared: Session | undefined;

export class Coverage {
  private session!: Session;
  /** Per script: every block range V8 has listed ("start:end"). */
  private readonly known = new Map<string, Map<string, Range>>();
  private readonly covered = new Set<string>();

  start(): void {
    if (!shared) {
      shared = new Session();
      shared.connect();
      this.session = shared;
      this.post('Profiler.enable');
      this.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
    }
    this.session = shared;
  }

  get blocks(): number {
    return this.covered.size;
  }

  /** Discards what ran so far (the harness's own warm-up). */
  reset(): void {
    this.take();
  }

  /** Blocks covered since the last call that no earlier call covered; they count as covered from now on. */
  collect(): string[] {
    const fresh = this.observe(this.take());
    this.mark(fresh);
    return fresh;
  }

  /** What ran since the last take that is not covered yet, without counting it (see mark). */
  peek(): string[] {
    return this.observe(this.take());
  }

  mark(features: readonly string[]): void {
    for (const f of features) this.covered.add(f);
  }

  private take(): ScriptCoverage[] {
    let result: ScriptCoverage[] = [];
    this.session.post('Profiler.takePreciseCoverage', (err, res) => {
      if (err) throw err;
      result = (res as { result: ScriptCoverage[] }).result;
    });
    return result;
  }

  private observe(scripts: ScriptCoverage[]): string[] {
    const fresh: string[] = [];
    for (const script of scripts) {
      if (!script.url.startsWith('file://') || !fileURLToPath(script.url).startsWith(SRC)) continue;
      let known = this.known.get(script.url);
      if (!known) this.known.set(script.url, (known = new Map()));
      const listed: Range[] = [];
      for (const fn of script.functions) {
        for (const range of fn.ranges) {
          listed.push(range);
          const key = `${range.startOffset}:${range.endOffset}`;
          if (!known.has(key)) known.set(key, range);
        }
      }
      for (const [key, block] of known) {
        const feature = `${script.url}#${key}`;
        if (this.covered.has(feature)) continue;
        if (innermostCount(listed, block) > 0) fresh.push(feature);
      }
    }
    return fresh;
  }

  private post(method: string, params?: object): void {
    this.session.post(method, params, (err) => {
      if (err) throw err;
    });
  }
}

/** The count of the smallest listed range around `block`; 0 when none is. */
function innermostCount(listed: readonly Range[], block: Range): number {
  let best: Range | undefined;
  for (const r of listed) {
    if (r.startOffset <= block.startOffset && r.endOffset >= block.endOffset && (!best || r.endOffset - r.startOffset < best.endOffset - best.startOffset))
      best = r;
  }
  return best?.count ?? 0;
}
