// Boots Debian's kernel under tsvisor with real drivers and a real shell. All
// scenarios share one nested KVM host (or run directly on hardware KVM).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { USERSPACE_BANNER } from '../../src/guest/default-guest.js';
import { BOOT_SCENARIOS, type ScenarioResult } from '../support/boot-scenarios.js';
import { scenarioDir, useScenarios } from '../support/scenario-host.js';

const results = useScenarios(BOOT_SCENARIOS.map((s) => s.name));
const result = (name: string): ScenarioResult => results(name);

test('the default guest reaches userspace, answers typed commands on the serial console, and poweroff exits 0', () => {
  const r = result('command');
  assert.equal(r.status, 0, r.stderr + r.console.slice(-3000));
  assert.ok(r.console.includes(USERSPACE_BANNER), r.console.slice(-3000));
  assert.match(r.console, /\n6\.\d+\.\d+-\d+-amd64\r?\n/);
  assert.ok(r.console.includes('tsv-42'), 'the shell evaluated the command');
  assert.match(r.console, /\n2\r?\n/, 'nproc sees both vCPUs');
  assert.ok(r.console.includes('reboot: Power down'));
});

test('--stats counts exits per vCPU and accesses per device', () => {
  const r = result('command');
  assert.match(r.stderr, /vcpu0 exits: io=\d+/);
  assert.match(r.stderr, /vcpu1 exits: /);
  assert.match(r.stderr, /pio serial0: reads=[1-9]\d* writes=[1-9]\d*/);
  assert.match(r.stderr, /pio acpi-pm1-cnt: reads=\d+ writes=[1-9]/);
  assert.match(r.stderr, /pio unclaimed: reads=\d+ writes=\d+/);
  assert.match(r.stderr, /serial0: txBytes=[1-9]\d* rxBytes=[1-9]/);
});

test('reboot inside the guest resets through the i8042 and exits 0; --serial file: holds the whole console', () => {
  const r = result('reboot');
  assert.equal(r.status, 0, r.stderr + r.console.slice(-3000));
  assert.ok(r.console.includes(USERSPACE_BANNER), 'the console file has the boot');
  assert.ok(r.console.includes('reboot: Restarting system'), r.console.slice(-2000));
  assert.equal(r.stdout, '', 'nothing went to stdout');
});

test('a kernel panic from the running guest ends the VM with status 3 and the panic on the console (pvpanic)', () => {
  const r = result('sysrq-panic');
  assert.equal(r.status, 3, r.stderr + r.console.slice(-3000));
  assert.ok(r.console.includes('Kernel panic - not syncing'), r.console.slice(-2000));
  assert.match(r.stderr, /guest ended: panic \(pvpanic\)/);
});

test('a kernel that panics while booting exits 3 with the panic text', () => {
  const r = result('early-panic');
  assert.equal(r.status, 3, r.stderr + r.console.slice(-3000));
  assert.ok(r.console.includes('Kernel panic - not syncing'), r.console.slice(-2000));
});

/** A file's bytes out of an ext2 image, read on the host with e2fsprogs' debugfs. */
function debugfsCat(image: string, file: string): string {
  const r = spawnSync('debugfs', ['-R', `cat ${file}`, image], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

test("virtio: the guest's stock drivers bind every device, with the right IDs on PCI and on the virtio bus", () => {
  const r = result('virtio-devices');
  assert.equal(r.status, 0, r.stderr + r.console.slice(-3000));
  // virtio device IDs: 2 block (twice), 4 entropy, 3 console.
  assert.equal((r.console.match(/vdev 0x0002 virtio_blk/g) ?? []).length, 2, r.console.slice(-4000));
  assert.match(r.console, /vdev 0x0004 virtio_rng/);
  assert.match(r.console, /vdev 0x0003 virtio_console/);
  assert.match(r.console, /pci 0x1b36:0x0008 class=0x060000/);
  assert.match(r.console, /pci 0x1af4:0x1042 class=0x010000/);
  assert.match(r.console, /pci 0x1af4:0x1044 class=0x00ff00/);
  assert.match(r.console, /pci 0x1af4:0x1043 class=0x078000/);
  assert.match(r.console, /serial=tsv-data/);
  assert.match(r.console, /hwrng=4096/);
});

test('virtio-console: the shell runs on hvc0 and its output reaches stdout', () => {
  const r = result('virtio-devices');
  assert.match(r.console, /\/dev\/hvc0/);
  assert.ok(r.console.includes(USERSPACE_BANNER));
});

test('virtio-blk: a filesystem the guest made and filled is in the host file, readable by debugfs and clean for e2fsck', () => {
  const r = result('virtio-devices');
  assert.ok(r.console.includes('FS-2'), r.console.slice(-3000));
  const image = path.join(scenarioDir, 'data.img');
  assert.equal(debugfsCat(image, '/hello.txt'), 'hello from the guest\n');
  const numbers = Array.from({ length: 20000 }, (_, i) => `${i + 1}\n`).join('');
  assert.equal(debugfsCat(image, '/numbers.txt'), numbers);
  const fsck = spawnSync('e2fsck', ['-fn', image], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
});

test('virtio-blk: a read-only drive refuses writes in the guest and its file is untouched', () => {
  const r = result('virtio-devices');
  assert.match(r.console, /ro=1/);
  assert.match(r.console, /ro-write-status=1/);
  const ro = fs.readFileSync(path.join(scenarioDir, 'ro.img'));
  assert.ok(ro.every((b) => b === 0));
});

/** The `--stats` counters of one virtio device, by name. */
function virtioStats(stderr: string, name: string): Record<string, number> {
  const line = new RegExp(`^  ${name}: (.*)$`, 'm').exec(stderr);
  assert.ok(line, stderr);
  return Object.fromEntries(
    line[1]!
      .split(' ')
      .map((kv) => kv.split('='))
      .map(([k, v]) => [k, Number(v)]),
  );
}

test('virtio: with ioeventfd and irqfd, kicks reach the device worker and its interrupts reach KVM with no VMM thread in between', () => {
  const blk = virtioStats(result('virtio-devices').stderr, 'virtio-blk0');
  assert.equal(blk.notifyExits, 0, 'no kick exited');
  assert.ok(blk.kicks! > 100, 'kicks came through the ioeventfd');
  assert.ok(blk.calls! > 100, 'the worker signalled completions');
  assert.ok(blk.interruptsMsix! < 10, `the transport raised almost none itself (${blk.interruptsMsix}): the call fds were irqfds`);
});

test('virtio-blk: data the guest synced survives tsvisor being killed with SIGKILL', () => {
  const r = result('crash');
  assert.equal(r.signal, 'SIGKILL', r.stderr + r.console.slice(-3000));
  const pattern = Array.from({ length: 100000 }, (_, i) => `${100000 + i}\n`).join('');
  const image = fs.readFileSync(path.join(scenarioDir, 'crash.img'));
  assert.equal(image.subarray(0, pattern.length).toString(), pattern);
});

test('virtio-blk: with two vCPUs and two queues, readers pinned to each vCPU both finish, each on its own queue', () => {
  const r = result('two-queues');
  assert.equal(r.status, 0, r.stderr + r.console.slice(-3000));
  assert.match(r.console, /mq-dirs: 0 1 /);
  assert.ok(r.console.includes('CPU0-DONE') && r.console.includes('CPU1-DONE'), r.console.slice(-3000));
  // Per queue, the interrupts each vCPU took: both queues completed requests.
  const queues = [...r.console.matchAll(/^\s*\d+:\s+(\d+)\s+(\d+)\s.*virtio0-req\.(\d+)\s*$/gm)].map((m) => ({
    queue: Number(m[3]),
    interrupts: Number(m[1]) + Number(m[2]),
  }));
  assert.deepEqual(
    queues.map((q) => q.queue),
    [0, 1],
    r.console.slice(-2000),
  );
  for (const q of queues) assert.ok(q.interrupts > 100, `queue ${q.queue} took ${q.interrupts} interrupts`);
  const blk = virtioStats(r.stderr, 'virtio-blk0');
  assert.equal(blk.queues, 2);
  assert.ok(blk.reads! >= 8192);
});

test('pci: with MSI off in the guest, a virtio disk works over INTx through the IOAPIC (level-triggered, GSI from _PRT)', () => {
  const r = result('crash');
  assert.match(r.console, /IO-APIC\s+17-fasteoi\s+virtio0/, r.console.slice(-2000));
});

test('virtio-blk: a request past the end of the image fails with an I/O error in the guest, and tsvisor goes on', () => {
  const r = result('out-of-range');
  assert.equal(r.status, 0, r.stderr + r.console.slice(-3000));
  assert.ok(r.console.includes('READ-2'));
  assert.match(r.console, /I\/O error/);
  assert.match(r.console, /oor-status=1/);
  assert.ok(r.console.includes('alive-42'), 'the guest carried on');
  assert.match(r.stderr, /ioErrors=[1-9]/);
});

test('virtio: with ioeventfd and irqfd off, every kick is an exit and interrupts still arrive', () => {
  const blk = virtioStats(result('out-of-range').stderr, 'virtio-blk0');
  assert.ok(blk.notifyExits! > 10);
  assert.ok(blk.kicks! <= blk.notifyExits!, 'every kick the worker saw came from an exit');
  assert.ok(blk.interruptsMsix! > 10, "the transport raised the worker's calls itself");
});
