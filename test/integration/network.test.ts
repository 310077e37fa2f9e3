// Networking with the guest's own drivers (virtio_net, e1000): user-mode
// networking, taps, a bridge with two guests, and multi-queue. The guests, the
// taps and bridges, and the servers they reach all live in one nested KVM host
// (or on this machine with hardware KVM); each scenario removes what it made.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { test } from 'node:test';
import type { ScenarioResult } from '../support/boot-scenarios.js';
import { blob, GUEST_PAGE, HELLO, NET_SCENARIOS, TEST_NAME_ADDRESS } from '../support/net-scenarios.js';
import { useScenarios } from '../support/scenario-host.js';

const result = useScenarios(NET_SCENARIOS.map((s) => s.name));

function ok(name: string): ScenarioResult {
  const r = result(name);
  assert.equal(r.setupError, undefined, r.setupError);
  assert.equal(r.status, 0, `${name}: ${r.stderr.slice(-3000)}\n${r.console.slice(-3000)}`);
  return r;
}

/** One card's line from --stats: `nic NAME (MODEL on BACKEND): ...` and its detail line. */
function nicStats(r: ScenarioResult, model: string): { line: string; detail: Record<string, number> } {
  const lines = r.stderr.split('\n');
  const i = lines.findIndex((l) => l.includes(`nic `) && l.includes(`(${model} on`));
  assert.ok(i >= 0, `no stats for ${model}: ${r.stderr}`);
  const detail = Object.fromEntries(
    lines[i + 1]!.trim()
      .split(' ')
      .map((kv) => kv.split('='))
      .map(([k, v]) => [k!, Number(v)]),
  );
  return { line: lines[i]!, detail };
}

test('user-mode networking: a DHCP lease, ping to the gateway, DNS through 10.0.2.3, HTTP to a host server', () => {
  const r = ok('net-user');
  assert.ok(r.console.includes('LEASE-2'), r.console.slice(-3000));
  assert.match(r.console, /nameserver 10\.0\.2\.3/);
  assert.match(r.console, /udhcpc: eth0 has 10\.0\.2\.15\/24 via 10\.0\.2\.2/);
  assert.ok(r.console.includes('PING-2'));
  assert.match(r.console, /64 bytes from 10\.0\.2\.2/);
  assert.ok(r.console.includes(`Address: ${TEST_NAME_ADDRESS}`), 'the name resolved through the host-side resolver');
  assert.ok(r.console.includes(HELLO) && r.console.includes('HTTP-2'));
});

test('user-mode networking: a host client reaches a server in the guest through hostfwd', () => {
  const r = ok('net-user');
  assert.equal(r.fetched?.trim(), GUEST_PAGE);
});

test('per-card accounting: exits, kicks, interrupts, packets and bytes both ways', () => {
  const r = ok('net-user');
  const { line, detail } = nicStats(r, 'virtio-net');
  assert.match(
    line,
    /\(virtio-net on user\): exits mmio-reads=\d+ mmio-writes=\d+ pio-reads=0 pio-writes=0 kicks=[1-9]\d* interrupts=[1-9]\d* tx=[1-9]\d*\/\d+B rx=[1-9]\d*\/\d+B/,
  );
  assert.equal(detail.notifyExits, 0, 'with ioeventfd no kick exits');
  assert.ok(detail['backend.acks']! >= 1 && detail['backend.tcpOpened']! >= 2);
});

const md5 = crypto.createHash('md5').update(blob()).digest('hex');

test('tap: an e1000 and a virtio-net card each reach the host over their own tap, bytes intact', () => {
  const r = ok('net-tap');
  assert.match(r.console, /e1000=0x8086:0x100e virtio=52:54:00:12:34:57/);
  assert.ok(r.console.includes('E1000-PING-2') && r.console.includes('VIRTIO-PING-2'), r.console.slice(-3000));
  assert.ok(r.console.includes(`e1000-md5 ${md5}`), r.console.slice(-2000));
  assert.ok(r.console.includes(`virtio-md5 ${md5}`), r.console.slice(-2000));
  const e1000 = nicStats(r, 'e1000');
  assert.match(e1000.line, /on tap tsvtap0\): exits mmio-reads=[1-9]\d* mmio-writes=[1-9]\d*/);
  assert.ok(e1000.detail.tdtWrites! > 100, 'e1000 transmits by writing TDT, one exit each');
  assert.ok(e1000.detail.rxBytes! > 1 << 20, 'the e1000 carried its download');
  const virtio = nicStats(r, 'virtio-net');
  assert.ok(virtio.detail.rxBytes! > 1 << 20, 'virtio-net carried its download');
});

test('bridge: two guests, one with e1000 and one with virtio-net, reach the host and each other', () => {
  for (const name of ['net-bridge-a', 'net-bridge-b']) {
    const r = ok(name);
    assert.ok(r.console.includes('HOST-PING-2'), `${name}: ${r.console.slice(-3000)}`);
    assert.ok(r.console.includes('PEER-PING-2'), `${name}: ${r.console.slice(-3000)}`);
    assert.ok(r.console.includes(HELLO));
    assert.match(r.stderr, /on bridge tsvbr0 \(tap tsvtap\d+\)/);
  }
});

test("multi-queue: two queue pairs in the guest's sysfs, and packets on both pairs each way", () => {
  const r = ok('net-multiqueue');
  assert.match(r.console, /queues: rx-0 rx-1 tx-0 tx-1/);
  assert.ok(r.console.includes('MQ-DONE-2'), r.console.slice(-3000));
  const { detail } = nicStats(r, 'virtio-net');
  assert.equal(detail.activePairs, 2);
  for (const key of ['pair0.tx', 'pair1.tx', 'pair0.rx', 'pair1.rx']) assert.ok(detail[key]! > 0, `${key}: ${JSON.stringify(detail)}`);
});

test('vhost-net: two queue pairs in the host kernel carry pings and downloads, bytes intact, before and after a reset; no packet passes through tsvisor', () => {
  const r = ok('net-vhost');
  assert.match(r.console, /queues: rx-0 rx-1 tx-0 tx-1/);
  assert.ok(r.console.includes('VHOST-PING-2'), r.console.slice(-3000));
  assert.ok(r.console.includes('VHOST-REBOUND-2'), `the card works again after the driver reset it: ${r.console.slice(-3000)}`);
  assert.equal(r.console.split(`vhost-md5 ${md5}`).length - 1, 2, r.console.slice(-2000));
  const { line, detail } = nicStats(r, 'virtio-net');
  assert.match(line, /tx=0\/0B rx=0\/0B/, 'tsvisor moved no packet');
  assert.equal(detail.vhostPairs, 2);
  assert.ok(detail['vhost.rxBytes']! > 2_000_000, `the kernel carried both downloads: ${JSON.stringify(detail)}`);
  assert.ok(detail['vhost.txPackets']! > 0);
  assert.ok(detail.ctrlCommands! >= 1, 'the control queue is served by tsvisor');
  assert.equal(detail.needsReset, 0);
});
