// Boots the default guest under tsvisor once per scenario and prints one
// `SCENARIO <json>` line each. It runs where /dev/kvm is hardware-backed: inside
// the nested KVM host here, directly on a machine with VT-x/AMD-V.
// usage: node boot-scenarios.js KERNEL INITRD [SCENARIO...]   (default: all)
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));
const [kernel, initrd, ...only] = process.argv.slice(2);

export interface Scenario {
  name: string;
  input: string;
  append?: string;
  cpus?: number;
  /** Send the console to a file (--serial file:PATH) instead of stdout. */
  serialFile?: boolean;
  stats?: boolean;
}

export interface ScenarioResult {
  name: string;
  status: number | null;
  console: string;
  /** What reached stdout (empty when the console went to a file). */
  stdout: string;
  stderr: string;
  seconds: number;
}

export const SCENARIOS: Scenario[] = [
  { name: 'command', cpus: 2, stats: true, input: 'uname -r\necho tsv-$((6*7))\nnproc\npoweroff\n' },
  { name: 'reboot', input: 'reboot\n', serialFile: true },
  { name: 'sysrq-panic', input: 'echo c > /proc/sysrq-trigger\n' },
  { name: 'early-panic', input: '', append: 'console=ttyS0 quiet panic=-1 rdinit=/no/such/init' },
];

function runScenario(s: Scenario): Promise<ScenarioResult> {
  const args = ['run', '--accel', 'kvm', '--kernel', kernel!, '--initrd', initrd!, '--memory', '512M', '--cpus', String(s.cpus ?? 1)];
  args.push('--append', s.append ?? 'console=ttyS0 quiet panic=-1');
  const consoleFile = path.join(os.tmpdir(), `${s.name}-console.log`);
  if (s.serialFile) args.push('--serial', `file:${consoleFile}`);
  if (s.stats) args.push('--stats');
  const t0 = Date.now();
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  child.stdin.end(s.input);
  const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
  return new Promise((resolve) =>
    child.on('close', (status) => {
      clearTimeout(timer);
      const console = s.serialFile ? fs.readFileSync(consoleFile, 'utf8') : out;
      resolve({ name: s.name, status, console, stdout: out, stderr: err, seconds: (Date.now() - t0) / 1000 });
    }),
  );
}

if (kernel && initrd) {
  for (const s of SCENARIOS.filter((s) => only.length === 0 || only.includes(s.name))) {
    process.stdout.write(`SCENARIO ${JSON.stringify(await runScenario(s))}\n`);
  }
}
