// `tsvisor run` with vhost-user devices end to end in the nested KVM host: a real
// Linux guest's virtio_blk driver on two disks whose data planes live in other
// processes, tsvisor's own back-end (`tsvisor vhost-user-blk`, two queues) and
// qemu-storage-daemon, and its virtio_net driver on a card served by `tsvisor
// vhost-user-net`. What the guest writes must be in each back-end's file; what
// the files held must be what the guest reads; a download over the card must
// arrive intact.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { MachineStats } from '../../src/vmm/machine.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));

/** The same pattern a file starts with and the guest checks: byte i is (i * 13 + seed) & 0xff. */
function pattern(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 13 + seed) & 0xff;
  return b;
}

function md5(b: Buffer): string {
  return spawnSync('md5sum', { input: b, encoding: 'utf8' }).stdout.split(' ')[0]!;
}

test('run with vhost-user: a Linux guest reads and writes disks served by tsvisor vhost-user-blk and qemu-storage-daemon, and downloads over a card served by tsvisor vhost-user-net', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-vhost-user-'));
  try {
    const ours = path.join(dir, 'ours.img');
    const qsd = path.join(dir, 'qsd.img');
    fs.writeFileSync(ours, pattern(24 * 2 ** 20, 1));
    fs.writeFileSync(qsd, pattern(16 * 2 ** 20, 2));
    const expected = { ours: md5(pattern(4096, 1)), qsd: md5(pattern(4096, 2)) };
    // Disks in PCI order: the default guest's scratch disk (vda), then the two vhost-user disks.
    fs.writeFileSync(
      path.join(dir, 'guest-input'),
      [
        'for d in vdb vdc; do echo "$d size=$(cat /sys/block/$d/size) queues=$(ls /sys/block/$d/mq | wc -l) head=$(head -c 4096 /dev/$d | md5sum | cut -c1-32)"; done',
        'echo vhost-user-marker-b-$((6*7)) | dd of=/dev/vdb bs=4096 seek=3 conv=sync,fsync 2>/dev/null',
        'echo vhost-user-marker-c-$((6*7)) | dd of=/dev/vdc bs=4096 seek=5 conv=sync,fsync 2>/dev/null',
        // The only card is on vhost-user: eth0, served by tsvisor vhost-user-net's user-mode network.
        'udhcpc -i eth0 -q -n -t 10 >/dev/null && echo "LEASE=$(ip -4 -o addr show eth0 | awk \'{print $4}\')"',
        'echo "NET-SUM=$(wget -q -O - http://10.0.2.2:8123/ | md5sum | cut -c1-32)"',
        'echo GUEST-DONE-$((1+1))',
        'poweroff',
        '',
      ].join('\n'),
    );
    fs.writeFileSync(
      path.join(dir, 'run.sh'),
      // Sockets cannot live on the nested host's 9p shares: they go to its tmpfs.
      `set -u
cd ${dir}
S=/run/tsvisor-vhost-user
mkdir -p $S
node ${BIN} vhost-user-blk --socket $S/ours.sock --drive file=${ours},num-queues=2 2>ours.log &
OURS=$!
qemu-storage-daemon --blockdev driver=file,node-name=f0,filename=${qsd} \\
  --export type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$S/qsd.sock,writable=on 2>qsd.log &
QSD=$!
node ${BIN} vhost-user-net --socket $S/net.sock --netdev user,id=u0 2>net.log &
NET=$!
node -e 'require("http").createServer((q, r) => r.end(Buffer.alloc(2 << 20, 7))).listen(8123, "127.0.0.1")' &
HTTP=$!
for i in $(seq 200); do [ -S $S/ours.sock ] && [ -S $S/qsd.sock ] && [ -S $S/net.sock ] && break; sleep 0.1; done
node ${BIN} run --accel kvm --memory 256M --cpus 2 \\
  --chardev socket,id=c0,path=$S/ours.sock --device vhost-user-blk-pci,chardev=c0,num-queues=2 \\
  --chardev socket,id=c1,path=$S/qsd.sock --device vhost-user-blk-pci,chardev=c1,num-queues=1 \\
  --chardev socket,id=c2,path=$S/net.sock --netdev vhost-user,id=vn,chardev=c2 --device virtio-net-pci,netdev=vn \\
  --stats-json ${dir}/stats.json <guest-input >guest.out 2>run.err
echo "run-exit=$?"
kill -TERM $OURS; wait $OURS; echo "ours-exit=$?"
kill -TERM $QSD; wait $QSD
kill -TERM $NET; wait $NET; echo "net-exit=$?"
kill $HTTP
`,
    );
    const r = spawnSync(process.execPath, [BIN, 'nested', '--writable', dir, '--', 'sh', path.join(dir, 'run.sh')], { encoding: 'utf8', timeout: 300_000 });
    const read = (f: string) => (fs.existsSync(path.join(dir, f)) ? fs.readFileSync(path.join(dir, f), 'utf8') : '');
    const context = `${r.stdout}\n${r.stderr}\nrun.err:\n${read('run.err')}\nours.log:\n${read('ours.log')}\nqsd.log:\n${read('qsd.log')}\nnet.log:\n${read('net.log')}\nguest:\n${read('guest.out').slice(-3000)}`;
    assert.match(r.stdout, /run-exit=0/, context);
    assert.match(r.stdout, /ours-exit=0/, context);
    assert.match(r.stdout, /net-exit=0/, context);
    const guest = read('guest.out');
    assert.match(guest, /GUEST-DONE-2/, context);
    assert.match(guest, /LEASE=10\.0\.2\.15\/24/, context);
    assert.match(guest, new RegExp(`NET-SUM=${md5(Buffer.alloc(2 << 20, 7))}`), context);
    assert.match(guest, new RegExp(`vdb size=${(24 * 2 ** 20) / 512} queues=2 head=${expected.ours}`), context);
    assert.match(guest, new RegExp(`vdc size=${(16 * 2 ** 20) / 512} queues=1 head=${expected.qsd}`), context);
    assert.equal(
      fs
        .readFileSync(ours)
        .subarray(3 * 4096, 3 * 4096 + 25)
        .toString(),
      'vhost-user-marker-b-42\n\0\0',
    );
    assert.equal(
      fs
        .readFileSync(qsd)
        .subarray(5 * 4096, 5 * 4096 + 25)
        .toString(),
      'vhost-user-marker-c-42\n\0\0',
    );
    // The rest of each file is as it was.
    assert.deepEqual(fs.readFileSync(ours).subarray(4 * 4096), pattern(24 * 2 ** 20, 1).subarray(4 * 4096));
    const stats = JSON.parse(read('stats.json')) as MachineStats;
    // The disks are virtio devices; the card is counted with the cards, its back-end named.
    const card = stats.nics.find((n) => n.name === 'vhost-user-net0');
    assert.ok(card, `vhost-user-net0 in --stats-json: ${JSON.stringify(stats.nics)}`);
    assert.match(card.backend, /^vhost-user \/run\/tsvisor-vhost-user\/net\.sock$/);
    for (const [name, s] of [...['vhost-user-blk0', 'vhost-user-blk1'].map((n) => [n, stats.virtio[n]] as const), ['vhost-user-net0', card.detail] as const]) {
      assert.ok(s, `${name} in --stats-json: ${JSON.stringify(stats.virtio)}`);
      assert.equal(s.connected, 1, name);
      assert.equal(s.disconnects, 0, name);
      assert.equal(s.notifyExits, 0, `${name}: kicks went to the back-end, not through exits`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
