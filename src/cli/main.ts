// The tsvisor command line: run, nested, doctor.
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { FetchError } from '../guest/debian.js';
import { isNestedCpuCount, runNested } from '../nested/nested-host.js';
import { benchCommand } from './bench-io-paths.js';
import { doctor } from './doctor.js';
import { ExitCode, UsageError, UserError } from './errors.js';
import { runCommand } from './run.js';
import { vhostUserBlkCommand, vhostUserNetCommand } from './vhost-user.js';
import { parseRunArgs } from './run-options.js';
import { parseSize } from './size.js';

export const USAGE = `usage:
  tsvisor run [options]             boot a guest (the default guest when no --kernel: Debian's
                                    kernel, busybox, virtio-rng, a 256 MiB scratch disk, and
                                    virtio-net on user-mode networking unless --device adds a card)
      --kernel FILE                 bzImage or ELF vmlinux
      --initrd FILE                 initramfs
      --append "CMDLINE"            kernel command line (default guest: "console=ttyS0 quiet panic=-1")
      --memory SIZE, -m SIZE        guest RAM, e.g. 512M or 2G (default 512M)
      --cpus N                      vCPUs (default 1)
      --serial stdio|file:PATH      where the 16550 UART's output goes (default stdio)
      --console serial|virtio       what stdin/stdout connect to: the UART (ttyS0, default) or a
                                    virtio-console (hvc0)
      --drive file=PATH[,format=raw][,if=virtio][,readonly=on][,serial=ID][,cache=writeback|none]
                                    a raw image on a virtio-blk disk (repeatable; vda, vdb, ...)
      --device virtio-rng           a virtio entropy device (/dev/hwrng)
      --chardev socket,id=ID,path=SOCKET[,reconnect=SECONDS]
                                    a vhost-user back-end's socket (reconnect: when it goes away,
                                    try again every SECONDS instead of failing the device)
      --netdev vhost-user,id=ID,chardev=ID
                                    a virtio-net-pci card (one queue pair) served by a vhost-user
                                    back-end (tsvisor vhost-user-net, DPDK, ...)
      --device vhost-user-blk-pci,chardev=ID[,num-queues=N]
                                    a virtio-blk disk served by a vhost-user back-end
                                    (qemu-storage-daemon, tsvisor vhost-user-blk, ...)
      --netdev user,id=ID[,net=ADDR/PREFIX][,host=IP][,dhcpstart=IP][,dns=IP][,resolver=IP[:PORT]]
               [,hostfwd=tcp:[HOSTIP]:HOSTPORT-[GUESTIP]:GUESTPORT]...
                                    user-mode networking: DHCP, DNS, NAT through host sockets
                                    (default 10.0.2.0/24, gateway .2, DNS .3, leases from .15)
      --netdev tap,id=ID[,ifname=NAME][,script=no][,downscript=no][,queues=N]
                                    a tap interface (created if missing; needs CAP_NET_ADMIN)
      --netdev bridge,id=ID,br=BRIDGE[,queues=N]
                                    a new tap enslaved to an existing Linux bridge
      --device virtio-net-pci,netdev=ID[,mac=MAC][,queues=N]
                                    a virtio network card (N queue pairs: multi-queue)
      --device e1000,netdev=ID[,mac=MAC]
                                    an emulated Intel 82540EM network card
      --ioeventfd on|off            virtio queue kicks without a VM exit (default on)
      --irqfd on|off                MSI-X interrupts through irqfd, else KVM_SIGNAL_MSI (default on)
      --accel auto|kvm|nested       auto: /dev/kvm if hardware-backed, else the nested KVM host
      --stats                       print exit and device counters when the guest ends
                                    (SIGUSR1 prints them while it runs)
      --stats-json PATH             also write them as JSON to PATH, at exit and on SIGUSR1
  tsvisor nested [--memory SIZE] [--cpus N] [--writable DIR]... -- COMMAND [ARGS...]
                                    run a command inside the nested KVM host (host / read-only,
                                    each DIR writable at its own path; 1 vCPU unless --cpus)
  tsvisor vhost-user-blk --socket PATH --drive file=PATH[,readonly=on][,serial=ID][,cache=..][,num-queues=N]
                 [--max-clients N]  serve a raw image as a vhost-user block back-end (QEMU's
                                    vhost-user-blk-pci, tsvisor's own front-end); each client
                                    gets its own device (at most N at once, default 16)
  tsvisor vhost-user-net --socket PATH --netdev user,id=ID[,...]|tap,id=ID[,...]|bridge,id=ID,br=BR
                 [--mac MAC] [--queues N] [--max-clients N]
                                    serve tsvisor's virtio-net as a vhost-user back-end (QEMU's
                                    -netdev vhost-user, DPDK's virtio-user, tsvisor's own); each
                                    client gets its own card and back-end
  tsvisor doctor [--json] [--quick] report KVM access, its backing, and whether the nested host starts
  tsvisor bench io-paths [--size SIZE] [--paths LIST] [--svg FILE] [--json FILE]
                 [--accel auto|kvm|nested] [--kernel FILE --initrd FILE]
                                    download SIZE (default 64M) into the default guest through each
                                    I/O path (e1000 and virtio-net on user-mode networking,
                                    virtio-net and vhost-net on a tap) and print MB/s, exits,
                                    interrupts, kicks and tsvisor's CPU time per MB; --svg draws it
exit status of run: 0 guest powered off or rebooted, 1 error, 2 bad usage, 3 guest panicked,
                    4 triple fault or KVM failure, 125 the nested host failed,
                    128+N stopped by signal N (SIGINT, SIGTERM, SIGHUP)
`;

async function nestedCommand(argv: string[]): Promise<number> {
  const split = argv.indexOf('--');
  if (split < 0 || split === argv.length - 1) throw new UsageError('nested needs a command after --');
  let values;
  try {
    ({ values } = parseArgs({
      args: argv.slice(0, split),
      options: { memory: { type: 'string', short: 'm' }, cpus: { type: 'string' }, writable: { type: 'string', multiple: true } },
      strict: true,
    }));
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]!);
  }
  const memoryMiB = values.memory ? Math.floor(parseSize(values.memory, '--memory') / 2 ** 20) : undefined;
  const cpus = values.cpus ? Number(values.cpus) : undefined;
  if (cpus !== undefined && !isNestedCpuCount(cpus)) throw new UsageError('--cpus must be 1 to 8');
  const writable = values.writable ?? [];
  for (const dir of writable) if (!fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new UsageError(`--writable ${dir} is not a directory`);
  const [command, ...args] = argv.slice(split + 1);
  return runNested({ command: command!, args, memoryMiB, cpus, writable, stdin: 'inherit' });
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'run': {
      const opts = parseRunArgs(rest);
      if (opts.help) {
        process.stdout.write(USAGE);
        return ExitCode.OK;
      }
      return runCommand(opts);
    }
    case 'nested':
      return nestedCommand(rest);
    case 'bench':
      return benchCommand(rest);
    case 'vhost-user-blk':
      return vhostUserBlkCommand(rest);
    case 'vhost-user-net':
      return vhostUserNetCommand(rest);
    case 'doctor': {
      let values;
      try {
        ({ values } = parseArgs({ args: rest, options: { json: { type: 'boolean' }, quick: { type: 'boolean' } }, strict: true }));
      } catch (e) {
        throw new UsageError((e as Error).message.split('\n')[0]!);
      }
      return doctor({ json: values.json ?? false, quick: values.quick ?? false });
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return command === undefined ? ExitCode.USAGE : ExitCode.OK;
    default:
      throw new UsageError(
        `unknown command "${command}" (try: tsvisor run, tsvisor nested, tsvisor vhost-user-blk, tsvisor vhost-user-net, tsvisor doctor, tsvisor bench)`,
      );
  }
}

/** Runs the CLI: known failures become one line on stderr and an exit status. */
export async function cli(argv: string[]): Promise<void> {
  let code: number;
  try {
    code = await main(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`tsvisor: ${e.message}\n`);
      code = ExitCode.USAGE;
    } else if (e instanceof UserError || e instanceof FetchError) {
      process.stderr.write(`tsvisor: ${e.message}\n`);
      code = ExitCode.ERROR;
    } else {
      const err = e as Error;
      process.stderr.write(`tsvisor: internal error: ${err.message}\n`);
      if (process.env.TSVISOR_DEBUG) process.stderr.write(`${err.stack}\n`);
      code = ExitCode.ERROR;
    }
  }
  process.exit(code);
}
