// `tsvisor run --device vhost-user-blk-pci` end to end in the nested KVM host: a
// real Linux guest's virtio_blk driver on two disks whose data planes live in
// other processes, tsvisor's own back-end (`tsvisor vhost-user-blk`, two queues)
// and qemu-storage-daemon. What the guest writes must be in each back-end's file;
// what the files held must be what the guest reads; the requests never pass
// through tsvisor's VMM (no notify exits).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

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

test('run --device vhost-user-blk-pci: a Linux guest reads and writes disks served by tsvisor vhost-user-blk and by qemu-storage-daemon', () => {
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
for i in $(seq 200); do [ -S $S/ours.sock ] && [ -S $S/qsd.sock ] && break; sleep 0.1; done
node ${BIN} run --accel kvm --memory 256M --cpus 2 \\
  --chardev socket,id=c0,path=$S/ours.sock --device vhost-user-blk-pci,chardev=c0,num-queues=2 \\
  --chardev socket,id=c1,path=$S/qsd.sock --device vhost-user-blk-pci,chardev=c1,num-queues=1 \\
  --stats-json ${dir}/stats.json <guest-input >guest.out 2>run.err
echo "run-exit=$?"
kill -TERM $OURS; wait $OURS; echo "ours-exit=$?"
kill -TERM $QSD; wait $QSD
`,
    );
    const r = spawnSync(process.execPath, [BIN, 'nested', '--writable', dir, '--', 'sh', path.join(dir, 'run.sh')], { encoding: 'utf8', timeout: 300_000 });
    const read = (f: string) => (fs.existsSync(path.join(dir, f)) ? fs.readFileSync(path.join(dir, f), 'utf8') : '');
    const context = `${r.stdout}\n${r.stderr}\nrun.err:\n${read('run.err')}\nours.log:\n${read('ours.log')}\nqsd.log:\n${read('qsd.log')}\nguest:\n${read('guest.out').slice(-3000)}`;
    assert.match(r.stdout, /run-exit=0/, context);
    assert.match(r.stdout, /ours-exit=0/, context);
    const guest = read('guest.out');
    assert.match(guest, /GUEST-DONE-2/, context);
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
    const stats = JSON.parse(read('stats.json')) as { virtio: Record<string, Record<string, number>> };
    for (const name of ['vhost-user-blk0', 'vhost-user-blk1']) {
      const s = stats.virtio[name];
      assert.ok(s, `${name} in --stats-json: ${JSON.stringify(stats.virtio)}`);
      assert.equal(s.connected, 1, name);
      assert.equal(s.disconnects, 0, name);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
