// `tsvisor vhost-user-blk` and `tsvisor vhost-user-net`: tsvisor's virtio-blk and
// virtio-net device classes as vhost-user back-end daemons. Any vhost-user
// front-end (QEMU's vhost-user-blk-pci and -netdev vhost-user, tsvisor's own)
// connects to the socket; each connection gets its own device (and, for net, its
// own back-end: a tap opened or a user-mode network started for it).
import { parseArgs } from 'node:util';
import { closeImage, ImageError, openImage } from '../backends/raw-image.js';
import { formatMac, parseMac } from '../net/packet.js';
import { STOP_SIGNALS } from '../nested/nested-host.js';
import { DEFAULT_MAX_CLIENTS, VhostUserDaemon, type DaemonOptions } from '../vhost/user/daemon.js';
import { VirtioBlock } from '../virtio/block.js';
import { VirtioNet } from '../virtio/net.js';
import { ExitCode, UsageError, UserError } from './errors.js';
import { MAX_QUEUES, parseDrive, parseNetdev } from './run-options.js';
import { checkDrive, openNetBackend } from './run.js';

const DEFAULT_MAC = '52:54:00:12:34:56';

function parse(argv: string[], options: Record<string, { type: 'string' }>): Record<string, string | undefined> {
  try {
    return parseArgs({ args: argv, options: { socket: { type: 'string' }, 'max-clients': { type: 'string' }, ...options }, strict: true }).values as Record<
      string,
      string | undefined
    >;
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]!);
  }
}

/** Serves until SIGINT or SIGTERM; then every client's in-flight requests finish and the socket goes. */
async function serve(command: string, values: Record<string, string | undefined>, what: string, makeDevice: DaemonOptions['makeDevice']): Promise<number> {
  const log = (line: string) => process.stderr.write(`tsvisor ${command}: ${line}\n`);
  if (!values.socket) throw new UsageError(`${command} needs --socket PATH`);
  const maxClients = Number(values['max-clients'] ?? DEFAULT_MAX_CLIENTS);
  if (!Number.isInteger(maxClients) || maxClients < 1 || maxClients > 256) throw new UsageError('--max-clients must be 1 to 256');
  let daemon: VhostUserDaemon;
  try {
    daemon = new VhostUserDaemon({ socket: values.socket, maxClients, log, makeDevice });
  } catch (e) {
    throw new UserError(`cannot listen on ${values.socket}: ${(e as Error).message}`);
  }
  log(`serving ${what} on ${values.socket}`);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    for (const sig of STOP_SIGNALS) process.once(sig, () => resolve(sig));
  });
  log(`${signal}: finishing in-flight requests`);
  await daemon.close();
  return ExitCode.OK;
}

export async function vhostUserBlkCommand(argv: string[]): Promise<number> {
  const values = parse(argv, { drive: { type: 'string' } });
  if (!values.drive) throw new UsageError('vhost-user-blk needs --drive file=PATH[,...]');
  const drive = parseDrive(values.drive);
  checkDrive(drive);
  // Opened once here, so a drive that cannot be opened is one line at start, not one per client.
  try {
    closeImage(openImage({ path: drive.file, readOnly: drive.readOnly, cache: drive.cache }));
  } catch (e) {
    if (e instanceof ImageError) throw new UserError(e.message);
    throw e;
  }
  return serve('vhost-user-blk', values, drive.file, (n) => {
    const image = openImage({ path: drive.file, readOnly: drive.readOnly, cache: drive.cache });
    return new VirtioBlock({ name: `vhost-user-blk client ${n}`, image, serial: drive.serial, queues: drive.queues ?? 1 });
  });
}

export async function vhostUserNetCommand(argv: string[]): Promise<number> {
  const values = parse(argv, { netdev: { type: 'string' }, mac: { type: 'string' }, queues: { type: 'string' } });
  if (!values.netdev) throw new UsageError('vhost-user-net needs --netdev user,id=ID[,...] or --netdev tap,id=ID[,...]');
  const netdev = parseNetdev(values.netdev);
  if (netdev.kind === 'tap' && netdev.vhost) throw new UsageError('vhost-user-net: vhost=on does not apply (the daemon itself serves the rings)');
  const mac = parseMac(values.mac ?? DEFAULT_MAC);
  if (!mac || mac[0]! & 1) throw new UsageError(`--mac ${values.mac} is not a unicast MAC address`);
  const pairs = Number(values.queues ?? 1);
  if (!Number.isInteger(pairs) || pairs < 1 || pairs > MAX_QUEUES) throw new UsageError(`--queues must be 1 to ${MAX_QUEUES}`);
  // A client whose back-end cannot be opened (a tap another client holds) is refused with the reason.
  return serve(
    'vhost-user-net',
    values,
    `${netdev.kind} networking (mac ${formatMac(mac)})`,
    async (n, poller) => new VirtioNet(await openNetBackend(netdev, pairs), { mac, pairs }, `vhost-user-net client ${n}`, poller),
  );
}
