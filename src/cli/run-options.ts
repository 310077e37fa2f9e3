// `tsvisor run` options: parsed and validated into a RunOptions, or a UsageError
// that names the bad flag. Files are checked later, when they are opened.
import { parseArgs } from 'node:util';
import { MiB, MIN_MEMORY } from '../arch/x86/layout.js';
import type { CacheMode } from '../backends/raw-image.js';
import type { AccelRequest } from '../vmm/accel.js';
import { UsageError } from './errors.js';
import { formatSize, parseSize } from './size.js';

export type SerialTarget = { kind: 'stdio' } | { kind: 'file'; path: string };

/** One `--drive`: a raw image on a virtio-blk device. */
export interface DriveSpec {
  file: string;
  readOnly: boolean;
  serial?: string;
  cache: CacheMode;
}

export type ConsoleKind = 'serial' | 'virtio';

export interface RunOptions {
  kernel?: string;
  initrd?: string;
  append?: string;
  memory: number;
  cpus: number;
  serial: SerialTarget;
  accel: AccelRequest;
  stats: boolean;
  drives: DriveSpec[];
  /** `--device virtio-rng`. */
  rng: boolean;
  /** Where stdio connects: the UART (ttyS0) or virtio-console (hvc0). */
  console: ConsoleKind;
  ioeventfd: boolean;
  irqfd: boolean;
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
  drive: { type: 'string', multiple: true },
  device: { type: 'string', multiple: true },
  console: { type: 'string' },
  ioeventfd: { type: 'string' },
  irqfd: { type: 'string' },
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
    drives: (values.drive ?? []).map(parseDrive),
    rng: (values.device ?? []).map(parseDevice).includes('virtio-rng'),
    console: oneOf(values.console ?? 'serial', '--console', ['serial', 'virtio'] as const),
    ioeventfd: onOff(values.ioeventfd ?? 'on', '--ioeventfd'),
    irqfd: onOff(values.irqfd ?? 'on', '--irqfd'),
    help: values.help ?? false,
  };
}

function oneOf<T extends string>(text: string, flag: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(text)) throw new UsageError(`${flag} "${text}" must be ${allowed.join(' or ')}`);
  return text as T;
}

function onOff(text: string, flag: string): boolean {
  return oneOf(text, flag, ['on', 'off'] as const) === 'on';
}

/** QEMU-style `key=value,...`; a doubled comma stands for a comma inside a value. */
export function parseKeyValues(text: string, flag: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of text.replaceAll(',,', '\0').split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new UsageError(`${flag} "${text}": "${part.replaceAll('\0', ',')}" is not key=value`);
    const key = part.slice(0, eq);
    if (out.has(key)) throw new UsageError(`${flag} "${text}": ${key} given twice`);
    out.set(key, part.slice(eq + 1).replaceAll('\0', ','));
  }
  return out;
}

const DRIVE_KEYS = ['file', 'format', 'if', 'readonly', 'serial', 'cache'];

export function parseDrive(text: string): DriveSpec {
  const kv = parseKeyValues(text, '--drive');
  for (const key of kv.keys()) if (!DRIVE_KEYS.includes(key)) throw new UsageError(`--drive: unknown key "${key}" (known: ${DRIVE_KEYS.join(', ')})`);
  const file = kv.get('file');
  if (!file) throw new UsageError('--drive needs file=PATH');
  oneOf(kv.get('format') ?? 'raw', '--drive format', ['raw'] as const);
  oneOf(kv.get('if') ?? 'virtio', '--drive if', ['virtio'] as const);
  const serial = kv.get('serial');
  if (serial !== undefined && !/^[\x20-\x7e]{0,20}$/.test(serial)) throw new UsageError(`--drive serial "${serial}" must be at most 20 printable ASCII characters`);
  return {
    file,
    readOnly: onOff(kv.get('readonly') ?? 'off', '--drive readonly'),
    serial,
    cache: oneOf(kv.get('cache') ?? 'writeback', '--drive cache', ['writeback', 'none'] as const),
  };
}

/** The `--device` models `run` knows. */
const DEVICE_MODELS: Record<string, 'virtio-rng'> = { 'virtio-rng': 'virtio-rng', 'virtio-rng-pci': 'virtio-rng' };

export function parseDevice(text: string): 'virtio-rng' {
  const model = DEVICE_MODELS[text.split(',')[0]!];
  if (!model) throw new UsageError(`--device "${text}": unknown device (known: ${Object.keys(DEVICE_MODELS).join(', ')})`);
  return model;
}

export function parseSerial(text: string): SerialTarget {
  if (text === 'stdio') return { kind: 'stdio' };
  if (text.startsWith('file:') && text.length > 5) return { kind: 'file', path: text.slice(5) };
  throw new UsageError(`--serial "${text}" must be stdio or file:PATH`);
}
