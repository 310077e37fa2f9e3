// The cache's layers: the writable cache (TSVISOR_CACHE) first, then the read-only
// ones (TSVISOR_CACHE_RO, the host's cache inside the nested host), which are never written.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { cacheDir, cacheRelative, fetchKernel, fetchPackage, findCached, readOnlyCacheDirs } from '../../src/guest/debian.js';
import { buildInitramfs, initramfsFileName, type InitramfsSpec } from '../../src/guest/initramfs.js';
import { indexModules, resolveModules } from '../../src/guest/kernel-modules.js';
import { nestedCacheEnv } from '../../src/nested/nested-host.js';

const KERNEL_PACKAGE = 'linux-image-9.9.9-1-amd64';
const KERNEL_VERSION = '9.9.9-1-amd64';
const saved = { cache: process.env.TSVISOR_CACHE, ro: process.env.TSVISOR_CACHE_RO };
let dir: string;
let rw: string;
let ro: string;

/** Every path under `root` with its mode, size, mtime and content hash. */
function snapshot(root: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      const st = fs.lstatSync(p);
      const sum = e.isFile() ? crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex') : '';
      out.push(`${path.relative(root, p)} ${st.mode} ${st.size} ${st.mtimeMs} ${sum}`);
      if (e.isDirectory()) walk(p);
    }
  };
  walk(root);
  return out;
}

/** An unpacked package in `layer`, as fetchPackage leaves it, with busybox and two modules. */
function fakePackages(layer: string): void {
  const kernel = path.join(layer, 'debian', KERNEL_PACKAGE);
  const mods = path.join(kernel, 'lib', 'modules', KERNEL_VERSION, 'kernel', 'drivers');
  fs.mkdirSync(mods, { recursive: true });
  fs.mkdirSync(path.join(kernel, 'boot'));
  fs.writeFileSync(path.join(kernel, 'boot', `vmlinuz-${KERNEL_VERSION}`), 'not a kernel');
  fs.writeFileSync(path.join(mods, 'virtio.ko'), '\x7fELF\0depends=\0');
  fs.writeFileSync(path.join(mods, 'virtio_pci.ko'), '\x7fELF\0depends=virtio\0');
  fs.writeFileSync(path.join(kernel, '.complete'), `${KERNEL_PACKAGE}_9.9.9-1_amd64.deb\n`);
  const busybox = path.join(layer, 'debian', 'busybox-static');
  fs.mkdirSync(path.join(busybox, 'bin'), { recursive: true });
  fs.writeFileSync(path.join(busybox, 'bin', 'busybox'), 'not busybox');
  fs.writeFileSync(path.join(busybox, '.complete'), 'busybox-static_1.35.0-4+b3_amd64.deb\n');
  // dpkg-deb -x gives the archive's times; the same package unpacked twice has the same ones.
  const when = new Date('2024-01-02T03:04:05Z');
  for (const f of [path.join(mods, 'virtio.ko'), path.join(mods, 'virtio_pci.ko'), path.join(busybox, 'bin', 'busybox')]) fs.utimesSync(f, when, when);
}

/** The spec the default guest would build from the packages fetchKernel/fetchPackage find. */
function spec(init: string): InitramfsSpec {
  const kernel = fetchKernel(() => {}, KERNEL_PACKAGE);
  const busybox = path.join(fetchPackage('busybox-static', () => assert.fail('busybox-static is cached')).dir, 'bin', 'busybox');
  return { busybox, init, modules: resolveModules(indexModules(kernel.modulesDir), ['virtio_pci']) };
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-cache-'));
  rw = path.join(dir, 'rw');
  ro = path.join(dir, 'ro');
  // The read-only layer is filled as a host would fill its own cache: as the writable one.
  process.env.TSVISOR_CACHE = ro;
  delete process.env.TSVISOR_CACHE_RO;
  fakePackages(ro);
  buildInitramfs('guest', spec('#!/bin/sh\necho built on the host\n'));
  process.env.TSVISOR_CACHE = rw;
  process.env.TSVISOR_CACHE_RO = ro;
});

afterEach(() => {
  for (const [k, v] of [
    ['TSVISOR_CACHE', saved.cache],
    ['TSVISOR_CACHE_RO', saved.ro],
  ] as const)
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  fs.rmSync(dir, { recursive: true, force: true });
});

test('what only the read-only layer holds is found there and not fetched or built again; the read-only layer is untouched', () => {
  const before = snapshot(ro);
  assert.deepEqual(readOnlyCacheDirs(), [ro]);
  assert.equal(cacheDir(), rw);
  const kernel = fetchKernel(() => assert.fail('the kernel is cached'), KERNEL_PACKAGE);
  assert.equal(kernel.vmlinuz, path.join(ro, 'debian', KERNEL_PACKAGE, 'boot', `vmlinuz-${KERNEL_VERSION}`));
  const initrd = buildInitramfs('guest', spec('#!/bin/sh\necho built on the host\n'));
  assert.equal(path.dirname(initrd), ro, 'the initramfs built in the read-only layer is used');
  assert.deepEqual(
    fs.readdirSync(rw).filter((f) => f.endsWith('.cpio.gz') || f.endsWith('.tmp')),
    [],
    'nothing was built in the writable layer',
  );
  assert.equal(fs.existsSync(path.join(rw, 'debian')), false, 'nothing was fetched into the writable layer');
  assert.deepEqual(snapshot(ro), before);
});

test('what is missing is built into the writable layer only', () => {
  const before = snapshot(ro);
  const initrd = buildInitramfs('guest', spec('#!/bin/sh\necho something new\n'));
  assert.equal(path.dirname(initrd), rw);
  assert.ok(fs.statSync(initrd).size > 0);
  assert.equal(findCached(path.basename(initrd)), initrd);
  // Built once: the second call finds it.
  const mtime = fs.statSync(initrd).mtimeMs;
  assert.equal(buildInitramfs('guest', spec('#!/bin/sh\necho something new\n')), initrd);
  assert.equal(fs.statSync(initrd).mtimeMs, mtime);
  assert.deepEqual(snapshot(ro), before);
});

test('the writable layer comes first', () => {
  const file = path.join('debian', 'busybox-static', '.complete');
  fs.mkdirSync(path.dirname(path.join(rw, file)), { recursive: true });
  fs.writeFileSync(path.join(rw, file), 'busybox-static_1.35.0-4+b3_amd64.deb\n');
  assert.equal(findCached(file), path.join(rw, file));
  assert.equal(fetchPackage('busybox-static').dir, path.join(rw, 'debian', 'busybox-static'));
  assert.equal(findCached('no-such-file'), undefined);
});

test("an initramfs's name depends on its inputs' paths inside the cache, not on which layer holds them", () => {
  const inRo = spec('#!/bin/sh\n');
  const name = initramfsFileName('guest', inRo);
  // The same packages in the writable layer (say, inside the nested host where the
  // host's cache is not shared): same name. Outside every layer: another name.
  fs.cpSync(path.join(ro, 'debian'), path.join(rw, 'debian'), { recursive: true, preserveTimestamps: true });
  const inRw = spec('#!/bin/sh\n');
  assert.equal(path.dirname(inRw.busybox), path.join(rw, 'debian', 'busybox-static', 'bin'));
  assert.equal(initramfsFileName('guest', inRw), name);
  assert.equal(cacheRelative(inRw.busybox), path.join('debian', 'busybox-static', 'bin', 'busybox'));
  const outside = path.join(dir, 'elsewhere');
  fs.cpSync(path.join(ro, 'debian'), outside, { recursive: true, preserveTimestamps: true });
  assert.equal(cacheRelative(path.join(outside, 'busybox-static', 'bin', 'busybox')), undefined);
  assert.notEqual(initramfsFileName('guest', { ...inRw, busybox: path.join(outside, 'busybox-static', 'bin', 'busybox') }), name);
});

test("the nested host's command gets the host's cache as its read-only layer and a writable one in scratch", () => {
  process.env.TSVISOR_CACHE = ro;
  process.env.TSVISOR_CACHE_RO = path.join(dir, 'shared');
  const scratch = path.join(dir, 'scratch');
  assert.deepEqual(nestedCacheEnv([scratch], scratch), {
    TSVISOR_CACHE: path.join(scratch, '.cache', 'tsvisor'),
    TSVISOR_CACHE_RO: [ro, path.join(dir, 'shared')].join(path.delimiter),
  });
  // A host cache the command may write (inside a --writable directory) is used as is.
  assert.deepEqual(nestedCacheEnv([scratch, dir], scratch), { TSVISOR_CACHE: ro });
  assert.deepEqual(nestedCacheEnv([scratch, ro + '-not'], scratch).TSVISOR_CACHE_RO?.split(path.delimiter)[0], ro);
});
