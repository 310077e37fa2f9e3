// `tsvisor vhost-user-blk` as the back-end of QEMU's vhost-user-blk-pci, QEMU
// being the front-end (TCG: no KVM needed) and the default guest's own virtio_blk
// driver the one issuing requests. What the image holds is what the guest reads;
// what the guest writes (flushed, direct, synced) is in the image; two request
// queues both carry requests; a front-end killed mid-I/O takes only its own session
// with it and the next front-end is served; SIGTERM ends the daemon cleanly. One
// daemon (two queues) serves every test of this file, in order.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { defaultGuest, USERSPACE_BANNER, type GuestImage } from '../../src/guest/default-guest.js';

const BIN = fileURLToPath(new URL('../../../bin/tsvisor.js', import.meta.url));
const QEMU = 'qemu-system-x86_64';
const MiB = 2 ** 20;
const DISK_SIZE = 64 * MiB;
const SECTORS = DISK_SIZE / 512;
/** A TCG boot takes 5-10 s; these allow for a loaded machine. */
const BOOT_MS = 180_000;
const COMMAND_MS = 120_000;
const TEST_MS = 10 * 60_000;

/** Deterministic bytes (xorshift32 words) that differ at every offset: a misplaced block shows. */
function pattern(size: number, seed: number): Buffer {
  const words = new Uint32Array(size / 4);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  return Buffer.from(words.buffer);
}

/** What `yes LINE | head -c SIZE` prints. */
function yes(line: string, size: number): Buffer {
  return Buffer.alloc(size, `${line}\n`);
}

function md5(b: Uint8Array): string {
  return createHash('md5').update(b).digest('hex');
}

/** Equal bytes, or a failure naming the first offset that differs (not a 64 MiB diff). */
function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  if (actual.equals(expected)) return;
  let i = 0;
  while (i < Math.min(actual.length, expected.length) && actual[i] === expected[i]) i++;
  const around = (b: Buffer) => b.subarray(i, i + 16).toString('hex');
  assert.fail(
    `${what}: ${actual.length} bytes (expected ${expected.length}); first difference at byte ${i} (sector ${i >> 9}): ${around(actual)} != ${around(expected)}`,
  );
}

/** The bytes `od -An -tx1 -v` printed. */
function odBytes(out: string): Buffer {
  return Buffer.from(out.replace(/\s+/g, ''), 'hex');
}

/** Field 16 of /sys/block/vda/stat (Linux ≥ 5.5): flush requests completed. */
function flushes(stat: string): number {
  const fields = stat.trim().split(/\s+/).map(Number);
  assert.ok(fields.length >= 17, `/sys/block/vda/stat: ${stat}`);
  return fields[15]!;
}

/** Completions per request queue of the virtio-blk device, from /proc/interrupts (summed over CPUs). */
function queueInterrupts(text: string): number[] {
  const counts: number[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*\d+:((?:\s+\d+)+)\s.*virtio\d+-req\.(\d+)\s*$/.exec(line);
    if (m)
      counts[Number(m[2])] = m[1]!
        .trim()
        .split(/\s+/)
        .map(Number)
        .reduce((a, b) => a + b, 0);
  }
  return counts;
}

/** A child's output as it comes, waited on by pattern. */
class Output {
  text = '';
  ended = false;
  private readonly listeners = new Set<() => void>();

  constructor(private readonly context: () => string) {}

  add(chunk: string): void {
    this.text += chunk.replace(/\r/g, '');
    for (const l of [...this.listeners]) l();
  }

  end(): void {
    this.ended = true;
    for (const l of [...this.listeners]) l();
  }

  /** Calls `cb` (once) when `re` matches the output past `from`; returns the way to stop watching. */
  onMatch(re: RegExp, from: number, cb: (m: RegExpExecArray) => void): () => void {
    const check = () => {
      const m = re.exec(this.text.slice(from));
      if (!m) return;
      this.listeners.delete(check);
      cb(m);
    };
    this.listeners.add(check);
    check();
    return () => this.listeners.delete(check);
  }

  /** The first match of `re` in the output past `from`; fails when `ms` pass or the child ends first. */
  waitFor(re: RegExp, ms: number, what: string, from = 0): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      const check = () => {
        const m = re.exec(this.text.slice(from));
        if (m) {
          done();
          resolve(m);
        } else if (this.ended) {
          done();
          reject(new Error(`${what}: the process ended first\n${this.context()}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${what}: not within ${ms / 1000} s\n${this.context()}`));
      }, ms);
      this.listeners.add(check);
      check();
    });
  }
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

function exitOf(child: ChildProcess): Promise<Exit> {
  // 'close': the child has exited and its output has all been read.
  return new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms / 1000} s`)), ms))),
  ]);
}

/** `tsvisor vhost-user-blk`, run as users run it. */
class Daemon {
  readonly child: ChildProcess;
  readonly log: Output;
  readonly exited: Promise<Exit>;

  constructor(
    readonly socket: string,
    drive: string,
  ) {
    this.child = spawn(process.execPath, [BIN, 'vhost-user-blk', '--socket', socket, '--drive', drive], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.log = new Output(() => `daemon log:\n${this.log.text}`);
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => this.log.add(s));
    this.exited = exitOf(this.child);
    void this.exited.then(() => this.log.end());
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Waits until every client that connected has been logged as gone. */
  async idle(): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const connected = this.log.text.match(/client \d+: connected/g)?.length ?? 0;
      const gone = this.log.text.match(/client \d+: disconnected/g)?.length ?? 0;
      if (connected === gone) return;
      assert.ok(Date.now() < deadline, `the daemon still has ${connected - gone} client(s) after 30 s\n${this.log.text}`);
      await this.log.waitFor(/disconnected/, 1000, 'a client to go', this.log.text.length).catch(() => {});
    }
  }
}

/** Daemon log lines that say something went wrong on its side. */
const DAEMON_TROUBLE = /^.*(device failed|internal error|bad message|refused).*$/m;

const running = new Set<Guest>();

/** QEMU with the default guest and one vhost-user-blk-pci disk, its serial console on stdio. */
class Guest {
  readonly qemu: ChildProcess;
  readonly console: Output;
  stderr = '';
  readonly exited: Promise<Exit>;
  private seq = 0;

  private constructor(image: GuestImage, socket: string, opts: { cpus: number; queues?: number }) {
    const queues = opts.queues === undefined ? '' : `,num-queues=${opts.queues}`;
    // The vhost-user back-end maps guest memory, so it must be a shared fd. The device keeps
    // QEMU's defaults (queue-size=128 rings, as users get them) but for num-queues.
    const args = [
      ...['-accel', 'tcg', '-smp', String(opts.cpus), '-m', '256'],
      ...['-object', 'memory-backend-memfd,id=mem,size=256M,share=on', '-numa', 'node,memdev=mem'],
      ...['-chardev', `socket,id=c0,path=${socket}`, '-device', `vhost-user-blk-pci,chardev=c0${queues}`],
      ...['-kernel', image.kernel, '-initrd', image.initrd, '-append', image.cmdline],
      ...['-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot'],
    ];
    this.qemu = spawn(QEMU, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.console = new Output(() => this.context());
    this.qemu.stdout!.setEncoding('utf8').on('data', (s: string) => this.console.add(s));
    this.qemu.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
    // A write racing QEMU's death is not the test's concern.
    this.qemu.stdin!.on('error', () => {});
    this.exited = exitOf(this.qemu);
    void this.exited.then(() => {
      this.console.end();
      running.delete(this);
    });
    running.add(this);
  }

  static async boot(image: GuestImage, socket: string, opts: { cpus: number; queues?: number }): Promise<Guest> {
    const g = new Guest(image, socket, opts);
    const banner = await g.console.waitFor(new RegExp(USERSPACE_BANNER), BOOT_MS, 'the guest boots');
    await g.console.waitFor(/\n\/ # /, COMMAND_MS, 'the shell prompt', banner.index);
    return g;
  }

  context(): string {
    return `QEMU stderr:\n${this.stderr}\nconsole (tail):\n${this.console.text.slice(-4000)}\n${daemon?.log.text ? `daemon log:\n${daemon.log.text}` : ''}`;
  }

  send(line: string): void {
    this.qemu.stdin!.write(`${line}\n`);
  }

  /** The console's next match of `re`; a device the daemon reports failed (the guest's requests would hang) ends the wait at once. */
  async expect(re: RegExp, ms: number, what: string, from = this.console.text.length): Promise<RegExpExecArray> {
    let stop = () => {};
    const trouble = new Promise<never>((_, reject) => {
      const d = daemon;
      if (d) stop = d.log.onMatch(DAEMON_TROUBLE, d.log.text.length, (t) => reject(new Error(`${what}: the daemon says "${t[0]}"\n${this.context()}`)));
    });
    try {
      return await Promise.race([this.console.waitFor(re, ms, what, from), trouble]);
    } finally {
      stop();
    }
  }

  /**
   * Runs `cmd` in the guest's shell; its output and exit status come between
   * markers the shell computes, so the console's echo of the line never matches.
   */
  async run(cmd: string, ms = COMMAND_MS): Promise<{ out: string; rc: number }> {
    const id = ++this.seq;
    const from = this.console.text.length;
    this.send(`echo "[b$((${id}))]"; ${cmd}; echo "[e$((${id})) rc=$?]"`);
    const m = await this.expect(new RegExp(`\\[b${id}\\]\\n([\\s\\S]*?)\\[e${id} rc=(\\d+)\\]\\n`), ms, `guest command ${JSON.stringify(cmd)}`, from);
    return { out: m[1]!, rc: Number(m[2]) };
  }

  /** run(), which must succeed; its output. */
  async sh(cmd: string, ms = COMMAND_MS): Promise<string> {
    const r = await this.run(cmd, ms);
    assert.equal(r.rc, 0, `guest command ${JSON.stringify(cmd)} failed:\n${r.out}\n${this.context()}`);
    return r.out;
  }

  /** Powers the guest off; QEMU must exit 0. */
  async poweroff(): Promise<void> {
    this.send('poweroff -f');
    const e = await within(this.exited, COMMAND_MS, 'QEMU exits after poweroff');
    assert.deepEqual(e, { code: 0, signal: null }, this.context());
  }

  kill(): void {
    if (this.qemu.exitCode === null && this.qemu.signalCode === null) this.qemu.kill('SIGKILL');
  }
}

let dir: string;
let img: string;
let guestImage: GuestImage;
let daemon: Daemon | undefined;

/** Puts a fresh pattern in the image (no client has it open): each test starts from known bytes. */
function freshImage(seed: number): Buffer {
  const bytes = pattern(DISK_SIZE, seed);
  fs.writeFileSync(img, bytes);
  return bytes;
}

before(async () => {
  const q = spawnSync(QEMU, ['--version'], { encoding: 'utf8' });
  assert.equal(q.status, 0, `${QEMU} is needed (Debian: apt-get install qemu-system-x86): ${q.error?.message ?? q.stderr}`);
  guestImage = defaultGuest(() => {});
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-vhost-user-qemu-'));
  img = path.join(dir, 'disk.img');
  freshImage(1);
  daemon = new Daemon(path.join(dir, 'blk.sock'), `file=${img},num-queues=2`);
  await daemon.log.waitFor(/serving .* on /, 60_000, 'the daemon listens');
  assert.ok(fs.statSync(daemon.socket).isSocket());
});

after(() => {
  for (const g of running) g.kill();
  if (daemon?.alive) daemon.child.kill('SIGKILL');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function theDaemon(): Daemon {
  assert.ok(daemon?.alive, `the daemon is not running\n${daemon?.log.text ?? ''}`);
  return daemon;
}

test(
  'QEMU vhost-user-blk-pci, one queue: the guest reads the image, and what it writes (fsync, O_DIRECT, sync) lands in it',
  { timeout: TEST_MS },
  async () => {
    const d = theDaemon();
    await d.idle();
    const expected = freshImage(0x5eed);
    const g = await Guest.boot(guestImage, d.socket, { cpus: 1 });
    try {
      // The daemon offers two queues; QEMU (one vCPU) asks for one and the guest sees one.
      assert.deepEqual((await g.sh('cat /sys/block/vda/size; ls /sys/block/vda/mq | wc -l; cat /sys/block/vda/queue/write_cache')).trim().split('\n'), [
        String(SECTORS),
        '1',
        'write back',
      ]);

      // Reads: one sector byte for byte, then the first, a middle and the last blocks by digest.
      const sector = odBytes(await g.sh('dd if=/dev/vda bs=512 skip=777 count=1 2>/dev/null | od -An -tx1 -v'));
      assertSameBytes(sector, expected.subarray(777 * 512, 778 * 512), 'sector 777 as the guest read it');
      const sums = await g.sh(
        [
          'dd if=/dev/vda bs=4096 count=1 2>/dev/null | md5sum',
          'dd if=/dev/vda bs=65536 skip=528 count=16 2>/dev/null | md5sum',
          `dd if=/dev/vda bs=4096 skip=${DISK_SIZE / 4096 - 1} count=1 2>/dev/null | md5sum`,
        ].join('; '),
      );
      assert.deepEqual(
        sums
          .split('\n')
          .filter(Boolean)
          .map((l) => l.slice(0, 32)),
        [md5(expected.subarray(0, 4096)), md5(expected.subarray(33 * MiB, 34 * MiB)), md5(expected.subarray(DISK_SIZE - 4096))],
      );

      // What the guest will write, made in its tmpfs.
      const w1 = yes('tsvisor-vhost-user-42', MiB);
      const w2 = yes('odd-sectors-42', 1024);
      const w3 = yes('last-sector-42', 512);
      const w4 = yes('synced-42', 65536);
      await g.sh(
        [
          'yes tsvisor-vhost-user-$((6*7)) | head -c 1048576 >/tmp/w1',
          'yes odd-sectors-$((6*7)) | head -c 1024 >/tmp/w2',
          'yes last-sector-$((6*7)) | head -c 512 >/tmp/w3',
          'yes synced-$((6*7)) | head -c 65536 >/tmp/w4',
          'md5sum /tmp/w1',
        ].join('; '),
      );
      const fileNow = (at: number, n: number) => {
        const b = Buffer.alloc(n);
        const fd = fs.openSync(img, 'r');
        try {
          fs.readSync(fd, b, 0, n, at);
        } finally {
          fs.closeSync(fd);
        }
        return b;
      };

      // 1 MiB through the page cache, then fsync: a flush request completes and the bytes are in the file while QEMU still runs.
      const before = flushes(await g.sh('cat /sys/block/vda/stat'));
      await g.sh('dd if=/tmp/w1 of=/dev/vda bs=65536 seek=160 conv=fsync 2>/dev/null');
      const afterFsync = flushes(await g.sh('cat /sys/block/vda/stat'));
      assert.ok(afterFsync > before, `fsync sent a flush (flushes ${before} -> ${afterFsync})`);
      w1.copy(expected, 10 * MiB);
      assertSameBytes(fileNow(10 * MiB, MiB), w1, 'the fsync-ed MiB in the file');

      // O_DIRECT 512-byte requests: two sectors across a 4 KiB boundary, and the last sector.
      await g.sh(
        `dd if=/tmp/w2 of=/dev/vda bs=512 seek=4103 oflag=direct 2>/dev/null && dd if=/tmp/w3 of=/dev/vda bs=512 seek=${SECTORS - 1} oflag=direct 2>/dev/null`,
      );
      w2.copy(expected, 4103 * 512);
      w3.copy(expected, DISK_SIZE - 512);
      assertSameBytes(fileNow(4103 * 512, 1024), w2, 'the direct writes across a page boundary in the file');
      assertSameBytes(fileNow(DISK_SIZE - 512, 512), w3, 'the last sector in the file');

      // Through the page cache, then sync.
      await g.sh('dd if=/tmp/w4 of=/dev/vda bs=4096 seek=5000 2>/dev/null; sync');
      w4.copy(expected, 5000 * 4096);
      assertSameBytes(fileNow(5000 * 4096, w4.length), w4, 'the synced 64 KiB in the file');

      // The device gives back what was written (O_DIRECT: not the guest's page cache).
      const back = await g.sh(
        [
          'dd if=/dev/vda bs=65536 skip=160 count=16 iflag=direct 2>/dev/null | md5sum',
          'dd if=/dev/vda bs=512 skip=4103 count=2 iflag=direct 2>/dev/null | md5sum',
          `dd if=/dev/vda bs=512 skip=${SECTORS - 1} count=1 iflag=direct 2>/dev/null | md5sum`,
          'dd if=/dev/vda bs=4096 skip=5000 count=16 iflag=direct 2>/dev/null | md5sum',
        ].join('; '),
      );
      assert.deepEqual(
        back
          .split('\n')
          .filter(Boolean)
          .map((l) => l.slice(0, 32)),
        [w1, w2, w3, w4].map(md5),
      );
      assert.doesNotMatch(await g.sh('dmesg'), /I\/O error|blk_update_request|virtio_blk.*error/i);
      await g.poweroff();
    } finally {
      g.kill();
    }
    assertSameBytes(fs.readFileSync(img), expected, 'the image after QEMU exited');
  },
);

test('QEMU vhost-user-blk-pci, two queues on two vCPUs: both queues carry requests and the image ends up right', { timeout: TEST_MS }, async () => {
  const d = theDaemon();
  await d.idle();
  const expected = freshImage(0x2222);
  const g = await Guest.boot(guestImage, d.socket, { cpus: 2, queues: 2 });
  try {
    assert.deepEqual((await g.sh('ls /sys/block/vda/mq')).trim().split(/\s+/), ['0', '1']);
    const cpus = (await g.sh('cat /sys/block/vda/mq/0/cpu_list /sys/block/vda/mq/1/cpu_list')).trim().split('\n');
    assert.equal(cpus.length, 2, `each queue has CPUs: ${cpus.join(' | ')}`);
    // The CPU a process runs on picks the queue its requests go to.
    const [cpuA, cpuB] = cpus.map((l) => l.split(/[,\s-]/)[0]!);
    const irqBefore = queueInterrupts(await g.sh('cat /proc/interrupts'));
    assert.equal(irqBefore.length, 2, `two request queue vectors: ${JSON.stringify(irqBefore)}`);

    const a = yes('queue-zero-42', 2 * MiB);
    const b = yes('queue-one-42', 2 * MiB);
    await g.sh('yes queue-zero-$((6*7)) | head -c 2097152 >/tmp/a; yes queue-one-$((6*7)) | head -c 2097152 >/tmp/b');
    // Writes at once from both CPUs, then each reads what the other wrote and a 16 MiB span of the original.
    const writes = await g.sh(
      `(taskset -c ${cpuA} dd if=/tmp/a of=/dev/vda bs=65536 seek=320 oflag=direct 2>/dev/null; echo "qa=$?") & ` +
        `(taskset -c ${cpuB} dd if=/tmp/b of=/dev/vda bs=65536 seek=400 oflag=direct 2>/dev/null; echo "qb=$?") & wait`,
    );
    assert.match(writes, /qa=0/);
    assert.match(writes, /qb=0/);
    a.copy(expected, 20 * MiB);
    b.copy(expected, 25 * MiB);
    const reads = await g.sh(
      `(taskset -c ${cpuA} sh -c 'dd if=/dev/vda bs=65536 skip=400 count=32 iflag=direct 2>/dev/null | md5sum; dd if=/dev/vda bs=65536 skip=512 count=256 iflag=direct 2>/dev/null | md5sum' >/tmp/ra) & ` +
        `(taskset -c ${cpuB} sh -c 'dd if=/dev/vda bs=65536 skip=320 count=32 iflag=direct 2>/dev/null | md5sum; dd if=/dev/vda bs=65536 skip=768 count=256 iflag=direct 2>/dev/null | md5sum' >/tmp/rb) & ` +
        'wait; cat /tmp/ra /tmp/rb',
    );
    assert.deepEqual(
      reads
        .split('\n')
        .filter(Boolean)
        .map((l) => l.slice(0, 32)),
      [md5(b), md5(expected.subarray(32 * MiB, 48 * MiB)), md5(a), md5(expected.subarray(48 * MiB, 64 * MiB))],
    );
    const irqAfter = queueInterrupts(await g.sh('cat /proc/interrupts'));
    for (const q of [0, 1])
      assert.ok(irqAfter[q]! > irqBefore[q]!, `queue ${q} completed requests: interrupts ${JSON.stringify(irqBefore)} -> ${JSON.stringify(irqAfter)}`);
    // And a flush with both queues up.
    await g.sh('dd if=/tmp/a of=/dev/vda bs=65536 seek=900 count=4 conv=fsync 2>/dev/null');
    a.copy(expected, 900 * 65536, 0, 4 * 65536);
    assert.doesNotMatch(await g.sh('dmesg'), /I\/O error|blk_update_request|virtio_blk.*error/i);
    await g.poweroff();
  } finally {
    g.kill();
  }
  assertSameBytes(fs.readFileSync(img), expected, 'the image after QEMU exited');
});

test('QEMU killed with SIGKILL mid-I/O: the daemon stays up, logs the client gone, and serves the next QEMU', { timeout: TEST_MS }, async () => {
  const d = theDaemon();
  await d.idle();
  const expected = freshImage(0x3333);
  const logFrom = d.log.text.length;
  const k = yes('killed-mid-io-42', MiB);
  const g = await Guest.boot(guestImage, d.socket, { cpus: 2, queues: 2 });
  let client: string;
  try {
    client = (await d.log.waitFor(/client (\d+): connected/, 10_000, 'the daemon logs the client', logFrom))[1]!;
    await g.sh('yes killed-mid-io-$((6*7)) | head -c 1048576 >/tmp/k');
    // Reads on one CPU and rewrites of the same MiB on the other, without end; it is killed after three rounds.
    g.send(
      '(while :; do dd if=/dev/vda of=/dev/null bs=65536 skip=512 count=128 iflag=direct 2>/dev/null; done) & ' +
        'i=0; while :; do i=$((i+1)); dd if=/tmp/k of=/dev/vda bs=65536 seek=240 oflag=direct 2>/dev/null; echo "io-round-$i rc=$?"; done',
    );
    await g.expect(/io-round-3 rc=0/, COMMAND_MS, 'three rounds of I/O');
    g.qemu.kill('SIGKILL');
    assert.deepEqual(await within(g.exited, 30_000, 'QEMU dies'), { code: null, signal: 'SIGKILL' });
  } finally {
    g.kill();
  }
  await d.log.waitFor(new RegExp(`client ${client}: disconnected: the front-end hung up`), 30_000, 'the daemon logs the client gone', logFrom);
  assert.ok(d.alive, `the daemon lives on\n${d.log.text}`);
  assert.ok(fs.statSync(d.socket).isSocket(), 'the socket is still there');
  // Every round wrote the same bytes to the same place, so the MiB is whole whatever the kill cut short.
  k.copy(expected, 15 * MiB);
  assertSameBytes(fs.readFileSync(img), expected, 'the image after the kill');

  // The next front-end gets a working disk from the same daemon.
  const logAgain = d.log.text.length;
  const g2 = await Guest.boot(guestImage, d.socket, { cpus: 1 });
  try {
    const next = (await d.log.waitFor(/client (\d+): connected/, 10_000, 'the daemon logs the next client', logAgain))[1]!;
    assert.equal(Number(next), Number(client) + 1);
    const sums = await g2.sh('dd if=/dev/vda bs=65536 skip=240 count=16 2>/dev/null | md5sum; dd if=/dev/vda bs=65536 skip=512 count=16 2>/dev/null | md5sum');
    assert.deepEqual(
      sums
        .split('\n')
        .filter(Boolean)
        .map((l) => l.slice(0, 32)),
      [md5(k), md5(expected.subarray(32 * MiB, 33 * MiB))],
    );
    await g2.sh('yes after-the-kill-$((6*7)) | head -c 65536 | dd of=/dev/vda bs=4096 seek=7 conv=fsync 2>/dev/null');
    yes('after-the-kill-42', 65536).copy(expected, 7 * 4096);
    await g2.poweroff();
  } finally {
    g2.kill();
  }
  assertSameBytes(fs.readFileSync(img), expected, 'the image after the second QEMU exited');
});

test('SIGTERM: the daemon exits 0 and removes its socket; its log shows no errors', { timeout: TEST_MS }, async () => {
  const d = theDaemon();
  await d.idle();
  d.child.kill('SIGTERM');
  const e = await within(d.exited, 30_000, 'the daemon exits on SIGTERM');
  assert.deepEqual(e, { code: 0, signal: null }, d.log.text);
  assert.equal(fs.existsSync(d.socket), false, 'the socket is gone');
  assert.match(d.log.text, /SIGTERM: finishing in-flight requests/);
  const lines = d.log.text.trim().split('\n');
  const unexpected = lines.filter(
    (l) =>
      !/^tsvisor vhost-user-blk: (serving .* on .*|client \d+: connected|client \d+: disconnected: the front-end hung up|SIGTERM: finishing in-flight requests)$/.test(
        l,
      ),
  );
  assert.deepEqual(unexpected, [], d.log.text);
  assert.equal(lines.filter((l) => /: connected$/.test(l)).length, 4, 'one client per QEMU run');
});
