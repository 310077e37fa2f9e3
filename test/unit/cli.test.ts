import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { networkArgs, parseRunArgs, RUN_FLAGS, vhostUserArgs } from '../../src/cli/run-options.js';
import { parseSize } from '../../src/cli/size.js';
import { UsageError } from '../../src/cli/errors.js';
import { chooseAccel } from '../../src/vmm/accel.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));

test('sizes: suffixes, bare MiB, refusals', () => {
  assert.equal(parseSize('512M'), 512 * 2 ** 20);
  assert.equal(parseSize('2G'), 2 * 2 ** 30);
  assert.equal(parseSize('1.5G'), 1.5 * 2 ** 30);
  assert.equal(parseSize('256'), 256 * 2 ** 20);
  assert.equal(parseSize('64MiB'), 64 * 2 ** 20);
  for (const bad of ['', 'lots', '12X', '-5M', '0']) assert.throws(() => parseSize(bad), UsageError, bad);
});

test('run options: defaults and every flag', () => {
  const d = parseRunArgs([]);
  assert.equal(d.memory, 512 * 2 ** 20);
  assert.equal(d.cpus, 1);
  assert.deepEqual(d.serial, { kind: 'stdio' });
  assert.equal(d.accel, 'auto');
  assert.deepEqual([d.drives, d.rng, d.console, d.ioeventfd, d.irqfd], [[], false, 'serial', true, true]);
  const o = parseRunArgs([
    ...[
      '--kernel',
      'k',
      '--initrd',
      'i',
      '--append',
      'a b',
      '-m',
      '1G',
      '--cpus',
      '2',
      '--serial',
      'file:/tmp/x',
      '--accel',
      'kvm',
      '--stats',
      '--stats-json',
      '/tmp/s.json',
    ],
    ...['--drive', 'file=/a,,b.img,format=raw,if=virtio,readonly=on,serial=disk1,cache=none', '--drive', 'file=c.img'],
    ...['--device', 'virtio-rng', '--console', 'virtio', '--ioeventfd', 'off', '--irqfd', 'off'],
    ...['--netdev', 'user,id=u,net=192.168.5.0/24,hostfwd=tcp::2222-:22,hostfwd=tcp:127.0.0.1:8080-10.0.2.20:80', '--device', 'e1000,netdev=u'],
    ...[
      '--netdev',
      'tap,id=t,ifname=tap7,script=no,downscript=no,queues=2,vhost=on,vhostdev=/dev/vh',
      '--device',
      'virtio-net-pci,netdev=t,mac=52:54:00:00:00:07,queues=2',
    ],
  ]);
  const { network, ...rest } = o;
  assert.deepEqual(network.netdevs[0], {
    kind: 'user',
    id: 'u',
    user: {
      network: 0xc0a80500,
      prefixLength: 24,
      host: 0xc0a80502,
      dns: 0xc0a80503,
      dhcpStart: 0xc0a8050f,
      hostForwards: [
        { hostAddress: '', hostPort: 2222, guestAddress: undefined, guestPort: 22 },
        { hostAddress: '127.0.0.1', hostPort: 8080, guestAddress: 0x0a000214, guestPort: 80 },
      ],
    },
  });
  assert.deepEqual(network.netdevs[1], { kind: 'tap', id: 't', ifname: 'tap7', queues: 2, vhost: true, vhostdev: '/dev/vh' });
  assert.deepEqual(network.nics, [
    { model: 'e1000', netdev: 'u', mac: undefined, queues: undefined },
    { model: 'virtio-net', netdev: 't', mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, 7), queues: 2 },
  ]);
  assert.deepEqual(parseRunArgs(networkArgs(network)).network, network, 'networkArgs writes what parses back to the same');
  assert.deepEqual(
    { ...rest },
    {
      kernel: 'k',
      initrd: 'i',
      append: 'a b',
      memory: 2 ** 30,
      cpus: 2,
      serial: { kind: 'file', path: '/tmp/x' },
      accel: 'kvm',
      stats: true,
      statsJson: '/tmp/s.json',
      drives: [
        { file: '/a,b.img', readOnly: true, serial: 'disk1', cache: 'none' },
        { file: 'c.img', readOnly: false, serial: undefined, cache: 'writeback' },
      ],
      rng: true,
      vhostUser: [],
      console: 'virtio',
      ioeventfd: false,
      irqfd: false,
      help: false,
    },
  );
});

test('run options: vhost-user disks, and the arguments that parse back to them', () => {
  const o = parseRunArgs([
    '--cpus',
    '3',
    '--chardev',
    'socket,id=a,path=/run/a,,b.sock,reconnect=5',
    '--device',
    'vhost-user-blk-pci,chardev=a',
    '--chardev',
    'socket,id=b,path=/run/b.sock',
    '--device',
    'vhost-user-blk,chardev=b,num-queues=2',
    '--chardev',
    'socket,id=n,path=/run/n.sock',
    '--netdev',
    'vhost-user,id=vn,chardev=n',
    '--device',
    'virtio-net-pci,netdev=vn,mac=52:54:00:00:00:09',
    '--netdev',
    'user,id=u',
    '--device',
    'e1000,netdev=u',
  ]);
  assert.deepEqual(o.vhostUser, [
    { kind: 'vhost-user-blk', path: '/run/a,b.sock', reconnect: 5, queues: 3 },
    { kind: 'vhost-user-blk', path: '/run/b.sock', queues: 2 },
    { kind: 'vhost-user-net', path: '/run/n.sock', mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, 9) },
  ]);
  assert.deepEqual(
    o.network.nics.map((n) => n.model),
    ['e1000'],
    'the card on vhost-user is not a tsvisor back-end card',
  );
  assert.deepEqual(parseRunArgs(vhostUserArgs(o.vhostUser)).vhostUser, o.vhostUser);
});

test('run options: bad input is a UsageError naming the flag', () => {
  const cases: [string[], RegExp][] = [
    [['--memory', '12M'], /too small/],
    [['--memory', 'lots'], /not a size/],
    [['--memory', '1000G'], /more than/],
    [['--cpus', '0'], /--cpus/],
    [['--cpus', 'two'], /--cpus/],
    [['--serial', 'tcp:1'], /--serial/],
    [['--accel', 'tcg'], /--accel/],
    [['--initrd', 'x'], /needs --kernel/],
    [['--frobnicate'], /Unknown option/],
    [['--drive', 'format=raw'], /needs file=/],
    [['--drive', 'file=x,format=qcow2'], /format/],
    [['--drive', 'file=x,if=ide'], /if/],
    [['--drive', 'file=x,readonly=yes'], /readonly/],
    [['--drive', 'file=x,cache=directsync'], /cache/],
    [['--drive', 'file=x,bogus=1'], /unknown key "bogus"/],
    [['--drive', 'file=x,serial=twenty-one-characters'], /serial/],
    [['--drive', 'file'], /not key=value/],
    [['--device', 'sound-blaster'], /unknown device/],
    [['--device', 'e1000'], /needs netdev=ID/],
    [['--device', 'e1000,netdev=x'], /no --netdev with id=x/],
    [['--netdev', 'user,id=a'], /not used by any --device/],
    [['--netdev', 'user,id=a', '--netdev', 'user,id=a', '--device', 'e1000,netdev=a'], /given twice/],
    [['--netdev', 'user,id=a', '--device', 'e1000,netdev=a', '--device', 'virtio-net-pci,netdev=a'], /used by two devices/],
    [['--netdev', 'vde,id=a'], /user, tap or bridge/],
    [['--netdev', 'user'], /needs id=/],
    [['--netdev', 'user,id=a,net=10.0.2.0/30', '--device', 'e1000,netdev=a'], /prefix/],
    [['--netdev', 'user,id=a,host=192.168.1.1', '--device', 'e1000,netdev=a'], /outside/],
    [['--netdev', 'user,id=a,hostfwd=udp::53-:53', '--device', 'e1000,netdev=a'], /hostfwd/],
    [['--netdev', 'user,id=a,smb=/tmp', '--device', 'e1000,netdev=a'], /unknown key "smb"/],
    [['--netdev', 'tap,id=a,script=/etc/qemu-ifup', '--device', 'e1000,netdev=a'], /runs no scripts/],
    [['--netdev', 'tap,id=a,queues=2', '--device', 'e1000,netdev=a'], /one queue/],
    [['--netdev', 'tap,id=a,queues=99', '--device', 'virtio-net-pci,netdev=a'], /queues/],
    [['--netdev', 'tap,id=a,vhost=yes', '--device', 'virtio-net-pci,netdev=a'], /vhost=yes must be on or off/],
    [['--netdev', 'tap,id=a,vhostdev=/dev/x', '--device', 'virtio-net-pci,netdev=a'], /vhostdev= goes with vhost=on/],
    [['--netdev', 'tap,id=a,vhost=on', '--device', 'e1000,netdev=a'], /virtio-net-pci only/],
    [['--netdev', 'bridge,id=a', '--device', 'e1000,netdev=a'], /br=NAME/],
    [['--netdev', 'user,id=a', '--device', 'virtio-net-pci,netdev=a,mac=ff:ff:ff:ff:ff:ff'], /unicast/],
    [['--chardev', 'pipe,id=c'], /must be socket/],
    [['--chardev', 'socket,id=c'], /path=SOCKET/],
    [['--chardev', 'socket,id=c,path=/s,server=on', '--device', 'vhost-user-blk-pci,chardev=c'], /server=on is not supported/],
    [['--chardev', 'socket,id=c,path=/s,reconnect=0', '--device', 'vhost-user-blk-pci,chardev=c'], /reconnect=0/],
    [['--chardev', 'socket,id=c,path=/s'], /not used by any --device/],
    [['--device', 'vhost-user-blk-pci'], /needs chardev=ID/],
    [['--device', 'vhost-user-blk-pci,chardev=x'], /no --chardev with id=x/],
    [['--chardev', 'socket,id=c,path=/s', '--device', 'vhost-user-blk-pci,chardev=c,num-queues=0'], /num-queues=0/],
    [['--chardev', 'socket,id=c,path=/s', '--device', 'vhost-user-blk-pci,chardev=c', '--device', 'vhost-user-blk-pci,chardev=c'], /used by two devices/],
    [['--chardev', 'socket,id=c,path=/s', '--netdev', 'vhost-user,id=v,chardev=c', '--device', 'e1000,netdev=v'], /virtio-net-pci only/],
    [['--chardev', 'socket,id=c,path=/s', '--netdev', 'vhost-user,id=v,chardev=c'], /not used by any --device/],
    [['--netdev', 'vhost-user,id=v,chardev=x', '--device', 'virtio-net-pci,netdev=v'], /no --chardev with id=x/],
    [['--console', 'tty'], /--console/],
    [['--ioeventfd', 'maybe'], /--ioeventfd/],
    [['extra'], /positional/i],
  ];
  for (const [args, re] of cases)
    assert.throws(
      () => parseRunArgs(args),
      (e: Error) => e instanceof UsageError && re.test(e.message),
      args.join(' '),
    );
});

test('accel auto: hardware KVM directly, nested host for PVM, software or no KVM', () => {
  assert.equal(chooseAccel('auto', 'hardware').accel, 'kvm');
  assert.equal(chooseAccel('auto', 'pvm').accel, 'nested');
  assert.equal(chooseAccel('auto', 'software').accel, 'nested');
  assert.equal(chooseAccel('auto', 'none').accel, 'nested');
  assert.equal(chooseAccel('kvm', 'none').accel, 'kvm');
});

function tsvisor(...args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] });
}

test('bad input ends with one clear line and a non-zero status, never a stack trace', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-cli-'));
  const notKernel = path.join(dir, 'not-a-kernel');
  fs.writeFileSync(notKernel, 'just text\n'.repeat(1000));
  const unreadable = path.join(dir, 'dir-not-file');
  fs.mkdirSync(unreadable);
  const cases: [string[], number, RegExp][] = [
    [['run', '--kernel', path.join(dir, 'missing')], 1, /kernel .*missing does not exist/],
    [['run', '--kernel', unreadable], 1, /is a directory/],
    [['run', '--kernel', notKernel, '--accel', 'kvm'], 1, /not a bzImage/],
    [['run', '--memory', '12M'], 2, /too small/],
    [['run', '--memory', 'much'], 2, /not a size/],
    [['run', '--bogus'], 2, /Unknown option '--bogus'/],
    [['launch'], 2, /unknown command "launch"/],
    [['nested', 'true'], 2, /needs a command after --/],
    [['run', '--drive', `file=${path.join(dir, 'no-disk.img')}`], 1, /drive .*no-disk.img does not exist/],
    [['run', '--drive', `file=${unreadable}`], 1, /drive .* is not a file/],
    [['run', '--drive', 'file=x.img,if=scsi'], 2, /--drive if "scsi" must be virtio/],
    [['run', '--device', 'e1000e'], 2, /unknown device/],
    [
      ['run', '--netdev', 'tap,id=t,ifname=tsv-no-priv', '--device', 'e1000,netdev=t', '--kernel', notKernel, '--accel', 'kvm'],
      1,
      /tap tsv-no-priv|not a bzImage/,
    ],
    [['nested', '--writable', path.join(dir, 'nope'), '--', 'true'], 2, /--writable .* is not a directory/],
  ];
  for (const [args, status, re] of cases) {
    const r = tsvisor(...args);
    assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, `${args.join(' ')} printed: ${r.stderr}`);
    assert.match(lines[0]!, re);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  }
  fs.rmSync(dir, { recursive: true });
});

test('help lists every run flag', () => {
  const r = tsvisor('--help');
  assert.equal(r.status, 0);
  for (const flag of Object.keys(RUN_FLAGS).filter((f) => f !== 'help')) assert.ok(r.stdout.includes(`--${flag}`), flag);
});
