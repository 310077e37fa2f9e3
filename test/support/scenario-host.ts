// Runs a test file's boot scenarios (boot-scenarios.ts) in one shared nested KVM
// host, or directly on hardware KVM, before the file's tests; each test then
// reads its scenario's result.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { defaultGuest } from '../../src/guest/default-guest.js';
import { WATCHDOG_LINES } from '../../src/nested/watchdog.js';
import { kvmBacking } from '../../src/vmm/accel.js';
import { SCENARIO_TIMEOUT_MS, type ScenarioResult } from './boot-scenarios.js';
import { isWatchdogLine } from './nested-stalls.js';
import { killOnSilence } from './silence.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));
const SCENARIO_SCRIPT = fileURLToPath(new URL('./boot-scenarios.js', import.meta.url));

/** Host directory for the scenarios' disk images, shared writable with the nested host. */
export const scenarioDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-it-'));
after(() => fs.rmSync(scenarioDir, { recursive: true, force: true }));

/** Scenarios that already ran past their time once. */
const timedOutOnce = new Set<string>();

/** No scenario takes this long; past it the nested host is presumed wedged. */
const STALL_MS = 8 * 60_000;
const ATTEMPTS = 3;

/**
 * Runs the named scenarios in one host, storing each result as it is reported,
 * and ends the host if none arrives for STALL_MS. The nested host's watchdog lines
 * are shown as they come and its stalls counted: retries must not hide them.
 */
function runScenarios(
  kernel: string,
  initrd: string,
  names: string[],
  results: Map<string, ScenarioResult>,
): Promise<{ stderr: string; stalled: boolean; hostStalls: number }> {
  const script = [SCENARIO_SCRIPT, kernel, initrd, ...names];
  const [cmd, args] =
    kvmBacking() === 'hardware'
      ? [process.execPath, script]
      : [process.execPath, [BIN, 'nested', '--writable', scenarioDir, '--', process.execPath, ...script]];
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TSVISOR_TEST_DIR: scenarioDir } });
  let stderr = '';
  let hostStalls = 0;
  const silence = killOnSilence(child, STALL_MS);
  readline.createInterface({ input: child.stderr }).on('line', (line) => {
    stderr += line + '\n';
    if (!isWatchdogLine(line)) return;
    console.log(`# ${line}`);
    if (line.startsWith(WATCHDOG_LINES.stalled)) hostStalls++;
  });
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    if (!line.startsWith('SCENARIO ')) return;
    const s = JSON.parse(line.slice(9)) as ScenarioResult;
    silence.arm();
    // A guest that hung is given one more boot (in a fresh host); a second hang is a failure.
    if (s.timedOut && !timedOutOnce.has(s.name)) {
      timedOutOnce.add(s.name);
      console.log(`# scenario ${s.name} ran past ${SCENARIO_TIMEOUT_MS / 60000} min (console tail: ${JSON.stringify(s.console.slice(-300))}); it runs again`);
      return;
    }
    results.set(s.name, s);
  });
  return new Promise((resolve) =>
    child.on('close', () => {
      silence.stop();
      resolve({ stderr, stalled: silence.stalled, hostStalls });
    }),
  );
}

/** Boots `names` before the file's tests; returns the lookup tests use. */
export function useScenarios(names: string[]): (name: string) => ScenarioResult {
  const results = new Map<string, ScenarioResult>();
  before(async () => {
    const guest = defaultGuest(() => {});
    let stalls = 0;
    let retries = 0;
    // The nested host runs under TCG and has, rarely, stopped making progress on a
    // loaded machine; the scenarios it had not reported then run in a fresh one.
    for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
      const missing = names.filter((n) => !results.has(n));
      if (missing.length === 0) break;
      if (attempt > 1) retries++;
      const r = await runScenarios(guest.kernel, guest.initrd, missing, results);
      stalls += r.hostStalls;
      const left = missing.filter((n) => !results.has(n));
      if (r.stalled) console.log(`# nested host made no progress for ${STALL_MS / 60000} min (attempt ${attempt}); restarting it for: ${left.join(', ')}`);
      else if (results.size === 0) throw new Error(`no scenario ran: ${r.stderr.slice(-2000)}`);
    }
    const host = kvmBacking() === 'hardware' ? 'hardware KVM' : 'nested host';
    console.log(`# ${host}: ${stalls} stall${stalls === 1 ? '' : 's'}, ${retries} ${retries === 1 ? 'retry' : 'retries'}`);
  });
  return (name) => {
    const r = results.get(name);
    assert.ok(r, `scenario ${name} did not report`);
    return r;
  };
}
