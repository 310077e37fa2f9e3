// `tsvisor run` options: parsed and validated into a RunOptions, or a UsageError
// that names the bad flag. Files are checked later, when they are opened.
import { parseArgs } from 'node:util';
import type { VhostUserBlkSpec, VhostUserSpec } from '../vhost/vhost-user-device.js';
import { MiB, MIN_MEMORY } from '../arch/x86/layout.js';
import type { CacheMode } from '../backends/raw-image.js';
import { checkUserNet, DEFAULT_USER_NET, type HostForward, type UserNetConfig, type UserNetLimits } from '../net/user/config.js';
import { formatIpv4, formatMac, parseIpv4, parseMac } from '../net/packet.js';
import type { AccelRequest } from '../vmm/accel.js';
import { UsageError } from './errors.js';
import { MAX_BLOCK_QUEUES } from '../virtio/block.js';
import { formatSize, parseSize } from './size.js';

export type SerialTarget = { kind: 'stdio' } | { kind: 'file'; path: string };

/** One `--drive`: a raw image on a virtio-blk device. */
export interface DriveSpec {
  file: string;
  readOnly: boolean;
  serial?: string;
  cache: CacheMode;
  /** Request queues; absent: one per vCPU. */
  queues?: number;
}

export type ConsoleKind = 'serial' | 'virtio';

/** One `--netdev`: where a network card's packets go. */
export type NetdevSpec =
  | { kind: 'user'; id: string; user: UserNetConfig }
  | {
      kind: 'tap';
      id: string;
      ifname?: string;
      queues?: number;
      /** The data path in the host kernel (vhost-net). */
      vhost?: boolean;
      /** The vhost-net device to open (default /dev/vhost-net). */
      vhostdev?: string;
    }
  | { kind: 'bridge'; id: string; bridge: string; queues?: number };

/** One network card `--device`. */
export interface NicSpec {
  model: 'virtio-net' | 'e1000';
  netdev: string;
  mac?: Uint8Array;
  queues?: number;
  /** virtio-net: the largest control command read from the guest, bytes. */
  ctrlMax?: number;
}

export interface NetworkOptions {
  netdevs: NetdevSpec[];
  nics: NicSpec[];
}

export interface RunOptions {
  kernel?: string;
  initrd?: string;
  append?: string;
  memory: number;
  cpus: number;
  serial: SerialTarget;
  accel: AccelRequest;
  stats: boolean;
  /** Also write the counters as JSON here, at exit and on SIGUSR1. */
  statsJson?: string;
  drives: DriveSpec[];
  /** `--device virtio-rng`. */
  rng: boolean;
  /** Disks (`--device vhost-user-blk-pci,chardev=ID`) and cards (on `--netdev vhost-user`) served by vhost-user back-ends. */
  vhostUser: VhostUserSpec[];
  network: NetworkOptions;
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
  'stats-json': { type: 'string' },
  drive: { type: 'string', multiple: true },
  device: { type: 'string', multiple: true },
  chardev: { type: 'string', multiple: true },
  netdev: { type: 'string', multiple: true },
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
  const deviceTexts = values.device ?? [];
  const devices = deviceTexts.map(parseDevice);
  const chardevs = (values.chardev ?? []).map(parseChardev);
  const usedChardevs = new Set<string>();
  const useChardev = (id: string, flag: string): ChardevSpec => {
    const chardev = chardevs.find((c) => c.id === id);
    if (!chardev) throw new UsageError(`${flag}: no --chardev with id=${id}`);
    if (usedChardevs.has(id)) throw new UsageError(`--chardev ${id} is used by two devices`);
    usedChardevs.add(id);
    return chardev;
  };
  const vhostUser: VhostUserSpec[] = [];
  deviceTexts.forEach((text, i) => {
    if (devices[i] === 'vhost-user-blk') vhostUser.push(parseVhostUserBlk(text, useChardev, cpus));
  });
  // A card on a vhost-user netdev is served by the back-end behind its chardev, not by a tsvisor back-end.
  const netdevTexts = values.netdev ?? [];
  const vhostNetdevs = new Map(netdevTexts.filter((t) => t.split(',')[0] === 'vhost-user').map((t) => parseVhostUserNetdev(t, useChardev)));
  const nicTexts: string[] = [];
  const nicModels: DeviceModel[] = [];
  deviceTexts.forEach((text, i) => {
    const model = devices[i]!;
    const nic = model === 'virtio-net' || model === 'e1000' ? parseNic(text, model) : undefined;
    const common = nic && vhostNetdevs.get(nic.netdev);
    if (!nic || !common) {
      nicTexts.push(text);
      nicModels.push(model);
      return;
    }
    if (nic.model === 'e1000') throw new UsageError(`--netdev ${nic.netdev}: vhost-user serves virtio-net-pci only, not an e1000`);
    if ((nic.queues ?? 1) > 1) throw new UsageError(`--device virtio-net-pci on vhost-user: one queue pair (queues=${nic.queues} is not supported yet)`);
    vhostNetdevs.delete(nic.netdev);
    vhostUser.push({ kind: 'vhost-user-net', ...common, mac: nic.mac ?? Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x60 + vhostUser.length) });
  });
  const unusedNetdev = [...vhostNetdevs.keys()][0];
  if (unusedNetdev) throw new UsageError(`--netdev ${unusedNetdev} is not used by any --device`);
  const unusedChardev = chardevs.find((c, i) => !usedChardevs.has(c.id) || chardevs.findIndex((d) => d.id === c.id) !== i);
  if (unusedChardev) throw new UsageError(`--chardev ${unusedChardev.id} is given twice or not used by any --device`);
  return {
    kernel: values.kernel,
    initrd: values.initrd,
    append: values.append,
    memory,
    cpus,
    serial: parseSerial(values.serial ?? 'stdio'),
    accel,
    stats: values.stats ?? false,
    statsJson: values['stats-json'],
    drives: (values.drive ?? []).map(parseDrive),
    rng: devices.some((d) => d === 'virtio-rng'),
    vhostUser,
    network: parseNetwork(
      netdevTexts.filter((t) => t.split(',')[0] !== 'vhost-user'),
      nicTexts,
      nicModels,
    ),
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

/** QEMU-style `key=value,...` in order; a doubled comma stands for a comma inside a value. */
export function parseKeyValueList(text: string, flag: string): [string, string][] {
  return text
    .replaceAll(',,', '\0')
    .split(',')
    .map((part) => {
      const eq = part.indexOf('=');
      if (eq <= 0) throw new UsageError(`${flag} "${text}": "${part.replaceAll('\0', ',')}" is not key=value`);
      return [part.slice(0, eq), part.slice(eq + 1).replaceAll('\0', ',')];
    });
}

/** `key=value,...` with each key at most once (`repeatable` keys excepted: their last value is kept here). */
export function parseKeyValues(text: string, flag: string, repeatable: readonly string[] = []): Map<string, string> {
  const out = new Map<string, string>();
  for (const [key, value] of parseKeyValueList(text, flag)) {
    if (out.has(key) && !repeatable.includes(key)) throw new UsageError(`${flag} "${text}": ${key} given twice`);
    out.set(key, value);
  }
  return out;
}

function checkKeys(kv: Map<string, string>, flag: string, known: readonly string[]): void {
  for (const key of kv.keys()) if (!known.includes(key)) throw new UsageError(`${flag}: unknown key "${key}" (known: ${known.join(', ')})`);
}

const DRIVE_KEYS = ['file', 'format', 'if', 'readonly', 'serial', 'cache', 'num-queues'];

export function parseDrive(text: string): DriveSpec {
  const kv = parseKeyValues(text, '--drive');
  checkKeys(kv, '--drive', DRIVE_KEYS);
  const file = kv.get('file');
  if (!file) throw new UsageError('--drive needs file=PATH');
  oneOf(kv.get('format') ?? 'raw', '--drive format', ['raw'] as const);
  oneOf(kv.get('if') ?? 'virtio', '--drive if', ['virtio'] as const);
  const serial = kv.get('serial');
  if (serial !== undefined && !/^[\x20-\x7e]{0,20}$/.test(serial))
    throw new UsageError(`--drive serial "${serial}" must be at most 20 printable ASCII characters`);
  const queues = kv.get('num-queues');
  if (queues !== undefined && !(/^\d+$/.test(queues) && Number(queues) >= 1 && Number(queues) <= MAX_BLOCK_QUEUES))
    throw new UsageError(`--drive num-queues "${queues}" must be 1 to ${MAX_BLOCK_QUEUES}`);
  return {
    file,
    readOnly: onOff(kv.get('readonly') ?? 'off', '--drive readonly'),
    serial,
    cache: oneOf(kv.get('cache') ?? 'writeback', '--drive cache', ['writeback', 'none'] as const),
    ...(queues === undefined ? {} : { queues: Number(queues) }),
  };
}

type DeviceModel = 'virtio-rng' | 'vhost-user-blk' | NicSpec['model'];

/** The `--device` models `run` knows. */
const DEVICE_MODELS: Record<string, DeviceModel> = {
  'virtio-rng': 'virtio-rng',
  'virtio-rng-pci': 'virtio-rng',
  'vhost-user-blk': 'vhost-user-blk',
  'vhost-user-blk-pci': 'vhost-user-blk',
  'virtio-net': 'virtio-net',
  'virtio-net-pci': 'virtio-net',
  e1000: 'e1000',
};

export function parseDevice(text: string): DeviceModel {
  const model = DEVICE_MODELS[text.split(',')[0]!];
  if (!model) throw new UsageError(`--device "${text}": unknown device (known: ${Object.keys(DEVICE_MODELS).join(', ')})`);
  if (model === 'virtio-rng' && text.includes(',')) throw new UsageError(`--device "${text}": virtio-rng takes no options`);
  return model;
}

/** One `--chardev socket`: where a vhost-user back-end listens. */
export interface ChardevSpec {
  id: string;
  path: string;
  reconnect?: number;
}

export function parseChardev(text: string): ChardevSpec {
  const [kind, ...rest] = text.split(',');
  if (kind !== 'socket') throw new UsageError(`--chardev "${text}": the type must be socket`);
  const kv = parseKeyValues(rest.join(','), '--chardev');
  checkKeys(kv, '--chardev socket', ['id', 'path', 'server', 'reconnect']);
  const id = kv.get('id');
  if (!id || !/^[A-Za-z][\w.-]*$/.test(id)) throw new UsageError(`--chardev "${text}" needs id=NAME (a letter, then letters, digits, _ . -)`);
  const path = kv.get('path');
  if (!path) throw new UsageError(`--chardev ${id} needs path=SOCKET`);
  if (Buffer.byteLength(path) > 107) throw new UsageError(`--chardev ${id}: path is longer than a Unix socket address allows (107 bytes)`);
  if (onOff(kv.get('server') ?? 'off', '--chardev server'))
    throw new UsageError(`--chardev ${id}: server=on is not supported; start the back-end with its own socket and give tsvisor its path`);
  const reconnect = kv.get('reconnect');
  if (reconnect !== undefined && !(/^\d+$/.test(reconnect) && Number(reconnect) >= 1 && Number(reconnect) <= 3600))
    throw new UsageError(`--chardev ${id}: reconnect=${reconnect} must be 1 to 3600 seconds`);
  return { id, path, ...(reconnect === undefined ? {} : { reconnect: Number(reconnect) }) };
}

function parseVhostUserBlk(text: string, useChardev: (id: string, flag: string) => ChardevSpec, cpus: number): VhostUserBlkSpec {
  const comma = text.indexOf(',');
  const kv = comma < 0 ? new Map<string, string>() : parseKeyValues(text.slice(comma + 1), '--device');
  checkKeys(kv, '--device vhost-user-blk-pci', ['chardev', 'num-queues']);
  const id = kv.get('chardev');
  if (!id) throw new UsageError('--device vhost-user-blk-pci needs chardev=ID');
  const chardev = useChardev(id, '--device vhost-user-blk-pci');
  const queues = kv.get('num-queues');
  if (queues !== undefined && !(/^\d+$/.test(queues) && Number(queues) >= 1 && Number(queues) <= MAX_BLOCK_QUEUES))
    throw new UsageError(`--device vhost-user-blk-pci: num-queues=${queues} must be 1 to ${MAX_BLOCK_QUEUES}`);
  return {
    kind: 'vhost-user-blk',
    path: chardev.path,
    ...(chardev.reconnect === undefined ? {} : { reconnect: chardev.reconnect }),
    queues: queues === undefined ? Math.min(cpus, MAX_BLOCK_QUEUES) : Number(queues),
  };
}

/** `--netdev vhost-user,id=ID,chardev=ID[,queues=1]`: the netdev's id and where its back-end is. */
function parseVhostUserNetdev(text: string, useChardev: (id: string, flag: string) => ChardevSpec): [string, { path: string; reconnect?: number }] {
  const kv = parseKeyValues(text.slice('vhost-user,'.length), '--netdev');
  checkKeys(kv, '--netdev vhost-user', ['id', 'chardev', 'queues']);
  const id = kv.get('id');
  if (!id || !/^[A-Za-z][\w.-]*$/.test(id)) throw new UsageError(`--netdev "${text}" needs id=NAME (a letter, then letters, digits, _ . -)`);
  if ((parseQueues(kv.get('queues'), '--netdev vhost-user') ?? 1) > 1)
    throw new UsageError('--netdev vhost-user: one queue pair (queues>1 is not supported yet)');
  const chardevId = kv.get('chardev');
  if (!chardevId) throw new UsageError(`--netdev vhost-user,id=${id} needs chardev=ID`);
  const chardev = useChardev(chardevId, `--netdev ${id}`);
  return [id, { path: chardev.path, ...(chardev.reconnect === undefined ? {} : { reconnect: chardev.reconnect }) }];
}

/** The `--chardev`, `--netdev` and `--device` arguments that parse back to `specs`. */
export function vhostUserArgs(specs: readonly VhostUserSpec[]): string[] {
  return specs.flatMap((s, i) => {
    const chardev = ['--chardev', `socket,id=vu${i},path=${s.path.replaceAll(',', ',,')}${s.reconnect === undefined ? '' : `,reconnect=${s.reconnect}`}`];
    if (s.kind === 'vhost-user-blk') return [...chardev, '--device', `vhost-user-blk-pci,chardev=vu${i},num-queues=${s.queues}`];
    return [...chardev, '--netdev', `vhost-user,id=vun${i},chardev=vu${i}`, '--device', `virtio-net-pci,netdev=vun${i},mac=${formatMac(s.mac)}`];
  });
}

export const MAX_QUEUES = 16;

function parseQueues(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > MAX_QUEUES) throw new UsageError(`${flag} queues=${text} must be a whole number from 1 to ${MAX_QUEUES}`);
  return n;
}

/**
 * `--netdev user` keys that bound what the guest can make tsvisor hold: their
 * field and range. max-tcp stays within the 16384 gateway ports hostfwd
 * connections use; a buffer of at least 16 KiB (Node's write high-water mark)
 * guarantees a 'drain' that reopens a closed window.
 */
const USER_LIMIT_KEYS: Record<string, { field: keyof UserNetLimits; min: number; max: number; unit: string }> = {
  'max-tcp': { field: 'maxTcp', min: 1, max: 16384, unit: 'connections' },
  'max-udp': { field: 'maxUdp', min: 1, max: 65536, unit: 'flows' },
  'tcp-idle': { field: 'tcpIdle', min: 1, max: 7 * 86400, unit: 'seconds' },
  'udp-idle': { field: 'udpIdle', min: 1, max: 7 * 86400, unit: 'seconds' },
  'tcp-buffer': { field: 'tcpBuffer', min: 16 * 1024, max: 64 * MiB, unit: 'bytes' },
};

const NETDEV_KEYS: Record<NetdevSpec['kind'], string[]> = {
  user: ['id', 'net', 'host', 'dhcpstart', 'dns', 'hostfwd', 'resolver', ...Object.keys(USER_LIMIT_KEYS)],
  tap: ['id', 'ifname', 'script', 'downscript', 'queues', 'vhost', 'vhostdev'],
  bridge: ['id', 'br', 'queues'],
};

export function parseNetdev(text: string): NetdevSpec {
  const [kind, ...rest] = text.split(',');
  if (kind !== 'user' && kind !== 'tap' && kind !== 'bridge') throw new UsageError(`--netdev "${text}": the type must be user, tap or bridge`);
  const pairs = rest.length ? parseKeyValueList(rest.join(','), '--netdev') : [];
  const kv = new Map(pairs);
  checkKeys(kv, `--netdev ${kind}`, NETDEV_KEYS[kind]);
  for (const [key] of pairs)
    if (key !== 'hostfwd' && pairs.filter(([k]) => k === key).length > 1) throw new UsageError(`--netdev "${text}": ${key} given twice`);
  const id = kv.get('id');
  if (!id || !/^[A-Za-z][\w.-]*$/.test(id)) throw new UsageError(`--netdev "${text}" needs id=NAME (a letter, then letters, digits, _ . -)`);
  if (kind === 'tap') {
    for (const key of ['script', 'downscript']) {
      const v = kv.get(key);
      if (v !== undefined && v !== 'no')
        throw new UsageError(`--netdev tap: ${key}=${v}: tsvisor runs no scripts; set the tap up beforehand and give ${key}=no`);
    }
    const vhost = kv.get('vhost');
    if (vhost !== undefined && vhost !== 'on' && vhost !== 'off') throw new UsageError(`--netdev tap: vhost=${vhost} must be on or off`);
    const ifname = kv.get('ifname');
    if (ifname !== undefined && !/^[\w.-]{1,15}$/.test(ifname)) throw new UsageError(`--netdev tap: ifname "${ifname}" must be 1 to 15 letters, digits, _ . -`);
    const vhostdev = kv.get('vhostdev');
    if (vhostdev !== undefined && vhost !== 'on') throw new UsageError('--netdev tap: vhostdev= goes with vhost=on');
    return {
      kind,
      id,
      ifname,
      queues: parseQueues(kv.get('queues'), '--netdev tap'),
      ...(vhost === 'on' ? { vhost: true } : {}),
      ...(vhostdev === undefined ? {} : { vhostdev }),
    };
  }
  if (kind === 'bridge') {
    const bridge = kv.get('br');
    if (!bridge || !/^[\w.-]{1,15}$/.test(bridge)) throw new UsageError('--netdev bridge needs br=NAME (an existing Linux bridge)');
    return { kind, id, bridge, queues: parseQueues(kv.get('queues'), '--netdev bridge') };
  }
  return {
    kind,
    id,
    user: parseUserNet(
      kv,
      pairs.filter(([k]) => k === 'hostfwd').map(([, v]) => v),
    ),
  };
}

function ipv4Option(kv: Map<string, string>, key: string, fallback: number): number {
  const text = kv.get(key);
  if (text === undefined) return fallback;
  const ip = parseIpv4(text);
  if (ip === undefined) throw new UsageError(`--netdev user: ${key}=${text} is not an IPv4 address`);
  return ip;
}

function parseUserNet(kv: Map<string, string>, hostfwds: string[]): UserNetConfig {
  const d = DEFAULT_USER_NET;
  let { network, prefixLength } = d;
  const net = kv.get('net');
  if (net !== undefined) {
    const m = /^([\d.]+)(?:\/(\d+))?$/.exec(net);
    const ip = m ? parseIpv4(m[1]!) : undefined;
    prefixLength = m?.[2] !== undefined ? Number(m[2]) : 24;
    if (ip === undefined || prefixLength < 8 || prefixLength > 29)
      throw new UsageError(`--netdev user: net=${net} must be ADDRESS/PREFIX with a prefix of 8 to 29`);
    network = ip;
  }
  // Addresses not given move with the network: the same host part as QEMU's defaults.
  const within = (addr: number): number => (network | (addr & ~((0xffffffff << (32 - prefixLength)) >>> 0))) >>> 0;
  const config: UserNetConfig = {
    network,
    prefixLength,
    host: ipv4Option(kv, 'host', within(d.host)),
    dns: ipv4Option(kv, 'dns', within(d.dns)),
    dhcpStart: ipv4Option(kv, 'dhcpstart', within(d.dhcpStart)),
    hostForwards: hostfwds.map(parseHostForward),
  };
  const resolver = kv.get('resolver');
  if (resolver !== undefined) {
    const m = /^([\d.]+)(?::(\d+))?$/.exec(resolver);
    const port = m?.[2] !== undefined ? Number(m[2]) : 53;
    if (!m || parseIpv4(m[1]!) === undefined || port < 1 || port > 65535) throw new UsageError(`--netdev user: resolver=${resolver} must be IPV4[:PORT]`);
    config.resolver = { address: m[1]!, port };
  }
  const limits = parseUserLimits(kv);
  if (Object.keys(limits).length) config.limits = limits;
  const problem = checkUserNet(config);
  if (problem) throw new UsageError(`--netdev user: ${problem}`);
  return config;
}

/** The limit keys given: whole numbers in range; tcp-buffer also takes a K or M suffix. */
function parseUserLimits(kv: Map<string, string>): Partial<UserNetLimits> {
  const limits: Partial<UserNetLimits> = {};
  for (const [key, { field, min, max, unit }] of Object.entries(USER_LIMIT_KEYS)) {
    const text = kv.get(key);
    if (text === undefined) continue;
    limits[field] = parseCount(text, { min, max, unit }, `--netdev user: ${key}`);
  }
  return limits;
}

/** A whole number in [min, max]; a count of bytes also takes a K or M suffix. */
function parseCount(text: string, { min, max, unit }: { min: number; max: number; unit: string }, what: string): number {
  const bytes = unit === 'bytes';
  const m = (bytes ? /^(\d+)([KM]?)$/i : /^(\d+)()$/).exec(text);
  const n = m ? Number(m[1]) * { '': 1, K: 1024, M: MiB }[m[2]!.toUpperCase() as '' | 'K' | 'M'] : NaN;
  const range = bytes ? `${formatSize(min)} to ${formatSize(max)} bytes (K and M suffixes allowed)` : `${min} to ${max} ${unit}`;
  if (!(n >= min && n <= max)) throw new UsageError(`${what}=${text} must be a whole number from ${range}`);
  return n;
}

/** `tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`, as QEMU writes it. */
function parseHostForward(text: string): HostForward {
  const m = /^(tcp)?:([\d.]*):(\d+)-([\d.]*):(\d+)$/.exec(text);
  const bad = () => new UsageError(`--netdev user: hostfwd=${text} must be tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT (TCP only)`);
  if (!m) throw bad();
  const hostPort = Number(m[3]);
  const guestPort = Number(m[5]);
  if (hostPort < 1 || hostPort > 65535 || guestPort < 1 || guestPort > 65535) throw bad();
  if (m[2] && parseIpv4(m[2]) === undefined) throw bad();
  const guestAddress = m[4] ? parseIpv4(m[4]) : undefined;
  if (m[4] && guestAddress === undefined) throw bad();
  return { hostAddress: m[2] ?? '', hostPort, guestAddress, guestPort };
}

const NIC_KEYS = { 'virtio-net': ['netdev', 'mac', 'queues', 'ctrl-max'], e1000: ['netdev', 'mac'] } as const;
/** Linux's largest control command, a full MAC table set, is under 1 KiB; past 16 MiB a limit protects nothing. */
const CTRL_MAX_RANGE = { min: 1024, max: 16 * MiB, unit: 'bytes' };

function parseNic(text: string, model: NicSpec['model']): NicSpec {
  const rest = text.slice(text.indexOf(',') + 1);
  if (!text.includes(',')) throw new UsageError(`--device ${model} needs netdev=ID`);
  const kv = parseKeyValues(rest, '--device');
  checkKeys(kv, `--device ${model}`, NIC_KEYS[model]);
  const netdev = kv.get('netdev');
  if (!netdev) throw new UsageError(`--device ${model} needs netdev=ID`);
  const macText = kv.get('mac');
  const mac = macText === undefined ? undefined : parseMac(macText);
  if (macText !== undefined && (!mac || mac[0]! & 1))
    throw new UsageError(`--device ${model}: mac=${macText} must be a unicast address like 52:54:00:12:34:56`);
  const ctrlMax = kv.get('ctrl-max');
  return {
    model,
    netdev,
    mac,
    queues: parseQueues(kv.get('queues'), `--device ${model}`),
    ...(ctrlMax === undefined ? {} : { ctrlMax: parseCount(ctrlMax, CTRL_MAX_RANGE, `--device ${model}: ctrl-max`) }),
  };
}

/** `--netdev` and network `--device` texts, as on the command line. */
export function parseNetworkArgs(netdevs: string[], devices: string[]): NetworkOptions {
  return parseNetwork(netdevs, devices, devices.map(parseDevice));
}

/** Netdevs and the cards on them: every card names a netdev, every netdev serves one card. */
function parseNetwork(netdevTexts: string[], deviceTexts: string[], models: ReturnType<typeof parseDevice>[]): NetworkOptions {
  const netdevs = netdevTexts.map(parseNetdev);
  const nics = deviceTexts.flatMap((text, i) => (models[i] === 'virtio-net' || models[i] === 'e1000' ? [parseNic(text, models[i])] : []));
  const ids = new Set<string>();
  for (const n of netdevs) {
    if (ids.has(n.id)) throw new UsageError(`--netdev id=${n.id} given twice`);
    ids.add(n.id);
  }
  const used = new Set<string>();
  for (const nic of nics) {
    const netdev = netdevs.find((n) => n.id === nic.netdev);
    if (!netdev) throw new UsageError(`--device ${nic.model}: no --netdev with id=${nic.netdev}`);
    if (used.has(nic.netdev)) throw new UsageError(`--netdev ${nic.netdev} is used by two devices`);
    used.add(nic.netdev);
    if (nic.model === 'e1000' && netdev.kind === 'tap' && netdev.vhost)
      throw new UsageError(`--netdev ${netdev.id}: vhost=on serves virtio-net-pci only, not an e1000`);
    if (nic.model === 'e1000' && netdev.kind !== 'user' && (netdev.queues ?? 1) > 1)
      throw new UsageError(`--device e1000 has one queue; --netdev ${netdev.id} has queues=${netdev.queues}`);
  }
  const unused = netdevs.find((n) => !used.has(n.id));
  if (unused) throw new UsageError(`--netdev ${unused.id} is not used by any --device`);
  const macs = nics.map((n) => n.mac && formatMac(n.mac)).filter((m) => m !== undefined);
  if (new Set(macs).size !== macs.length) throw new UsageError('two network devices have the same mac');
  return { netdevs, nics };
}

/** `--netdev` and `--device` arguments that parse back to `network`. */
export function networkArgs(network: NetworkOptions): string[] {
  const args: string[] = [];
  for (const n of network.netdevs) {
    const kv = [n.kind, `id=${n.id}`];
    if (n.kind === 'user') {
      const u = n.user;
      kv.push(
        `net=${formatIpv4(u.network)}/${u.prefixLength}`,
        `host=${formatIpv4(u.host)}`,
        `dns=${formatIpv4(u.dns)}`,
        `dhcpstart=${formatIpv4(u.dhcpStart)}`,
      );
      if (u.resolver) kv.push(`resolver=${u.resolver.address}:${u.resolver.port}`);
      for (const [key, { field }] of Object.entries(USER_LIMIT_KEYS)) if (u.limits?.[field] !== undefined) kv.push(`${key}=${u.limits[field]}`);
      for (const f of u.hostForwards)
        kv.push(`hostfwd=tcp:${f.hostAddress}:${f.hostPort}-${f.guestAddress === undefined ? '' : formatIpv4(f.guestAddress)}:${f.guestPort}`);
    } else if (n.kind === 'tap') {
      if (n.ifname) kv.push(`ifname=${n.ifname}`);
      if (n.vhost) kv.push('vhost=on');
      if (n.vhostdev) kv.push(`vhostdev=${n.vhostdev}`);
    } else kv.push(`br=${n.bridge}`);
    if (n.kind !== 'user' && n.queues !== undefined) kv.push(`queues=${n.queues}`);
    args.push('--netdev', kv.join(','));
  }
  for (const c of network.nics) {
    const kv = [c.model === 'e1000' ? 'e1000' : 'virtio-net-pci', `netdev=${c.netdev}`];
    if (c.mac) kv.push(`mac=${formatMac(c.mac)}`);
    if (c.queues !== undefined) kv.push(`queues=${c.queues}`);
    if (c.ctrlMax !== undefined) kv.push(`ctrl-max=${c.ctrlMax}`);
    args.push('--device', kv.join(','));
  }
  return args;
}

export function parseSerial(text: string): SerialTarget {
  if (text === 'stdio') return { kind: 'stdio' };
  if (text.startsWith('file:') && text.length > 5) return { kind: 'file', path: text.slice(5) };
  throw new UsageError(`--serial "${text}" must be stdio or file:PATH`);
}
