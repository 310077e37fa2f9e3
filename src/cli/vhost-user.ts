// `tsvisor vhost-user-blk`: tsvisor's virtio-blk device as a vhost-user back-end
// daemon. Any vhost-user front-end (QEMU's vhost-user-blk-pci, tsvisor's own)
// connects to the socket; each connection gets its own device over the drive.
import { parseArgs } from 'node:util';
import { ImageError, openImage } from '../backends/raw-image.js';
import { STOP_SIGNALS } from '../nested/nested-host.js';
import { VhostUserDaemon } from '../vhost/user/daemon.js';
import { VirtioBlock } from '../virtio/block.js';
import { ExitCode, UsageError, UserError } from './errors.js';
import { parseDrive } from './run-options.js';
import { checkDrive } from './run.js';

const log = (line: string) => process.stderr.write(`tsvisor vhost-user-blk: ${line}\n`);

export async function vhostUserBlkCommand(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { socket: { type: 'string' }, drive: { type: 'string' }, 'max-clients': { type: 'string' } },
      strict: true,
    }));
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]!);
  }
  if (!values.socket) throw new UsageError('vhost-user-blk needs --socket PATH');
  if (!values.drive) throw new UsageError('vhost-user-blk needs --drive file=PATH[,...]');
  const maxClients = Number(values['max-clients'] ?? 16);
  if (!Number.isInteger(maxClients) || maxClients < 1 || maxClients > 256) throw new UsageError('--max-clients must be 1 to 256');
  const drive = parseDrive(values.drive);
  checkDrive(drive);
  let daemon: VhostUserDaemon;
  try {
    daemon = new VhostUserDaemon({
      socket: values.socket,
      maxClients,
      log,
      makeDevice: (n) =>
        new VirtioBlock({
          name: `vhost-user-blk client ${n}`,
          image: openImage({ path: drive.file, readOnly: drive.readOnly, cache: drive.cache }),
          serial: drive.serial,
          queues: drive.queues ?? 1,
        }),
    });
  } catch (e) {
    if (e instanceof ImageError) throw new UserError(e.message);
    throw new UserError(`cannot listen on ${values.socket}: ${(e as Error).message}`);
  }
  log(`serving ${drive.file} on ${values.socket}`);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    for (const sig of STOP_SIGNALS) process.once(sig, () => resolve(sig));
  });
  log(`${signal}: finishing in-flight requests`);
  await daemon.close();
  return ExitCode.OK;
}
