// QEMU 7.2 as the front-end of `tsvisor vhost-user-net`: the guest's own
// virtio_net driver, its rings served by tsvisor's VirtioNet class in the daemon,
// which puts the packets on user-mode networking. The guest leases an address
// from the daemon's DHCP server and downloads a file from an HTTP server this
// test runs on loopback; the bytes must arrive intact. QEMU runs under TCG (no
// /dev/kvm is needed).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DEFAULT_GUEST_CMDLINE, defaultGuest, USERSPACE_BANNER } from '../../src/guest/default-guest.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));

/** Resolves once `text()` matches `re`, or fails after `ms`. */
async function waitFor(what: string, text: () => string, re: RegExp, ms: number): Promise<RegExpMatchArray> {
  for (const end = Date.now() + ms; Date.now() < end;) {
    const m = text().match(re);
    if (m) return m;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}:\n${text().slice(-3000)}`);
}

test('QEMU -netdev vhost-user against tsvisor vhost-user-net: DHCP from its user-mode network, a 4 MiB download arrives intact', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-vhost-user-net-'));
  const socket = path.join(dir, 'net.sock');
  const blob = randomBytes(4 << 20);
  const server = http.createServer((_req, res) => res.end(blob));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const daemon = spawn(process.execPath, [BIN, 'vhost-user-net', '--socket', socket, '--netdev', 'user,id=n0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  daemon.stderr!.on('data', (d) => (log += d));
  const daemonExit = new Promise<number | null>((r) => daemon.on('exit', r));
  try {
    await waitFor('the daemon to listen', () => log, /serving user networking/, 30_000);
    const guest = defaultGuest();
    // -device ...,vectors=0: QEMU 7.2 under TCG crashes (SIGSEGV in msix_set_vector_notifiers,
    // from vhost_net_start) when a vhost-user net card uses MSI-X; INTx avoids that path.
    const qemu = spawn(
      'qemu-system-x86_64',
      [
        ...['-accel', 'tcg', '-m', '256', '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot'],
        ...['-object', 'memory-backend-memfd,id=mem,size=256M,share=on', '-numa', 'node,memdev=mem'],
        ...['-chardev', `socket,id=c0,path=${socket}`, '-netdev', 'vhost-user,id=n0,chardev=c0', '-device', 'virtio-net-pci,netdev=n0,romfile=,vectors=0'],
        ...['-kernel', guest.kernel, '-initrd', guest.initrd, '-append', DEFAULT_GUEST_CMDLINE],
      ],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let out = '';
    qemu.stdout!.on('data', (d) => (out += d));
    qemu.stderr!.on('data', (d) => (out += d));
    const qemuExit = new Promise<number | null>((r) => qemu.on('exit', r));
    await waitFor('the guest userspace', () => out, new RegExp(USERSPACE_BANNER), 120_000);
    qemu.stdin!.write(`udhcpc -i eth0 -q -n -t 10 >/dev/null && echo "LEASE=$(ip -4 -o addr show eth0 | awk '{print $4}')"\n`);
    assert.equal((await waitFor('a DHCP lease', () => out, /LEASE=([\d./]+)\r?\n/, 60_000))[1], '10.0.2.15/24');
    qemu.stdin!.write(`echo "SUM=$(wget -q -O - http://10.0.2.2:${port}/blob | md5sum | cut -c1-32)"\n`);
    const sum = (await waitFor('the download', () => out, /SUM=([0-9a-f]{32})\r?\n/, 180_000))[1];
    assert.equal(sum, createHash('md5').update(blob).digest('hex'), 'the guest got the same bytes');
    qemu.stdin!.end('poweroff -f\n');
    assert.equal(await qemuExit, 0, out.slice(-2000));
    await waitFor('the daemon to see the client go', () => log, /client 1: disconnected: the front-end hung up/, 10_000);
    assert.doesNotMatch(log, /device failed|bad message|refused|internal error/);
    daemon.kill('SIGTERM');
    assert.equal(await daemonExit, 0, log);
    assert.ok(!fs.existsSync(socket), 'the socket is removed');
  } finally {
    daemon.kill('SIGKILL');
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
