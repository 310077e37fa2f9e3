import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { UserError } from '../../src/cli/errors.js';
import { nestedHostKnobs } from '../../src/nested/nested-host.js';
import { lastLogLine, NestedWatchdog, procThreads, stallSeconds, WATCHDOG_LINES, type QemuThreads, type ThreadSample } from '../../src/nested/watchdog.js';

/** A watchdog on a fake clock, a fake QEMU (its main thread 100 and vCPU threads 101, 102) and a fake console. */
function fakeHost(stallSeconds = 60) {
  const host = {
    clock: 0,
    threads: new Map<string, ThreadSample>([
      ['100', { state: 'S', cpu: 1, waited: 0.5 }],
      ['101', { state: 'R', cpu: 10, waited: 2 }],
      ['102', { state: 'R', cpu: 10, waited: 2 }],
    ]),
    qemuGone: false,
    console: undefined as string | undefined,
    lines: [] as string[],
  };
  const watchdog = new NestedWatchdog(
    stallSeconds * 1000,
    {
      now: () => host.clock,
      qemuThreads: (): QemuThreads | undefined => (host.qemuGone ? undefined : new Map([...host.threads].map(([tid, t]) => [tid, { ...t }]))),
      lastConsoleLine: () => host.console,
    },
    (line) => host.lines.push(line),
  );
  /** Advances the clock in the watchdog's own check steps; each second the vCPU threads use `spin` CPU seconds and wait `wait` for a CPU. */
  const advance = (seconds: number, spin = 0, wait = 0) => {
    for (let s = 0; s < seconds; s += watchdog.checkEveryMs / 1000) {
      const step = Math.min(watchdog.checkEveryMs / 1000, seconds - s);
      host.clock += step * 1000;
      for (const tid of ['101', '102']) {
        const t = host.threads.get(tid)!;
        t.cpu += (step * spin) / 2;
        t.waited! += (step * wait) / 2;
      }
      watchdog.check();
    }
  };
  const beat = () => watchdog.heartbeat();
  return { host, watchdog, advance, beat };
}

test('heartbeats within the interval keep the watchdog quiet', () => {
  const { host, watchdog, advance, beat } = fakeHost();
  for (let i = 0; i < 50; i++) {
    advance(5, 2);
    beat();
  }
  assert.deepEqual(host.lines, []);
  assert.deepEqual(watchdog.state, { stalled: false, stalls: 0, msSinceHeartbeat: 0 });
});

test('a stall is reported once per interval, with the total, the console line and TCG still spinning; resuming says so once', () => {
  const { host, watchdog, advance, beat } = fakeHost();
  advance(5, 2);
  beat();
  host.console = 'rcu: INFO: rcu_sched self-detected stall on CPU';
  advance(59, 2);
  assert.deepEqual(host.lines, [], 'nothing before a whole interval');
  advance(1, 2);
  assert.equal(host.lines.length, 1);
  assert.equal(
    host.lines[0],
    `${WATCHDOG_LINES.stalled} no heartbeat for 60 s; its console last printed "rcu: INFO: rcu_sched self-detected stall on CPU"; ` +
      "QEMU's 3 threads used 120.00 s of CPU in the last 60 s (2 of them ran) and waited 0.00 s for a CPU; CPU time still advancing: TCG runs but the nested host makes no progress",
  );
  assert.deepEqual(watchdog.state, { stalled: true, stalls: 1, msSinceHeartbeat: 60_000 });

  advance(59, 2);
  assert.equal(host.lines.length, 1, 'no second line within the second interval');
  advance(1, 2);
  assert.equal(host.lines.length, 2);
  assert.match(host.lines[1]!, /^tsvisor: nested host still stalled: no heartbeat for 120 s in all; its console last printed "rcu: /);
  assert.match(host.lines[1]!, /used 120\.00 s of CPU in the last 60 s/, 'CPU time counts from the previous line, not the heartbeat');

  advance(15, 2);
  beat();
  assert.deepEqual(host.lines.slice(2), [`${WATCHDOG_LINES.resumed} after a 135 s stall`]);
  assert.deepEqual(watchdog.state, { stalled: false, stalls: 1, msSinceHeartbeat: 0 });
  beat();
  advance(5, 2);
  assert.equal(host.lines.length, 3, 'resuming is said once');
});

test("a QEMU whose CPU time stands still is named stopped, not scheduled or idle by its threads' states and run-queue waits", () => {
  const verdict = (prepare: (threads: Map<string, ThreadSample>) => void, spin: number, wait: number) => {
    const { host, advance, beat } = fakeHost();
    prepare(host.threads);
    beat();
    advance(60, spin, wait);
    return host.lines[0]!.slice(host.lines[0]!.indexOf("QEMU's"));
  };
  assert.equal(
    verdict((threads) => threads.forEach((t) => (t.state = 'T')), 0, 0),
    "QEMU's 3 threads used 0.00 s of CPU in the last 60 s (0 of them ran) and waited 0.00 s for a CPU; CPU time not advancing: QEMU is stopped",
  );
  assert.equal(
    verdict(() => {}, 0.05, 0.9),
    "QEMU's 3 threads used 3.00 s of CPU in the last 60 s (2 of them ran) and waited 54.00 s for a CPU; CPU time not advancing: QEMU is not being scheduled",
  );
  assert.equal(
    verdict((threads) => threads.forEach((t) => (t.state = 'S')), 0.01, 0),
    "QEMU's 3 threads used 0.60 s of CPU in the last 60 s (2 of them ran) and waited 0.00 s for a CPU; CPU time not advancing and no wait for a CPU: QEMU is idle, the nested host's timers are not firing",
  );
  assert.equal(
    verdict((threads) => threads.forEach((t) => delete t.waited), 0, 0),
    "QEMU's 3 threads used 0.00 s of CPU in the last 60 s (0 of them ran); CPU time not advancing: QEMU is idle or not being scheduled",
  );
});

test('threads that start or end during a stall are counted by what they used, never negatively', () => {
  const { host, advance, beat } = fakeHost();
  beat();
  host.threads.delete('100');
  host.threads.set('103', { state: 'R', cpu: 4, waited: 1 });
  advance(60, 0);
  assert.match(host.lines[0]!, /QEMU's 3 threads used 4\.00 s of CPU in the last 60 s \(1 of them ran\) and waited 1\.00 s for a CPU;/);
});

test('a nested host that never sends a heartbeat stalls from the start; a QEMU that is gone is said so', () => {
  const { host, watchdog, advance } = fakeHost(10);
  assert.equal(watchdog.checkEveryMs, 2500, 'short intervals are checked more often');
  host.qemuGone = true;
  advance(10);
  assert.equal(host.lines.length, 1);
  assert.match(
    host.lines[0]!,
    /^tsvisor: nested host stalled: no heartbeat for 10 s since QEMU started; its console printed nothing; QEMU's CPU time could not be read$/,
  );
});

test('a late check reports a long stall once, with its whole length', () => {
  const { host, watchdog, beat } = fakeHost();
  beat();
  host.clock += 185_000;
  watchdog.check();
  watchdog.check();
  assert.equal(host.lines.length, 1);
  assert.match(host.lines[0]!, /^tsvisor: nested host stalled: no heartbeat for 185 s;/);
  host.clock += 55_000;
  watchdog.check();
  assert.match(host.lines[1]!, /^tsvisor: nested host still stalled: no heartbeat for 240 s in all;/);
});

test('TSVISOR_NESTED_STALL_SECONDS sets the interval; 60 s by default; nonsense is refused', () => {
  assert.equal(stallSeconds({}), 60);
  assert.equal(stallSeconds({ TSVISOR_NESTED_STALL_SECONDS: '' }), 60);
  assert.equal(stallSeconds({ TSVISOR_NESTED_STALL_SECONDS: '7.5' }), 7.5);
  for (const bad of ['0', '-3', 'soon', 'Infinity']) assert.throws(() => stallSeconds({ TSVISOR_NESTED_STALL_SECONDS: bad }), /TSVISOR_NESTED_STALL_SECONDS/);
});

test('the nested host has one vCPU unless TSVISOR_NESTED_CPUS says 1 to 8; nonsense is refused', () => {
  assert.equal(nestedHostKnobs({}).cpus, 1);
  assert.equal(nestedHostKnobs({ TSVISOR_NESTED_CPUS: '2' }).cpus, 2);
  for (const bad of ['0', '9', '1.5', 'two']) assert.throws(() => nestedHostKnobs({ TSVISOR_NESTED_CPUS: bad }), UserError, bad);
});

test("procThreads reads each thread's state, utime+stime and run-queue wait, whatever the command name holds", () => {
  const proc = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-proc-'));
  try {
    const thread = (tid: number, comm: string, state: string, utime: number, stime: number, schedstat?: string) => {
      const dir = path.join(proc, '4000/task', String(tid));
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(
        path.join(dir, 'stat'),
        `${tid} (${comm}) ${state} 1 ${tid} ${tid} 0 -1 4194560 100 0 0 0 ${utime} ${stime} 0 0 20 0 9 0 12345 1000000 100\n`,
      );
      if (schedstat) fs.writeFileSync(path.join(dir, 'schedstat'), schedstat);
    };
    thread(4000, 'qemu-system-x86', 'S', 150, 50, '2000000000 250000000 40\n');
    thread(4001, 'CPU 0/TCG', 'R', 6000, 25, '60250000000 7500000000 900\n');
    thread(4002, 'odd) name (', 'T', 1, 2);
    assert.deepEqual(
      procThreads(4000, proc),
      new Map([
        ['4000', { state: 'S', cpu: 2, waited: 0.25 }],
        ['4001', { state: 'R', cpu: 60.25, waited: 7.5 }],
        ['4002', { state: 'T', cpu: 0.03 }],
      ]),
    );
    assert.equal(procThreads(4999, proc), undefined, 'a process that is gone');
    const own = procThreads(process.pid);
    assert.ok(own && own.size >= 1 && [...own.values()].every((t) => t.cpu >= 0 && /^[A-Za-z]$/.test(t.state)), 'this process, from the real /proc');
  } finally {
    fs.rmSync(proc, { recursive: true, force: true });
  }
});

test('lastLogLine gives the last non-empty line without control characters', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-console-'));
  try {
    const file = path.join(dir, 'console.log');
    assert.equal(lastLogLine(file), undefined, 'no console yet');
    fs.writeFileSync(file, '');
    assert.equal(lastLogLine(file), undefined, 'an empty console');
    fs.writeFileSync(file, 'x'.repeat(10_000) + '\r\n[   22.5] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [\x1b[0mswapper/1:0]\r\n\r\n');
    assert.equal(lastLogLine(file), '[   22.5] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [[0mswapper/1:0]');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
