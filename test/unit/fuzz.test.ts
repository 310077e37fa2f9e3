// Every fuzz target, briefly and reproducibly: its whole corpus (fuzz/corpus/,
// the inputs that once reached new code), then a fixed number of seeded
// fast-check cases, shrunk to a minimal input on failure. A crash or a hang
// fails the test; `npm run fuzz -- TARGET --replay FILE` re-runs one input.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { catchStrayErrors, describe, loadCorpus, runCase, type Outcome } from '../../fuzz/lib/engine.js';
import { TARGETS } from '../../fuzz/targets/index.js';

const CORPUS = path.resolve(fileURLToPath(new URL('.', import.meta.url)), '../../../fuzz/corpus');
const SEED = 20240601;
/** The networked target and vhost-user (a conversation, a device worker thread) are slower per case; together the targets take about a minute here. */
const RUNS: Record<string, number> = { 'user-net': 500, 'vhost-user': 300 };

const failure = (o: Outcome): string => (o.kind === 'crash' ? describe(o.error) : o.kind === 'hang' ? `hang: ${o.ms.toFixed(0)} ms` : '');

for (const target of TARGETS) {
  test(`fuzz target ${target.name}: corpus and seeded cases run clean`, async () => {
    const ctx = await target.setup?.();
    catchStrayErrors(true);
    try {
      for (const [i, entry] of loadCorpus(path.join(CORPUS, target.name)).entries()) {
        const outcome = await runCase(target, ctx, entry);
        assert.equal(outcome.kind, 'ok', `corpus entry ${i}: ${failure(outcome)}`);
      }
      await fc.assert(
        fc.asyncProperty(target.arbitrary, async (data) => {
          const outcome = await runCase(target, ctx, data);
          if (outcome.kind !== 'ok') throw new Error(failure(outcome));
        }),
        { seed: SEED, numRuns: RUNS[target.name] ?? 2000 },
      );
    } finally {
      catchStrayErrors(false);
      await target.teardown?.(ctx);
    }
  });
}
