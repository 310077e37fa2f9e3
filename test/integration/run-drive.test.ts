// `tsvisor run --drive` end to end, as a user types it: on this machine `--accel
// auto` picks the nested host, and the drive must still be the user's own file,
// written in place.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { reportWatchdogLines } from '../support/nested-stalls.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));

test('run --drive: what the guest writes to /dev/vda lands in the host file; a read-only second drive stays untouched', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-drive-'));
  try {
    const disk = path.join(dir, 'disk.img');
    const ro = path.join(dir, 'ro.img');
    fs.writeFileSync(disk, Buffer.alloc(32 * 2 ** 20));
    fs.writeFileSync(ro, Buffer.alloc(2 ** 20, 0x33));
    const input = [
      'echo tsvisor-drive-marker-$((6*7)) | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null',
      'echo "vdb=$(head -c 4 /dev/vdb | hexdump -e \'4/1 "%02x"\')"',
      'poweroff',
      '',
    ].join('\n');
    const args = [BIN, 'run', '--memory', '256M', '--drive', `file=${disk},format=raw,if=virtio`, '--drive', `file=${ro},readonly=on`];
    // The run takes under a minute. The nested host (TCG) has, rarely, stopped making
    // progress altogether; a run that reports nothing in 5 minutes gets one fresh try.
    let r = spawnSync(process.execPath, args, { input, encoding: 'utf8', timeout: 300_000 });
    if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT') {
      const stalls = reportWatchdogLines(r.stderr);
      console.log(`# run --drive made no progress for 5 min (${stalls} nested host stalls reported); 1 retry in a fresh nested host`);
      fs.writeFileSync(disk, Buffer.alloc(32 * 2 ** 20));
      r = spawnSync(process.execPath, args, { input, encoding: 'utf8', timeout: 300_000 });
    }
    assert.equal(r.status, 0, r.stderr + r.stdout.slice(-3000));
    assert.match(r.stdout, /vdb=33333333/, 'the read-only drive reads the host file');
    const head = fs.readFileSync(disk).subarray(0, 512);
    assert.equal(head.subarray(0, 26).toString(), 'tsvisor-drive-marker-42\n\0\0');
    assert.ok(fs.readFileSync(ro).every((b) => b === 0x33));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
