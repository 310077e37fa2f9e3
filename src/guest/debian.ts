// Fetches Debian packages with `apt-get download` and unpacks them with
// `dpkg-deb -x` into tsvisor's cache, once. Nothing is installed on the host.
// The cache has layers: the writable one (cacheDir()) and read-only ones below it
// (TSVISOR_CACHE_RO, the host's cache inside the nested host). Lookups go through
// findCached(), which tries them in that order; writes go to cacheDir() only.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export class FetchError extends Error {
  override name = 'FetchError';
}

/** The writable cache: everything tsvisor downloads or builds goes here. */
export function cacheDir(): string {
  const dir = process.env.TSVISOR_CACHE || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'tsvisor');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Read-only caches consulted after cacheDir() and never written: TSVISOR_CACHE_RO,
 * a list of directories separated like PATH. Inside the nested host it names the
 * host's cache, which the command sees read-only at its own path.
 */
export function readOnlyCacheDirs(): string[] {
  const writable = path.resolve(cacheDir());
  const dirs = (process.env.TSVISOR_CACHE_RO ?? '')
    .split(path.delimiter)
    .filter(Boolean)
    .map((d) => path.resolve(d));
  return [...new Set(dirs)].filter((d) => d !== writable);
}

/** Every cache layer, the writable one first. */
export function cacheLayers(): string[] {
  return [path.resolve(cacheDir()), ...readOnlyCacheDirs()];
}

/** `relative` (a path inside the cache) in the first layer that has it, or undefined. */
export function findCached(relative: string): string | undefined {
  for (const layer of cacheLayers()) {
    const file = path.join(layer, relative);
    if (fs.existsSync(file)) return file;
  }
  return undefined;
}

/** `file`'s path inside whichever cache layer holds it, or undefined when it is outside them all. */
export function cacheRelative(file: string): string | undefined {
  const abs = path.resolve(file);
  for (const layer of cacheLayers()) {
    const rel = path.relative(layer, abs);
    if (rel && rel !== '..' && !rel.startsWith('..' + path.sep) && !path.isAbsolute(rel)) return rel;
  }
  return undefined;
}

export function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export const isRoot = () => process.getuid?.() === 0;
let aptUpdated = false;

/** Refreshes apt's package lists once per process, when allowed to (as root). */
export function aptUpdate(log: (line: string) => void): boolean {
  if (aptUpdated || !isRoot()) return false;
  aptUpdated = true;
  log('tsvisor: apt-get update');
  return spawnSync('apt-get', ['update', '-q'], { stdio: ['ignore', 'ignore', 'inherit'] }).status === 0;
}

function metapackageDependency(name: string, prefix: string): string | undefined {
  try {
    const out = execFileSync('apt-cache', ['depends', '--no-recommends', '--no-suggests', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return out
      .split('\n')
      .map((l) => l.match(/Depends:\s+(\S+)/)?.[1])
      .find((d) => d?.startsWith(prefix));
  } catch {
    return undefined;
  }
}

/** The concrete package a metapackage such as linux-image-amd64 depends on. */
export function resolveMetapackage(name: string, prefix: string, log: (line: string) => void = stderrLog): string {
  const dep = metapackageDependency(name, prefix) ?? (aptUpdate(log) ? metapackageDependency(name, prefix) : undefined);
  if (!dep) throw new FetchError(`apt-cache knows no package ${name}; run: apt-get update`);
  return dep;
}

const stderrLog = (l: string) => process.stderr.write(l + '\n');

export interface UnpackedPackage {
  name: string;
  dir: string;
}

/** Downloads and unpacks a package into the cache; later calls reuse it. */
export function fetchPackage(name: string, log: (line: string) => void = stderrLog): UnpackedPackage {
  const cached = findCached(path.join('debian', name, '.complete'));
  if (cached) return { name, dir: path.dirname(cached) };
  const root = path.join(cacheDir(), 'debian');
  const dir = path.join(root, name);
  for (const cmd of ['apt-get', 'dpkg-deb']) {
    if (!hasCommand(cmd))
      throw new FetchError(`${cmd} is not available: tsvisor fetches its default guest from Debian's archive and needs a Debian-based host`);
  }
  fs.mkdirSync(root, { recursive: true });
  const work = fs.mkdtempSync(path.join(root, '.download-'));
  try {
    log(`tsvisor: downloading Debian package ${name} into ${root}`);
    const download = () => spawnSync('apt-get', ['download', '-q', name], { cwd: work, stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' });
    let dl = download();
    if (dl.status !== 0 && aptUpdate(log)) dl = download();
    if (dl.status !== 0) {
      const why =
        (dl.stderr ?? '')
          .split('\n')
          .filter((l) => l.startsWith('E:'))
          .join(' ') || `exit ${dl.status}`;
      throw new FetchError(`apt-get download ${name} failed: ${why} (run: apt-get update)`);
    }
    const deb = fs.readdirSync(work).find((f) => f.endsWith('.deb'));
    if (!deb) throw new FetchError(`apt-get download ${name} left no .deb`);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    execFileSync('dpkg-deb', ['-x', path.join(work, deb), dir]);
    fs.writeFileSync(path.join(dir, '.complete'), deb + '\n');
    return { name, dir };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

export interface DebianKernel {
  version: string;
  vmlinuz: string;
  modulesDir: string;
}

/** The newest kernel package already in the cache, for when apt cannot say which is current. */
function cachedKernelPackage(): string | undefined {
  const names = new Set(cacheLayers().flatMap((layer) => (fs.existsSync(path.join(layer, 'debian')) ? fs.readdirSync(path.join(layer, 'debian')) : [])));
  return [...names]
    .filter((d) => /^linux-image-[\d.]+-\d+-amd64$/.test(d) && findCached(path.join('debian', d, '.complete')))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
    .at(-1);
}

/** Debian's generic amd64 kernel (the one linux-image-amd64 points at), unpacked. */
export function fetchKernel(log: (line: string) => void = stderrLog, packageName = process.env.TSVISOR_KERNEL_PACKAGE): DebianKernel {
  let name = packageName;
  if (!name) {
    try {
      name = resolveMetapackage('linux-image-amd64', 'linux-image-', log);
    } catch (e) {
      name = cachedKernelPackage();
      if (!name) throw e;
    }
  }
  const pkg = fetchPackage(name, log);
  const modules = path.join(pkg.dir, 'lib', 'modules');
  const version = fs.readdirSync(modules)[0];
  if (!version) throw new FetchError(`${pkg.name} holds no kernel modules`);
  return { version, vmlinuz: path.join(pkg.dir, 'boot', `vmlinuz-${version}`), modulesDir: path.join(modules, version) };
}

export function fetchBusybox(log?: (line: string) => void): string {
  const pkg = fetchPackage('busybox-static', log);
  return path.join(pkg.dir, 'bin', 'busybox');
}
