// A writer for the cpio "newc" format (the one the Linux initramfs unpacker reads).
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array; mode?: number }
  | { type: 'symlink'; path: string; target: string };

const TRAILER = 'TRAILER!!!';

function hex8(n: number): string {
  if (!(n >= 0 && n <= 0xffffffff)) throw new Error(`cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function record(ino: number, mode: number, name: string, data: Uint8Array, nlink = 1): Buffer {
  const nameBytes = Buffer.from(name + '\0', 'utf8');
  const header = '070701' + [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0].map(hex8).join('');
  return Buffer.concat([Buffer.from(header, 'ascii'), nameBytes, Buffer.alloc(pad4(110 + nameBytes.length)), data, Buffer.alloc(pad4(data.length))]);
}

/** Serializes entries in order (parents before children), then the trailer. */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const out: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, '');
    if (!path || path.split('/').includes('..')) throw new Error(`bad cpio path: ${e.path}`);
    if (e.type === 'dir') out.push(record(ino++, S_IFDIR | (e.mode ?? 0o755), path, new Uint8Array(), 2));
    else if (e.type === 'file') out.push(record(ino++, S_IFREG | (e.mode ?? 0o644), path, e.data));
    else out.push(record(ino++, S_IFLNK | 0o777, path, Buffer.from(e.target, 'utf8')));
  }
  out.push(record(0, 0, TRAILER, new Uint8Array(), 1));
  return Buffer.concat(out);
}

/** Adds the directory entries every path needs, parents first, without duplicates. */
export function withParentDirs(entries: readonly CpioEntry[]): CpioEntry[] {
  const seen = new Set<string>();
  const out: CpioEntry[] = [];
  for (const e of entries) {
    const parts = e.path.replace(/^\/+/, '').split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!seen.has(dir)) {
        seen.add(dir);
        out.push({ type: 'dir', path: dir });
      }
    }
    if (e.type === 'dir') {
      if (seen.has(e.path)) continue;
      seen.add(e.path);
    }
    out.push(e);
  }
  return out;
}
