// A raw disk image file: the block back-end. The main thread opens it (and reports
// a bad path or mode in one line); the I/O itself runs wherever the device's data
// plane runs, synchronously on that thread: preadv/pwritev straight between the
// file and guest memory, fdatasync for a flush, fallocate for discard and zeroing.
// A device worker owns a thread, so blocking there holds up nothing else.
//
// cache=writeback goes through the host page cache; flush is fdatasync.
// cache=none opens with O_DIRECT; a request whose guest buffers are not aligned
// enough for it goes through a page-aligned bounce buffer.
import fs from 'node:fs';
import {
  closeFd,
  EINTR,
  EOPNOTSUPP,
  errnoName,
  fallocate,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  ioVector,
  memfdCreate,
  mmapShared,
  munmap,
} from '../host/libc.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { guestIovecs, subSegments, totalLength, type Segment } from '../virtio/chain.js';

export type CacheMode = 'writeback' | 'none';

export interface RawImageOptions {
  path: string;
  readOnly: boolean;
  cache: CacheMode;
}

/** An open image as plain data: what a data plane in any thread needs to use it. */
export interface ImageFile {
  path: string;
  fd: number;
  size: number;
  readOnly: boolean;
  cache: CacheMode;
}

const EINVAL = 22;
const ZERO_CHUNK = new Uint8Array(1 << 20);

export class ImageError extends Error {
  override name = 'ImageError';
}

/** Opens the image; throws ImageError with a one-line reason. */
export function openImage(opts: RawImageOptions): ImageFile {
  let flags = opts.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
  if (opts.cache === 'none') flags |= fs.constants.O_DIRECT;
  let fd: number;
  try {
    fd = fs.openSync(opts.path, flags);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EINVAL' && opts.cache === 'none')
      throw new ImageError(`${opts.path}: this filesystem does not support cache=none (O_DIRECT); use cache=writeback`);
    throw new ImageError(`cannot open drive ${opts.path}: ${err.code ?? err.message}`);
  }
  const st = fs.fstatSync(fd);
  if (!st.isFile() && !st.isBlockDevice()) {
    fs.closeSync(fd);
    throw new ImageError(`drive ${opts.path} is not a file`);
  }
  return { path: opts.path, fd, size: st.size, readOnly: opts.readOnly, cache: opts.cache };
}

/** Closes what openImage() opened, once every data plane using it has stopped. */
export function closeImage(image: ImageFile): void {
  fs.closeSync(image.fd);
}

/** Synchronous I/O on an open image, between the file and guest memory. Failures throw ImageError. */
export class ImageIo {
  /** Hole punching is unsupported here (e.g. 9p): discards become no-ops, zeroing writes zeros. */
  private noFallocate = false;

  constructor(
    readonly image: ImageFile,
    private readonly mem: GuestMemory,
  ) {}

  /** Reads into the guest buffers `segs` from `offset`; returns the bytes read (short only at the end of the file). */
  read(offset: number, segs: readonly Segment[]): number {
    return this.move('read', offset, segs);
  }

  /** Writes the guest buffers `segs` at `offset`; returns the bytes written. */
  write(offset: number, segs: readonly Segment[]): number {
    return this.move('write', offset, segs);
  }

  private move(op: 'read' | 'write', offset: number, segs: readonly Segment[]): number {
    const total = totalLength(segs);
    let done = 0;
    while (done < total) {
      const rest = done ? subSegments(segs, done, total - done) : segs;
      const iov = guestIovecs(this.mem, rest);
      if (!iov) throw new ImageError('guest memory is not a host mapping');
      const n = ioVector(op, this.image.fd, iov, offset + done);
      if (n === -EINTR) continue;
      if (n === -EINVAL && this.image.cache === 'none') return done + this.bounced(op, offset + done, rest);
      if (n < 0) throw new ImageError(`${op} at ${offset + done} failed: ${errnoName(-n)}`);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  /** O_DIRECT refused the guest's buffers (misaligned): through a page-aligned bounce buffer. */
  private bounced(op: 'read' | 'write', offset: number, segs: readonly Segment[]): number {
    const len = totalLength(segs);
    const size = Math.max(4096, Math.ceil(len / 4096) * 4096);
    const memfd = memfdCreate('tsvisor-bounce', size);
    const mapping = mmapShared(memfd, size);
    try {
      const bounce = new Uint8Array(mapping.buffer, 0, size);
      if (op === 'write') gather(this.mem, segs, bounce);
      let done = 0;
      while (done < len) {
        const chunk = bounce.subarray(done, len);
        const n =
          op === 'read'
            ? fs.readSync(this.image.fd, chunk, 0, chunk.length, offset + done)
            : fs.writeSync(this.image.fd, chunk, 0, chunk.length, offset + done);
        if (n === 0) break;
        done += n;
      }
      if (op === 'read') scatter(this.mem, bounce.subarray(0, done), segs);
      return done;
    } catch (e) {
      throw new ImageError(`${op} at ${offset} failed: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    } finally {
      munmap(mapping);
      closeFd(memfd);
    }
  }

  /** Data written so far reaches stable storage. */
  flush(): void {
    try {
      fs.fdatasyncSync(this.image.fd);
    } catch (e) {
      throw new ImageError(`flush failed: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
  }

  /** The guest no longer needs [offset, offset+len): punch a hole where the filesystem can. */
  discard(offset: number, len: number): void {
    if (this.noFallocate) return;
    const err = fallocate(this.image.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (err === EOPNOTSUPP) this.noFallocate = true;
    else if (err) throw new ImageError(`discard failed: ${errnoName(err)}`);
  }

  /** [offset, offset+len) reads as zeros afterwards; `unmap` lets the range become a hole. */
  writeZeroes(offset: number, len: number, unmap: boolean): void {
    if (!this.noFallocate) {
      const err = fallocate(this.image.fd, (unmap ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE, offset, len);
      if (err === 0) return;
      if (err !== EOPNOTSUPP) throw new ImageError(`write-zeroes failed: ${errnoName(err)}`);
      this.noFallocate = true;
    }
    try {
      for (let done = 0; done < len;) done += fs.writeSync(this.image.fd, ZERO_CHUNK, 0, Math.min(ZERO_CHUNK.length, len - done), offset + done);
    } catch (e) {
      throw new ImageError(`write-zeroes failed: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
  }
}

function gather(mem: GuestMemory, segs: readonly Segment[], into: Uint8Array): void {
  let at = 0;
  for (const s of segs) {
    into.set(mem.slice(s.addr, s.len), at);
    at += s.len;
  }
}

function scatter(mem: GuestMemory, from: Uint8Array, segs: readonly Segment[]): void {
  let at = 0;
  for (const s of segs) {
    if (at >= from.length) break;
    const part = from.subarray(at, at + s.len);
    mem.write(s.addr, part);
    at += part.length;
  }
}
