// `tsvisor run` options: parsed and validated into a RunOptions, or a UsageError
// that names the bad flag. Files are checked later, when they are opened.
import { parseArgs } from 'node:util';
import { MiB, MIN_MEMORY } from '../arch/x86/layout.js';
import type { AccelRequest } from '../vmm/accel.js';
import { UsageError } from './errors.js';
import { formatSize, parseSize } from './size.js';

export type SerialTarget = { kind: 'stdio' } | { kind: 'file'; path: string };

export interface RunOptions {
  kernel?: string;
  initrd?: string;
  append?: string;
  memory: number;
  cpus: number;
  serial: SerialTarget;
  accel: AccelRequest;
  stats: boolean;
}

export const MAX_MEMORY = 64 * 2 ** 30;
export const MAX_CPUS = 255;

export const RUN_FLAGS = {
  kernel: { type: 'string' },
  initrd: { type: 'string' },
  append: { type: 'string' },
  memory: { type: 'string', short: 'm' },
  cpus: { type: 'string' },
  serial: { type: 'string' },
  accel: { type: 'string' },
  stats: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

export function parseRunArgs(argv: readonly string[]): RunOptions & { help: boolean } {
  let values;
  try {
    ({ values } = parseArgs({ args: [...argv], options: RUN_FLAGS, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]!.replace(/\. To specify.*$/, ''));
  }
  const memory = parseSize(values.memory ?? '512M', '--memory');
  if (memory < MIN_MEMORY) throw new UsageError(`--memory ${values.memory} is too small: a Linux guest needs at least ${formatSize(MIN_MEMORY)}`);
  if (memory > MAX_MEMORY) throw new UsageError(`--memory ${values.memory} is more than tsvisor supports (${formatSize(MAX_MEMORY)})`);
  if (memory % MiB !== 0) throw new UsageError(`--memory must be a whole number of MiB`);
  const cpusText = values.cpus ?? '1';
  const cpus = Number(cpusText);
  if (!/^\d+$/.test(cpusText) || cpus < 1 || cpus > MAX_CPUS) throw new UsageError(`--cpus "${cpusText}" must be a whole number from 1 to ${MAX_CPUS}`);
  const accel = values.accel ?? 'auto';
  if (accel !== 'auto' && accel !== 'kvm' && accel !== 'nested') throw new UsageError(`--accel "${accel}" must be auto, kvm or nested`);
  if (values.initrd !== undefined && values.kernel === undefined) throw new UsageError('--initrd needs --kernel (the default guest brings its own initrd)');
  return {
    kernel: values.kernel,
    initrd: values.initrd,
    append: values.append,
    memory,
    cpus,
    serial: parseSerial(values.serial ?? 'stdio'),
    accel,
    stats: values.stats ?? false,
    help: values.help ?? false,
  };
}

export function parseSerial(text: string): SerialTarget {
  if (text === 'stdio') return { kind: 'stdio' };
  if (text.startsWith('file:') && text.length > 5) return { kind: 'file', path: text.slice(5) };
  throw new UsageError(`--serial "${text}" must be stdio or file:PATH`);
}
