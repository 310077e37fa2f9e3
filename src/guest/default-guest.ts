// The guest `tsvisor run` boots when given no kernel: Debian's generic kernel and
// an initramfs holding busybox, the modules the guest needs, and an init that
// brings up a shell on the console. poweroff/reboot go through busybox init.
import fs from 'node:fs';
import type { CpioEntry } from './cpio.js';
import { fetchBusybox, fetchKernel } from './debian.js';
import { buildInitramfs, LOAD_MODULES } from './initramfs.js';
import { indexModules, resolveModules } from './kernel-modules.js';

/** Printed by the guest's init once userspace runs; benchmarks time boots up to it. */
export const USERSPACE_BANNER = 'tsvisor default guest: userspace is up';

/**
 * The console= arguments for where stdio goes. With a virtio console, hvc0 comes
 * last so it becomes /dev/console once its driver loads; the UART still gets the
 * early messages.
 */
export function consoleCmdline(console: 'serial' | 'virtio'): string {
  return console === 'virtio' ? 'console=ttyS0 console=hvc0' : 'console=ttyS0';
}

export function defaultGuestCmdline(console: 'serial' | 'virtio'): string {
  return `${consoleCmdline(console)} quiet panic=-1`;
}

export const DEFAULT_GUEST_CMDLINE = defaultGuestCmdline('serial');

/**
 * pvpanic-mmio binds the QEMU0001 ACPI device so a panic ends the VM at once; the
 * virtio drivers and e1000 bind tsvisor's PCI devices; ext4 (which needs crc32c,
 * loaded by name at mount time) mounts what the guest makes on them.
 */
const GUEST_MODULES = ['pvpanic_mmio', 'virtio_pci', 'virtio_blk', 'virtio_rng', 'virtio_console', 'virtio_net', 'e1000', 'crc32c_generic', 'ext4'];

/** Where Debian's busybox udhcpc looks for its script: it configures the interface from the lease. */
const UDHCPC_SCRIPT = 'etc/udhcpc/default.script';

const UDHCPC = `#!/bin/sh
case "$1" in
deconfig)
  ip addr flush dev "$interface"
  ip link set "$interface" up
  ;;
bound|renew)
  ip addr flush dev "$interface"
  ip addr add "$ip/\${mask:-24}" dev "$interface"
  [ -n "$router" ] && ip route replace default via "\${router%% *}" dev "$interface"
  if [ -n "$dns" ]; then
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
  fi
  echo "udhcpc: $interface has $ip/\${mask:-24} via \${router:-none}"
  ;;
esac
`;

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
${LOAD_MODULES}
ip link set lo up
# The first network card asks for an address in the background; boot does not wait.
if [ -e /sys/class/net/eth0 ]; then (udhcpc -i eth0 -q -n -t 5 -T 2 >/dev/null 2>&1 &); fi
# The console may have moved to hvc0 now that its driver is loaded.
exec </dev/console >/dev/console 2>&1
hostname tsvisor
echo "${USERSPACE_BANNER} (Linux $(uname -r))"
exec /sbin/init
`;

const INITTAB = `::sysinit:/bin/true
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
`;

const PROFILE = `export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PS1='\\w # '
`;

export interface GuestImage {
  kernel: string;
  initrd: string;
  cmdline: string;
}

/** `extra` adds files to the initramfs (benchmarks bring their tools this way). */
export function defaultGuest(log?: (line: string) => void, extra: readonly CpioEntry[] = []): GuestImage {
  const kernel = fetchKernel(log);
  const busybox = fetchBusybox(log);
  const modules = resolveModules(indexModules(kernel.modulesDir), GUEST_MODULES);
  const initrd = buildInitramfs(`guest-${kernel.version}`, {
    busybox,
    init: INIT,
    modules,
    files: [
      { type: 'file', path: 'etc/inittab', data: Buffer.from(INITTAB) },
      { type: 'file', path: 'etc/profile', data: Buffer.from(PROFILE) },
      { type: 'file', path: UDHCPC_SCRIPT, data: Buffer.from(UDHCPC), mode: 0o755 },
      ...extra,
    ],
  });
  if (!fs.existsSync(kernel.vmlinuz)) throw new Error(`${kernel.vmlinuz} is missing from the cached kernel package`);
  return { kernel: kernel.vmlinuz, initrd, cmdline: DEFAULT_GUEST_CMDLINE };
}
