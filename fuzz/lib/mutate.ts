// Byte-level mutations of corpus entries, libFuzzer's usual set: bit flips, bytes
// and words set to interesting values, random bytes, insertion, deletion and
// duplication of ranges, and splicing two entries. Driven by a seeded generator
// so a run with --seed repeats itself.
import { INTERESTING, le } from './bytes.js';

export type Random = () => number;

/** The tests' seeded xorshift32: the same sequence on every run. */
export { rng as seeded } from '../../test/support/seeded-random.js';

const MAX_INPUT = 16 * 1024;

export function mutate(input: Uint8Array, corpus: readonly Uint8Array[], random: Random): Uint8Array {
  const below = (n: number): number => Math.floor(random() * n);
  let data: Uint8Array = input.slice();
  const rounds = 1 + below(4);
  for (let i = 0; i < rounds; i++) {
    const at = below(data.length + 1);
    switch (below(8)) {
      case 0:
        if (data.length) data[at % data.length]! ^= 1 << below(8);
        break;
      case 1:
      case 2: {
        // An interesting value at a random spot, in a random width.
        const bytes = le(INTERESTING[below(INTERESTING.length)]!, [1, 2, 4, 8][below(4)]!);
        data = splice(data, at, Math.min(bytes.length, data.length - at), bytes);
        break;
      }
      case 3:
        if (data.length) data[at % data.length] = below(256);
        break;
      case 4:
        data = splice(
          data,
          at,
          0,
          Uint8Array.from({ length: 1 + below(16) }, () => below(256)),
        );
        break;
      case 5:
        data = splice(data, at, below(Math.min(32, data.length - at) + 1), new Uint8Array(0));
        break;
      case 6: {
        // A range copied elsewhere: repeats an operation.
        const from = below(data.length + 1);
        const chunk = data.slice(from, from + 1 + below(64));
        data = splice(data, at, 0, chunk);
        break;
      }
      default: {
        // Splice: this entry's head, another entry's tail.
        const other = corpus[below(corpus.length)];
        if (other?.length) data = Uint8Array.from([...data.subarray(0, at), ...other.subarray(below(other.length))]);
      }
    }
  }
  return data.length > MAX_INPUT ? data.subarray(0, MAX_INPUT) : data;
}

function splice(data: Uint8Array, at: number, remove: number, insert: Uint8Array): Uint8Array {
  const out = new Uint8Array(data.length - remove + insert.length);
  out.set(data.subarray(0, at));
  out.set(insert, at);
  out.set(data.subarray(at + remove), at + insert.length);
  return out;
}
