// The nested host's progress watchdog. On a loaded machine the whole nested host
// has, rarely, wedged: its own timers stop firing and nothing happens for many
// minutes. The nested host proves it is alive with a heartbeat that needs only its
// kernel's timers and scheduler (a shell loop around `sleep` writing to a
// virtio-serial port of its own), so a busy or blocked command does not silence it.
// When none arrives for a stall interval, one line on stderr says what is known;
// another follows only after each further interval, and one when heartbeats resume.
// Nothing is killed here: the caller decides.
import fs from 'node:fs';
import { UserError } from '../cli/errors.js';

/** How often the nested host's init sends a heartbeat. */
export const HEARTBEAT_SECONDS = 5;

const DEFAULT_STALL_SECONDS = 60;

/** How the watchdog's lines start, for callers (the test harness) that watch for them. */
export const WATCHDOG_LINES = {
  stalled: 'tsvisor: nested host stalled:',
  stillStalled: 'tsvisor: nested host still stalled:',
  resumed: 'tsvisor: nested host resumed',
} as const;

export interface ThreadSample {
  /** State letter from /proc: R running, S sleeping, T stopped... */
  state: string;
  /** CPU seconds used so far. */
  cpu: number;
  /** Seconds spent runnable but waiting for a CPU so far; undefined without schedstats. */
  waited?: number;
}

/** QEMU's threads by thread id. */
export type QemuThreads = ReadonlyMap<string, ThreadSample>;

export interface WatchdogSources {
  /** Monotonic milliseconds. */
  now(): number;
  /** Undefined when QEMU's threads cannot be read (it has exited). */
  qemuThreads(): QemuThreads | undefined;
  /** The last line the nested host's kernel printed on its console, if any. */
  lastConsoleLine(): string | undefined;
}

export interface WatchdogState {
  stalled: boolean;
  /** Stalls so far, the current one included. */
  stalls: number;
  msSinceHeartbeat: number;
}

/** TSVISOR_NESTED_STALL_SECONDS, or the default: how long without a heartbeat is a stall. */
export function stallSeconds(env: NodeJS.ProcessEnv = process.env): number {
  const value = env.TSVISOR_NESTED_STALL_SECONDS;
  if (value === undefined || value === '') return DEFAULT_STALL_SECONDS;
  const seconds = Number(value);
  if (!(seconds > 0 && Number.isFinite(seconds))) throw new UserError(`TSVISOR_NESTED_STALL_SECONDS="${value}" must be a positive number of seconds`);
  return seconds;
}

const seconds = (ms: number) => Math.round(ms / 1000);

export class NestedWatchdog {
  private lastBeat: number;
  private beaten = false;
  /** Stall intervals reported since the last heartbeat. */
  private reported = 0;
  private stalls = 0;
  /** QEMU's threads at the last heartbeat or stall line: what "the last interval" is measured from. */
  private mark: { at: number; threads: QemuThreads | undefined };

  constructor(
    private readonly stallMs: number,
    private readonly sources: WatchdogSources,
    private readonly report: (line: string) => void,
  ) {
    this.lastBeat = sources.now();
    this.mark = { at: this.lastBeat, threads: sources.qemuThreads() };
  }

  /** Often enough that a stall line is at most a few seconds late. */
  get checkEveryMs(): number {
    return Math.min(5000, this.stallMs / 4);
  }

  get state(): WatchdogState {
    return { stalled: this.reported > 0, stalls: this.stalls, msSinceHeartbeat: this.sources.now() - this.lastBeat };
  }

  heartbeat(): void {
    const now = this.sources.now();
    if (this.reported > 0) this.report(`${WATCHDOG_LINES.resumed} after a ${seconds(now - this.lastBeat)} s stall`);
    this.reported = 0;
    this.beaten = true;
    this.lastBeat = now;
    this.mark = { at: now, threads: this.sources.qemuThreads() };
  }

  check(): void {
    const now = this.sources.now();
    const silent = now - this.lastBeat;
    // Counted in whole intervals, so a late check reports once, not once per missed interval.
    const intervals = Math.floor(silent / this.stallMs);
    if (intervals <= this.reported) return;
    const first = this.reported === 0;
    if (first) this.stalls++;
    this.reported = intervals;
    const threads = this.sources.qemuThreads();
    const consoleLine = this.sources.lastConsoleLine();
    const since = this.beaten ? '' : ' since QEMU started';
    this.report(
      [
        first
          ? `${WATCHDOG_LINES.stalled} no heartbeat for ${seconds(silent)} s${since}`
          : `${WATCHDOG_LINES.stillStalled} no heartbeat for ${seconds(silent)} s in all${since}`,
        consoleLine ? `its console last printed ${JSON.stringify(consoleLine)}` : 'its console printed nothing',
        this.describeQemu(threads, now),
      ].join('; '),
    );
    this.mark = { at: now, threads };
  }

  /**
   * What QEMU did in the last interval: its CPU time advancing means TCG spins while
   * the nested host makes no progress; waiting for a CPU means the host does not
   * schedule it; neither means QEMU is idle, waiting on the nested host's own timers.
   */
  private describeQemu(threads: QemuThreads | undefined, now: number): string {
    const before = this.mark.threads;
    if (!threads || !before) return "QEMU's CPU time could not be read";
    let used = 0;
    let waited: number | undefined = 0;
    let ran = 0;
    // A thread that started since the mark counts from zero; one that ended is lost, which only undercounts.
    for (const [tid, t] of threads) {
      const was = before.get(tid);
      const delta = t.cpu - (was?.cpu ?? 0);
      used += delta;
      if (delta > 0) ran++;
      waited = waited === undefined || t.waited === undefined ? undefined : waited + t.waited - (was?.waited ?? 0);
    }
    const interval = seconds(now - this.mark.at);
    const verdict =
      used >= interval / 10
        ? 'CPU time still advancing: TCG runs but the nested host makes no progress'
        : [...threads.values()].every((t) => t.state === 'T' || t.state === 't')
          ? 'CPU time not advancing: QEMU is stopped'
          : waited === undefined
            ? 'CPU time not advancing: QEMU is idle or not being scheduled'
            : waited >= interval / 10
              ? 'CPU time not advancing: QEMU is not being scheduled'
              : "CPU time not advancing and no wait for a CPU: QEMU is idle, the nested host's timers are not firing";
    const wait = waited === undefined ? '' : ` and waited ${waited.toFixed(2)} s for a CPU`;
    return `QEMU's ${threads.size} threads used ${used.toFixed(2)} s of CPU in the last ${interval} s (${ran} of them ran)${wait}; ${verdict}`;
  }
}

/** Clock ticks per second in /proc's times: USER_HZ, 100 on x86 whatever the kernel's HZ. */
const USER_HZ = 100;

/** Each of a process's threads, from /proc/PID/task/TID/stat and schedstat. */
export function procThreads(pid: number, proc = '/proc'): QemuThreads | undefined {
  const dir = `${proc}/${pid}/task`;
  let tids: string[];
  try {
    tids = fs.readdirSync(dir);
  } catch {
    return undefined;
  }
  const threads = new Map<string, ThreadSample>();
  for (const tid of tids) {
    const stat = readOptional(`${dir}/${tid}/stat`);
    if (stat === undefined) continue; // the thread ended since the listing
    // The command name (field 2) may hold spaces and parentheses; the state (field 3),
    // utime (14) and stime (15) count from the closing one.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const sample: ThreadSample = { state: fields[0]!, cpu: (Number(fields[11]) + Number(fields[12])) / USER_HZ };
    // schedstat: nanoseconds on a CPU, nanoseconds runnable on a run queue, timeslices.
    const schedstat = readOptional(`${dir}/${tid}/schedstat`)?.split(' ');
    if (schedstat) sample.waited = Number(schedstat[1]) / 1e9;
    threads.set(tid, sample);
  }
  return threads;
}

function readOptional(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** The last non-empty line of a console log, from its tail. */
export function lastLogLine(file: string): string | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return undefined;
  }
  try {
    const size = fs.fstatSync(fd).size;
    const tail = Buffer.alloc(Math.min(size, 4096));
    fs.readSync(fd, tail, 0, tail.length, size - tail.length);
    const lines = tail
      .toString('utf8')
      .split(/\r?\n/)
      .map((l) => l.replace(/[\x00-\x1f\x7f]/g, '').trim())
      .filter((l) => l !== '');
    return lines.at(-1);
  } finally {
    fs.closeSync(fd);
  }
}
