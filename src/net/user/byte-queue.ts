// Bytes waiting to be sent and acknowledged, held as the chunks they arrived in,
// so appending never copies what is already queued.

export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Offset of the first live byte inside chunks[0]. */
  private head = 0;
  length = 0;

  push(data: Buffer): void {
    if (data.length === 0) return;
    this.chunks.push(data);
    this.length += data.length;
  }

  /** Forgets the first `n` bytes. */
  drop(n: number): void {
    n = Math.min(n, this.length);
    this.length -= n;
    while (n > 0) {
      const first = this.chunks[0]!;
      const left = first.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** A copy of bytes [offset, offset+len), clipped to what is queued. */
  peek(offset: number, len: number): Buffer {
    len = Math.max(0, Math.min(len, this.length - offset));
    const out = Buffer.allocUnsafe(len);
    let at = 0;
    let skip = offset + this.head;
    for (const chunk of this.chunks) {
      if (at === len) break;
      if (skip >= chunk.length) {
        skip -= chunk.length;
        continue;
      }
      at += chunk.copy(out, at, skip, Math.min(chunk.length, skip + len - at));
      skip = 0;
    }
    return out;
  }
}
