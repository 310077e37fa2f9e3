// Builds a gzip-compressed initramfs around Debian's static busybox: an /init
// script, kernel modules loaded in dependency order, and any extra files.
// Results are cached by content, so a guest boots without rebuilding it.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { writeCpio, withParentDirs, type CpioEntry } from './cpio.js';
import type { KernelModule } from './kernel-modules.js';
import { cacheDir, cacheRelative, findCached } from './debian.js';

export interface InitramfsSpec {
  busybox: string;
  init: string;
  modules: readonly KernelModule[];
  files?: readonly CpioEntry[];
}

/** The script lines that load `modules` (as listed in /etc/modules) at boot. */
/** Loads /etc/modules in order; `module.param=value` on the kernel command line reaches the module, as modprobe would pass it. */
export const LOAD_MODULES =
  'while read -r m; do insmod /lib/modules/$m.ko $(tr " " "\\n" </proc/cmdline | sed -n "s/^$(echo $m | tr - _)\\.//p") || echo "initramfs: insmod $m failed" >&2; done < /etc/modules';

export function initramfsEntries(spec: InitramfsSpec): CpioEntry[] {
  const entries: CpioEntry[] = [
    { type: 'file', path: 'bin/busybox', data: fs.readFileSync(spec.busybox), mode: 0o755 },
    { type: 'symlink', path: 'bin/sh', target: 'busybox' },
    { type: 'file', path: 'init', data: Buffer.from(spec.init), mode: 0o755 },
    { type: 'file', path: 'etc/modules', data: Buffer.from(spec.modules.map((m) => m.name + '\n').join('')) },
    ...spec.modules.map((m): CpioEntry => ({ type: 'file', path: `lib/modules/${m.name}.ko`, data: fs.readFileSync(m.file) })),
    ...(spec.files ?? []),
  ];
  for (const dir of ['dev', 'proc', 'sys', 'tmp', 'run', 'sbin', 'usr/bin', 'usr/sbin', 'root']) entries.push({ type: 'dir', path: dir });
  return withParentDirs(entries);
}

/**
 * The initramfs's file name in the cache: `name` and a hash of its inputs. Input files
 * in a cache layer are named by their path inside it, so the same packages give the
 * same name whichever layer holds them (the host's cache, seen read-only in the
 * nested host, or the writable one).
 */
export function initramfsFileName(name: string, spec: InitramfsSpec): string {
  const hash = crypto.createHash('sha256');
  hash.update(spec.init);
  for (const f of [spec.busybox, ...spec.modules.map((m) => m.file)]) {
    const st = fs.statSync(f);
    const rel = cacheRelative(f);
    hash.update(`${rel === undefined ? f : `cache:${rel}`}:${st.size}:${st.mtimeMs}\n`);
  }
  for (const f of spec.files ?? [])
    hash.update(JSON.stringify(f.type === 'file' ? { ...f, data: crypto.createHash('sha256').update(f.data).digest('hex') } : f));
  return `${name}-${hash.digest('hex').slice(0, 16)}.cpio.gz`;
}

/** Returns the path of the compressed initramfs, found in any cache layer or built into the writable one. */
export function buildInitramfs(name: string, spec: InitramfsSpec): string {
  const file = initramfsFileName(name, spec);
  const cached = findCached(file);
  if (cached) return cached;
  const out = path.join(cacheDir(), file);
  const tmp = `${out}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, zlib.gzipSync(writeCpio(initramfsEntries(spec)), { level: 6 }));
  fs.renameSync(tmp, out);
  return out;
}
