// The fuzzing CLI:
//   npm run fuzz -- TARGET|all [--time SECONDS] [--seed N] [--runs N]
//   npm run fuzz -- TARGET --replay FILE
// --time is per target. Corpus entries live in fuzz/corpus/TARGET/ (kept in the
// repository), crashing inputs go to fuzz/crashes/ with their stacks.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { campaign, catchStrayErrors, describe, readInput, runCase, type CampaignStats } from './lib/engine.js';
import { TARGETS, targetNamed } from './targets/index.js';

const ROOT = path.resolve(fileURLToPath(new URL('.', import.meta.url)), '../../fuzz');
const USAGE = `usage: npm run fuzz -- TARGET|all [--time SECONDS] [--seed N] [--runs N]
       npm run fuzz -- TARGET --replay FILE
targets:
${TARGETS.map((t) => `  ${t.name.padEnd(16)} ${t.description}`).join('\n')}`;

function parseArgs(argv: string[]): { name: string; seconds: number; seed: number; runs: number; replay?: string } {
  const [name, ...rest] = argv;
  if (!name || name.startsWith('-')) throw new Error(USAGE);
  const opts = { name, seconds: 60, seed: Date.now() % 2 ** 31, runs: Infinity, replay: undefined as string | undefined };
  for (let i = 0; i < rest.length; i += 2) {
    const value = rest[i + 1];
    if (value === undefined) throw new Error(USAGE);
    if (rest[i] === '--time') opts.seconds = Number(value);
    else if (rest[i] === '--seed') opts.seed = Number(value);
    else if (rest[i] === '--runs') opts.runs = Number(value);
    else if (rest[i] === '--replay') opts.replay = value;
    else throw new Error(USAGE);
  }
  if (![opts.seconds, opts.seed, opts.runs].every((n) => n >= 0)) throw new Error(USAGE);
  return opts;
}

async function replay(name: string, file: string): Promise<number> {
  const target = targetNamed(name);
  if (!target) throw new Error(`no target ${name}\n${USAGE}`);
  const ctx = await target.setup?.();
  catchStrayErrors(true);
  const outcome = await runCase(target, ctx, readInput(file));
  catchStrayErrors(false);
  await target.teardown?.(ctx);
  if (outcome.kind === 'ok') console.log(`${name}: ${file}: ok`);
  else console.log(`${name}: ${file}: ${outcome.kind}\n${outcome.kind === 'crash' ? describe(outcome.error) : `${outcome.ms.toFixed(0)} ms`}`);
  return outcome.kind === 'ok' ? 0 : 1;
}

function report(s: CampaignStats): string {
  return `${s.target.padEnd(16)} ${String(s.cases).padStart(8)} cases ${(s.cases / s.seconds).toFixed(0).padStart(6)}/s  corpus ${String(s.corpus).padStart(4)} (+${s.added})  blocks ${String(s.blocks).padStart(5)}  crashes ${s.crashes}  hangs ${s.hangs}  (coverage take ${s.coverageMs.toFixed(1)} ms, batch ${s.batch})`;
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.replay) return replay(opts.name, opts.replay);
  const targets =
    opts.name === 'all'
      ? TARGETS
      : [
          targetNamed(opts.name) ??
            (() => {
              throw new Error(`no target ${opts.name}\n${USAGE}`);
            })(),
        ];
  console.log(`seed ${opts.seed}`);
  const all: CampaignStats[] = [];
  for (const target of targets) {
    const stats = await campaign(target, {
      seconds: opts.seconds,
      seed: opts.seed,
      runs: opts.runs,
      dirs: { corpus: path.join(ROOT, 'corpus'), crashes: path.join(ROOT, 'crashes') },
      log: (l) => console.log(l),
    });
    console.log(report(stats));
    all.push(stats);
  }
  return all.some((s) => s.crashes || s.hangs) ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(2);
  },
);
