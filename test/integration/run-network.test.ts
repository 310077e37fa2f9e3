// `tsvisor run` with user-mode networking as a user types it: on this machine
// `--accel auto` picks the nested host, so a forwarded port crosses two hops (the
// nested host's own uplink, then tsvisor's hostfwd) and must still reach the guest.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { reportWatchdogLines } from '../support/nested-stalls.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));
const PAGE = 'served from the guest';
/** The run takes about a minute; past this the nested host is presumed wedged. */
const PATIENCE_MS = 300_000;

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Boots the default guest with a forwarded port, fetches from the guest's httpd, powers it off. */
async function attempt(port: number): Promise<{ status: number | null; page?: string; output: string }> {
  const args = [BIN, 'run', '--memory', '256M', '--netdev', `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:8080`, '--device', 'virtio-net-pci,netdev=n0'];
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let output = '';
  child.stderr.on('data', (d) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  const serving = new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), PATIENCE_MS);
    let typed = false;
    child.stdout.on('data', (d) => {
      output += d;
      // Typed at the prompt, as a user would.
      if (!typed && output.includes("Enter 'help'")) {
        typed = true;
        child.stdin.write(`mkdir -p /www && echo "${PAGE}" > /www/index.html && httpd -p 8080 -h /www && echo SERVING-$((1+1))\n`);
      }
      if (output.includes('SERVING-2')) {
        clearTimeout(timer);
        resolve(true);
      }
    });
  });
  if (!(await serving)) {
    child.kill('SIGTERM');
    return { status: await exited, output };
  }
  let page: string;
  try {
    page = await (await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(60_000) })).text();
  } catch (e) {
    page = `fetch failed: ${(e as Error).message}`;
  }
  child.stdin.end('poweroff\n');
  return { status: await exited, page, output };
}

test('run --netdev user,hostfwd=...: a host client reaches a server in the default guest', async () => {
  let r = await attempt(await freePort());
  if (r.page === undefined) {
    const stalls = reportWatchdogLines(r.output);
    console.log(
      `# run with hostfwd made no progress for 5 min (${stalls} nested host stalls reported; output tail: ${JSON.stringify(r.output.slice(-400))}); 1 retry in a fresh nested host`,
    );
    r = await attempt(await freePort());
  }
  assert.equal(r.page?.trim(), PAGE, r.output.slice(-3000));
  assert.equal(r.status, 0, r.output.slice(-3000));
});
