// A small real disk image per case, and the oracle that guards it: every write
// the device makes goes through the image's write, writeZeroes or discard, which
// are watched; each must stay inside the image, and afterwards the file must
// equal a shadow copy that took exactly those writes. So a byte that changed
// where no request of the device asked is caught, and so is a request that ran
// off the end of the image.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RawImage } from '../../src/backends/raw-image.js';
import { SECTOR_SIZE } from '../../src/virtio/block.js';
import { check } from './target.js';

export const DISK_SECTORS = 64;
const DISK_SIZE = DISK_SECTORS * SECTOR_SIZE;
/** tmpfs when there is one: requests then complete on the calling thread, and the cases run faster. */
const TMP = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

export class DiskDir {
  readonly dir = fs.mkdtempSync(path.join(TMP, 'tsvisor-fuzz-'));
  private next = 0;

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** A fresh image file with a known pattern, opened as the device would open it. */
  open(readOnly: boolean): WatchedDisk {
    const file = path.join(this.dir, `disk-${this.next++ % 4}.img`);
    const initial = Buffer.alloc(DISK_SIZE);
    for (let i = 0; i < initial.length; i++) initial[i] = (i * 7 + (i >> 9)) & 0xff;
    fs.writeFileSync(file, initial);
    return new WatchedDisk(file, initial, RawImage.open({ path: file, readOnly, cache: 'writeback' }));
  }
}

export class WatchedDisk {
  /** What the file must hold: the initial pattern with every watched write applied. */
  private readonly shadow: Uint8Array;
  /** Discarded ranges read back as zeros or as before, depending on the filesystem: either is right. */
  private readonly loose: [number, number][] = [];
  /** The image as the device sees it. */
  readonly image: RawImage;

  constructor(private readonly file: string, initial: Uint8Array, real: RawImage) {
    this.shadow = initial.slice();
    const inside = (what: string, offset: number, len: number): void =>
      check(Number.isSafeInteger(offset) && offset >= 0 && len >= 0 && offset + len <= DISK_SIZE, `${what} [${offset}, +${len}) is outside the ${DISK_SIZE}-byte image`);
    this.image = new Proxy(real, {
      get: (target, prop) => {
        if (prop === 'write') {
          return (offset: number, bufs: Uint8Array[], iovecs?: () => Buffer | undefined) => {
            const data = Buffer.concat(bufs);
            inside('write', offset, data.length);
            this.shadow.set(data, offset);
            return target.write(offset, bufs, iovecs);
          };
        }
        if (prop === 'writeZeroes' || prop === 'discard') {
          return (offset: number, len: number, unmap?: boolean) => {
            inside(prop, offset, len);
            this.shadow.fill(0, offset, offset + len);
            if (prop === 'discard') this.loose.push([offset, offset + len]);
            return prop === 'discard' ? target.discard(offset, len) : target.writeZeroes(offset, len, unmap ?? false);
          };
        }
        const value = Reflect.get(target, prop, target) as unknown;
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  }

  /** Compares the file with the shadow; call once nothing is in flight. */
  verify(): void {
    const file = fs.readFileSync(this.file);
    check(file.length === DISK_SIZE, `the image grew or shrank to ${file.length} bytes`);
    for (let i = 0; i < DISK_SIZE; i++) {
      if (file[i] === this.shadow[i]) continue;
      if (this.loose.some(([from, to]) => i >= from && i < to)) continue;
      check(false, `image byte ${i} is 0x${file[i]!.toString(16)}, but no write of the device put it there (expected 0x${this.shadow[i]!.toString(16)})`);
    }
  }
}

/** Waits (bounded) until `idle()`; the case's time budget catches a device that never gets there. */
export async function settle(idle: () => boolean, maxTurns = 2000): Promise<void> {
  for (let i = 0; i < maxTurns && !idle(); i++) await new Promise((resolve) => setImmediate(resolve));
}
