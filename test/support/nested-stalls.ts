// The nested host watchdog's lines (src/nested/watchdog.ts) in a test's output: a
// stall must be seen in the test log, not only absorbed by a retry.
import { WATCHDOG_LINES } from '../../src/nested/watchdog.js';

export function isWatchdogLine(line: string): boolean {
  return Object.values(WATCHDOG_LINES).some((start) => line.startsWith(start));
}

/** Prints each watchdog line of `output` as a TAP comment; returns how many stalls began. */
export function reportWatchdogLines(output: string): number {
  const lines = output.split('\n').filter(isWatchdogLine);
  for (const line of lines) console.log(`# ${line}`);
  return lines.filter((l) => l.startsWith(WATCHDOG_LINES.stalled)).length;
}
