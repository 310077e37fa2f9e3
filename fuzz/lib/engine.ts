// Runs cases and campaigns. A case is one input against fresh device state, with
// a wall-time budget; a campaign replays a target's corpus, then alternates
// fast-check-generated inputs and mutations of corpus entries, keeps the inputs
// that reach new blocks (see coverage.ts), and records crashes and hangs.
//
// Taking V8 coverage costs milliseconds, far more than most cases, so it is taken
// once per batch, with the batch sized to keep that cost near a tenth of the run
// time; a batch that reached new blocks is run again case by case to find which
// inputs did, and those are cut down to the shortest prefix that still does.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { Coverage } from './coverage.js';
import { mutate, seeded } from './mutate.js';
import type { FuzzTarget } from './target.js';
import { HangWatchdog } from './watchdog.js';

export const DEFAULT_BUDGET_MS = 250;
/** A case still running synchronously after this long ends the campaign as a hang (see watchdog.ts). */
const SYNCHRONOUS_HANG_MS = 10_000;

export type Outcome = { kind: 'ok' } | { kind: 'crash'; error: unknown } | { kind: 'hang'; ms: number };

/** Errors raised outside any call the harness made (a timer, a promise nobody awaited): they belong to the running case. */
let stray: unknown[] = [];
const onStray = (e: unknown): void => void stray.push(e);

export function catchStrayErrors(on: boolean): void {
  if (on) {
    process.on('uncaughtException', onStray);
    process.on('unhandledRejection', onStray);
  } else {
    process.off('uncaughtException', onStray);
    process.off('unhandledRejection', onStray);
  }
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export async function runCase<C>(target: FuzzTarget<C>, ctx: C, data: Uint8Array): Promise<Outcome> {
  const budget = target.budgetMs ?? DEFAULT_BUDGET_MS;
  stray = [];
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    const result = target.run(ctx, data);
    if (result instanceof Promise) {
      const timedOut = new Promise<'hang'>((resolve) => (timer = setTimeout(() => resolve('hang'), budget)));
      if ((await Promise.race([result, timedOut])) === 'hang') return { kind: 'hang', ms: performance.now() - started };
      await turn(); // lets errors from the case's leftover callbacks surface while it is still the running case
    }
  } catch (error) {
    return { kind: 'crash', error };
  } finally {
    clearTimeout(timer);
  }
  if (stray.length) return { kind: 'crash', error: stray[0] };
  const ms = performance.now() - started;
  return ms > budget ? { kind: 'hang', ms } : { kind: 'ok' };
}

export function describe(error: unknown): string {
  return error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
}

/** What identifies a defect: the error's type and the first frames of its stack. */
function signature(outcome: Outcome): string {
  if (outcome.kind === 'hang') return 'hang';
  if (outcome.kind !== 'crash') return '';
  const lines = describe(outcome.error).split('\n');
  const first = lines[0]!.replace(/0x[0-9a-f]+|\d+/gi, 'N');
  return [first.split(':')[0], ...lines.slice(1, 4).map((l) => l.replace(/:\d+:\d+\)?$/, ''))].join('|');
}

const hash = (data: Uint8Array): string => createHash('sha1').update(data).digest('hex').slice(0, 16);

export interface Dirs {
  corpus: string;
  crashes: string;
}

/** A corpus directory's entries: binary files, or `.hex` files of hex digits. */
export function loadCorpus(dir: string): Uint8Array[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .sort()
    .map((name) => readInput(path.join(dir, name)));
}

export function readInput(file: string): Uint8Array {
  const raw = fs.readFileSync(file);
  return file.endsWith('.hex') ? Uint8Array.from(Buffer.from(raw.toString('utf8').replace(/\s+/g, ''), 'hex')) : new Uint8Array(raw);
}

/** Kept per target in the repository: a few hundred KB at most. */
const CORPUS_LIMIT = 256 * 1024;

export interface CampaignOptions {
  seconds: number;
  seed: number;
  runs: number;
  dirs: Dirs;
  log: (line: string) => void;
}

export interface CampaignStats {
  target: string;
  cases: number;
  seconds: number;
  corpus: number;
  added: number;
  blocks: number;
  crashes: number;
  hangs: number;
  /** Average cost of one coverage take, ms. */
  coverageMs: number;
  batch: number;
}

export async function campaign<C>(target: FuzzTarget<C>, opts: CampaignOptions): Promise<CampaignStats> {
  const corpusDir = path.join(opts.dirs.corpus, target.name);
  const corpus = loadCorpus(corpusDir);
  let corpusBytes = corpus.reduce((n, c) => n + c.length, 0);
  const random = seeded(opts.seed);
  const coverage = new Coverage();
  const seen = new Set<string>();
  const stats: CampaignStats = {
    target: target.name,
    cases: 0,
    seconds: 0,
    corpus: corpus.length,
    added: 0,
    blocks: 0,
    crashes: 0,
    hangs: 0,
    coverageMs: 0,
    batch: 1,
  };
  let takes = 0;
  let takeMs = 0;
  const ctx = (await target.setup?.()) as C;
  const watchdog = new HangWatchdog(opts.dirs.crashes, target.name, SYNCHRONOUS_HANG_MS);
  catchStrayErrors(true);
  coverage.start();
  const started = performance.now();
  const elapsed = (): number => (performance.now() - started) / 1000;

  const record = (data: Uint8Array, outcome: Outcome): void => {
    if (outcome.kind === 'ok') return;
    if (outcome.kind === 'hang') stats.hangs++;
    else stats.crashes++;
    const sig = signature(outcome);
    if (seen.has(sig)) return;
    seen.add(sig);
    const file = path.join(opts.dirs.crashes, `${target.name}-${hash(data)}`);
    fs.mkdirSync(opts.dirs.crashes, { recursive: true });
    fs.writeFileSync(file, data);
    const what = outcome.kind === 'hang' ? `hang: ${outcome.ms.toFixed(0)} ms` : describe(outcome.error);
    fs.writeFileSync(`${file}.txt`, `${what}\n`);
    opts.log(
      `  ${target.name}: ${outcome.kind} at case ${stats.cases}, ${elapsed().toFixed(1)} s -> ${path.relative(process.cwd(), file)}\n    ${what.split('\n').slice(0, 4).join('\n    ')}`,
    );
  };
  const run = async (data: Uint8Array): Promise<void> => {
    stats.cases++;
    watchdog.enter(data);
    const outcome = await runCase(target, ctx, data);
    watchdog.leave();
    record(data, outcome);
  };
  const take = (): string[] => {
    const t = performance.now();
    const fresh = coverage.peek();
    takeMs += performance.now() - t;
    takes++;
    return fresh;
  };
  const keep = (data: Uint8Array): void => {
    if (corpusBytes + data.length > CORPUS_LIMIT) return;
    fs.mkdirSync(corpusDir, { recursive: true });
    fs.writeFileSync(path.join(corpusDir, hash(data)), data);
    corpus.push(data);
    corpusBytes += data.length;
    stats.added++;
  };
  /** The shortest prefix of `data` that still reaches all of `fresh`. */
  const shorten = async (data: Uint8Array, fresh: string[]): Promise<Uint8Array> => {
    for (const fraction of [1 / 8, 1 / 4, 1 / 2, 3 / 4]) {
      const cut = data.subarray(0, Math.floor(data.length * fraction));
      if (cut.length < 16) continue;
      await run(cut);
      const reached = new Set(take());
      if (fresh.every((f) => reached.has(f))) return cut;
    }
    return data;
  };

  try {
    coverage.reset();
    for (const entry of corpus) await run(entry);
    coverage.collect();
    let batchNo = 0;
    while (elapsed() < opts.seconds && stats.cases < opts.runs) {
      const size = Math.min(stats.batch, opts.runs - stats.cases);
      const generated = fc.sample(target.arbitrary, { seed: (opts.seed + batchNo++) | 0, numRuns: size });
      const batch = generated.map((g) => (corpus.length && random() < 0.6 ? mutate(corpus[Math.floor(random() * corpus.length)]!, corpus, random) : g));
      const t = performance.now();
      for (const data of batch) await run(data);
      const runMs = performance.now() - t;
      if (take().length) {
        for (const data of batch) {
          await run(data);
          let fresh = take();
          if (!fresh.length) continue;
          const short = data.length > 64 ? await shorten(data, fresh) : data;
          if (short !== data) {
            await run(short);
            fresh = take();
          }
          coverage.mark(fresh);
          keep(short);
        }
      }
      // Coverage near a tenth of the time: a batch long enough to pay for one take.
      const perCase = runMs / batch.length;
      stats.batch = Math.max(1, Math.min(512, Math.ceil((10 * (takeMs / takes)) / Math.max(perCase, 0.01))));
    }
  } finally {
    stats.seconds = elapsed();
    stats.blocks = coverage.blocks;
    stats.corpus = corpus.length;
    stats.coverageMs = takes ? takeMs / takes : 0;
    catchStrayErrors(false);
    await watchdog.stop();
    await target.teardown?.(ctx);
  }
  return stats;
}
