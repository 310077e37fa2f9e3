// A raw disk image file: the block back-end. A request is first tried with
// preadv2/pwritev2(RWF_NOWAIT) on the calling thread: when the data is in the host
// page cache that finishes at once, without the two thread hand-offs of the pool.
// Files on tmpfs or ramfs (which refuse RWF_NOWAIT but never wait for a device)
// are read and written on the calling thread too. Whatever could block runs on
// libuv's pool threads (preadv/pwritev straight from and into guest memory), so
// requests proceed off the vCPU threads and the event loop, several at a time.
//
// cache=writeback goes through the host page cache; flush is fdatasync.
// cache=none opens with O_DIRECT; a request whose guest buffers are not aligned
// enough for it goes through a page-aligned bounce buffer.
import fs from 'node:fs';
import { promisify } from 'node:util';
import { closeFd, EOPNOTSUPP, fallocate, ioNowait, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, memfdCreate, mmapShared, munmap } from '../host/libc.js';

export type CacheMode = 'writeback' | 'none';

export interface RawImageOptions {
  path: string;
  readOnly: boolean;
  cache: CacheMode;
}

const readv = (fd: number, bufs: Uint8Array[], pos: number): Promise<number> =>
  new Promise((resolve, reject) => fs.readv(fd, bufs, pos, (e, n) => (e ? reject(e) : resolve(n))));
const writev = (fd: number, bufs: Uint8Array[], pos: number): Promise<number> =>
  new Promise((resolve, reject) => fs.writev(fd, bufs, pos, (e, n) => (e ? reject(e) : resolve(n))));
const write = promisify(fs.write);
const fdatasync = promisify(fs.fdatasync);
const close = promisify(fs.close);
const ZERO_CHUNK = new Uint8Array(1 << 20);
/** statfs f_type of the filesystems whose files live in memory. */
const MEMORY_FS = new Set([0x01021994 /* tmpfs */, 0x858458f6 /* ramfs */]);

export class ImageError extends Error {
  override name = 'ImageError';
}

export class RawImage {
  private closed = false;
  /** Hole punching is unsupported here (e.g. 9p): discards become no-ops, zeroing writes zeros. */
  private noFallocate = false;
  /** RWF_NOWAIT is refused for this file (per direction): go straight to the pool. */
  private readonly noNowait = { read: false, write: false };
  /** Requests done on the calling thread, and on the pool. */
  readonly counters = { inline: 0, pool: 0 };

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly size: number,
    readonly readOnly: boolean,
    readonly cache: CacheMode,
    /** The file lives in memory: I/O on it never waits for a device. */
    private readonly inMemory: boolean,
  ) {}

  /** Opens the image; throws ImageError with a one-line reason. */
  static open(opts: RawImageOptions): RawImage {
    let flags = opts.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
    if (opts.cache === 'none') flags |= fs.constants.O_DIRECT;
    let fd: number;
    try {
      fd = fs.openSync(opts.path, flags);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'EINVAL' && opts.cache === 'none') throw new ImageError(`${opts.path}: this filesystem does not support cache=none (O_DIRECT); use cache=writeback`);
      throw new ImageError(`cannot open drive ${opts.path}: ${err.code ?? err.message}`);
    }
    const st = fs.fstatSync(fd);
    if (!st.isFile() && !st.isBlockDevice()) {
      fs.closeSync(fd);
      throw new ImageError(`drive ${opts.path} is not a file`);
    }
    return new RawImage(opts.path, fd, st.size, opts.readOnly, opts.cache, MEMORY_FS.has(fs.statfsSync(opts.path).type));
  }

  /**
   * Reads into `bufs` from `offset`; returns the bytes read (short only at the end of
   * the file). `iovecs` gives the same buffers as host iovecs, which the RWF_NOWAIT
   * path needs; it is only asked for when that path is tried.
   */
  read(offset: number, bufs: Uint8Array[], iovecs?: () => Buffer | undefined): Promise<number> {
    return this.move('read', offset, bufs, iovecs);
  }

  write(offset: number, bufs: Uint8Array[], iovecs?: () => Buffer | undefined): Promise<number> {
    return this.move('write', offset, bufs, iovecs);
  }

  private async move(op: 'read' | 'write', offset: number, bufs: Uint8Array[], iovecs: (() => Buffer | undefined) | undefined): Promise<number> {
    let done = 0;
    const iov = iovecs && !this.noNowait[op] ? iovecs() : undefined;
    if (iov) {
      const n = ioNowait(op, this.fd, iov, offset);
      if (n === byteLength(bufs)) {
        this.counters.inline++;
        return n;
      }
      if (n > 0) done = n;
      else if (n === -EOPNOTSUPP) this.noNowait[op] = true; // the filesystem has no non-blocking path
      // -EAGAIN (would block), -EINVAL (O_DIRECT alignment): the pool does this one.
    }
    const rest = skip(bufs, done);
    if (this.inMemory && this.cache === 'writeback') {
      this.counters.inline++;
      return done + this.transferSync(offset + done, rest, op);
    }
    this.counters.pool++;
    return done + (await this.onPool(offset + done, rest, op));
  }

  /** Loops until every byte moved or the file ended. */
  private async transfer(offset: number, bufs: Uint8Array[], op: 'read' | 'write'): Promise<number> {
    let done = 0;
    for (let rest = bufs; rest.length; ) {
      const n = op === 'read' ? await readv(this.fd, rest, offset + done) : await writev(this.fd, rest, offset + done);
      if (n === 0) break;
      done += n;
      rest = skip(rest, n);
    }
    return done;
  }

  /** The calling thread's version of transfer(), for files in memory. */
  private transferSync(offset: number, bufs: Uint8Array[], op: 'read' | 'write'): number {
    let done = 0;
    for (let rest = bufs; rest.length; ) {
      const n = op === 'read' ? fs.readvSync(this.fd, rest, offset + done) : fs.writevSync(this.fd, rest, offset + done);
      if (n === 0) break;
      done += n;
      rest = skip(rest, n);
    }
    return done;
  }

  /** On the pool; with O_DIRECT, buffers the kernel refuses (EINVAL: misaligned) go through an aligned bounce buffer. */
  private async onPool(offset: number, bufs: Uint8Array[], op: 'read' | 'write'): Promise<number> {
    if (this.cache !== 'none') return this.transfer(offset, bufs, op);
    try {
      return await this.transfer(offset, bufs, op);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
    }
    const len = byteLength(bufs);
    const size = Math.max(4096, Math.ceil(len / 4096) * 4096);
    const memfd = memfdCreate('tsvisor-bounce', size);
    const mapping = mmapShared(memfd, size);
    try {
      const bounce = new Uint8Array(mapping.buffer, 0, len);
      if (op === 'write') gather(bufs, bounce);
      const n = await this.transfer(offset, [bounce], op);
      if (op === 'read') scatter(bounce.subarray(0, n), bufs);
      return n;
    } finally {
      munmap(mapping);
      closeFd(memfd);
    }
  }

  /** Data written so far reaches stable storage. */
  flush(): Promise<void> {
    return fdatasync(this.fd);
  }

  /** The guest no longer needs [offset, offset+len): punch a hole where the filesystem can. */
  async discard(offset: number, len: number): Promise<void> {
    if (this.noFallocate) return;
    const err = fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (err === EOPNOTSUPP) this.noFallocate = true;
    else if (err) throw new ImageError(`discard failed (errno ${err})`);
  }

  /** [offset, offset+len) reads as zeros afterwards; `unmap` lets the range become a hole. */
  async writeZeroes(offset: number, len: number, unmap: boolean): Promise<void> {
    if (!this.noFallocate) {
      const err = fallocate(this.fd, (unmap ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE, offset, len);
      if (err === 0) return;
      if (err !== EOPNOTSUPP) throw new ImageError(`write-zeroes failed (errno ${err})`);
      this.noFallocate = true;
    }
    for (let done = 0; done < len; ) {
      const n = Math.min(ZERO_CHUNK.length, len - done);
      await write(this.fd, ZERO_CHUNK, 0, n, offset + done);
      done += n;
    }
  }

  /** Closes the file; pending writes were awaited by the device first. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await close(this.fd);
  }
}

function byteLength(bufs: Uint8Array[]): number {
  return bufs.reduce((n, b) => n + b.length, 0);
}

function skip(bufs: Uint8Array[], n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of bufs) {
    if (n >= b.length) {
      n -= b.length;
      continue;
    }
    out.push(n ? b.subarray(n) : b);
    n = 0;
  }
  return out;
}

function gather(bufs: Uint8Array[], into: Uint8Array): void {
  let at = 0;
  for (const b of bufs) {
    into.set(b, at);
    at += b.length;
  }
}

function scatter(from: Uint8Array, bufs: Uint8Array[]): void {
  let at = 0;
  for (const b of bufs) {
    if (at >= from.length) break;
    b.set(from.subarray(at, at + b.length));
    at += b.length;
  }
}
