// The keys that bound what a guest can make tsvisor hold: `--netdev user`'s
// max-tcp, max-udp, tcp-idle, udp-idle, tcp-buffer, and virtio-net's ctrl-max.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { networkArgs, parseNetworkArgs, parseRunArgs } from '../../src/cli/run-options.js';
import { UsageError } from '../../src/cli/errors.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));

const userNet = (keys: string) => parseNetworkArgs([`user,id=u${keys}`], ['e1000,netdev=u']);
const limitsOf = (keys: string) => {
  const netdev = userNet(keys).netdevs[0]!;
  assert.equal(netdev.kind, 'user');
  return netdev.kind === 'user' ? netdev.user.limits : undefined;
};

test('user limit keys: parsed into the config, absent unless given, and written back by networkArgs', () => {
  assert.equal(limitsOf(''), undefined);
  assert.equal('limits' in userNet('').netdevs[0]!, false);
  assert.deepEqual(limitsOf(',max-tcp=64,max-udp=32,tcp-idle=600,udp-idle=30,tcp-buffer=128K'), {
    maxTcp: 64,
    maxUdp: 32,
    tcpIdle: 600,
    udpIdle: 30,
    tcpBuffer: 128 * 1024,
  });
  assert.deepEqual(limitsOf(',tcp-buffer=65536'), { tcpBuffer: 65536 });
  assert.deepEqual(limitsOf(',tcp-buffer=1m'), { tcpBuffer: 2 ** 20 });
  assert.deepEqual(limitsOf(',max-tcp=16384,max-udp=65536,tcp-idle=604800,tcp-buffer=64M'), {
    maxTcp: 16384,
    maxUdp: 65536,
    tcpIdle: 604800,
    tcpBuffer: 64 * 2 ** 20,
  });
  const network = userNet(',max-tcp=8,udp-idle=5,tcp-buffer=16K,hostfwd=tcp::2222-:22');
  assert.deepEqual(parseRunArgs(networkArgs(network)).network, network);
});

test('bad user limit values are usage errors naming the key and its range', () => {
  const cases: [string, RegExp][] = [
    ['max-tcp=0', /max-tcp=0 must be a whole number from 1 to 16384 connections/],
    ['max-tcp=16385', /max-tcp=16385 .* 1 to 16384/],
    ['max-tcp=many', /max-tcp=many/],
    ['max-tcp=1.5', /max-tcp=1.5/],
    ['max-tcp=', /max-tcp= must/],
    ['max-udp=65537', /max-udp=65537 .* 1 to 65536 flows/],
    ['max-udp=-1', /max-udp=-1/],
    ['tcp-idle=0', /tcp-idle=0 .* 1 to 604800 seconds/],
    ['udp-idle=1h', /udp-idle=1h .* seconds/],
    ['tcp-buffer=1K', /tcp-buffer=1K .* 16K to 64M bytes/],
    ['tcp-buffer=65M', /tcp-buffer=65M/],
    ['tcp-buffer=1G', /tcp-buffer=1G/],
    ['tcp-buffer=16KiB', /tcp-buffer=16KiB/],
    ['max-tcp=4,max-tcp=5', /max-tcp given twice/],
    ['max-tcpx=4', /unknown key "max-tcpx"/],
  ];
  for (const [keys, re] of cases)
    assert.throws(
      () => userNet(`,${keys}`),
      (e: Error) => e instanceof UsageError && re.test(e.message),
      keys,
    );
  assert.throws(() => parseNetworkArgs(['tap,id=t,max-tcp=4'], ['e1000,netdev=t']), /unknown key "max-tcp"/, 'limits are user keys only');
});

test('virtio-net ctrl-max: bytes with K or M, in range, written back by networkArgs; not an e1000 key', () => {
  const nic = (keys: string) => parseNetworkArgs(['user,id=u'], [`virtio-net-pci,netdev=u${keys}`]);
  assert.equal('ctrlMax' in nic('').nics[0]!, false);
  assert.equal(nic(',ctrl-max=4K').nics[0]!.ctrlMax, 4096);
  assert.equal(nic(',ctrl-max=16M').nics[0]!.ctrlMax, 16 * 2 ** 20);
  const network = nic(',ctrl-max=2048');
  assert.deepEqual(parseRunArgs(networkArgs(network)).network, network);
  for (const [keys, re] of [
    [',ctrl-max=1023', /ctrl-max=1023 must be a whole number from 1K to 16M bytes/],
    [',ctrl-max=17M', /ctrl-max=17M/],
    [',ctrl-max=lots', /ctrl-max=lots/],
  ] as const) {
    assert.throws(
      () => nic(keys),
      (e: Error) => e instanceof UsageError && re.test(e.message),
      keys,
    );
  }
  assert.throws(() => parseNetworkArgs(['user,id=u'], ['e1000,netdev=u,ctrl-max=4K']), /unknown key "ctrl-max"/);
});

test('a bad limit on the command line is one line on stderr and status 2', () => {
  const r = spawnSync(process.execPath, [BIN, 'run', '--netdev', 'user,id=u,max-udp=0', '--device', 'e1000,netdev=u'], {
    encoding: 'utf8',
    timeout: 30_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  assert.equal(r.status, 2, r.stderr);
  assert.deepEqual(r.stderr.trim().split('\n'), ['tsvisor: --netdev user: max-udp=0 must be a whole number from 1 to 65536 flows']);
});
