// The libc calls tsvisor needs, bound once through koffi. Every call that can fail
// goes through a wrapper that throws SysError naming the call and the errno, so no
// caller ever has to remember to check a return value.
import koffi from 'koffi';
import os from 'node:os';

/** libc, loaded once; other modules bind the calls they own from it (unix-socket.ts). */
export const libc = koffi.load('libc.so.6');

const c = {
  open: libc.func('int open(const char *path, int flags, int mode)'),
  close: libc.func('int close(int fd)'),
  ioctlPtr: libc.func('int ioctl(int fd, unsigned long req, void *arg)'),
  ioctlVal: libc.func('int ioctl(int fd, unsigned long req, unsigned long arg)'),
  mmap: libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)'),
  munmap: libc.func('int munmap(void *addr, size_t len)'),
  memfdCreate: libc.func('int memfd_create(const char *name, unsigned int flags)'),
  ftruncate: libc.func('int ftruncate(int fd, int64_t len)'),
  eventfd: libc.func('int eventfd(unsigned int initval, int flags)'),
  gettid: libc.func('int gettid()'),
  getpid: libc.func('int getpid()'),
  tgkill: libc.func('int tgkill(int tgid, int tid, int sig)'),
  read: libc.func('long read(int fd, void *buf, size_t len)'),
  write: libc.func('long write(int fd, const void *buf, size_t len)'),
  fcntl: libc.func('int fcntl(int fd, int cmd, int arg)'),
  epollCreate1: libc.func('int epoll_create1(int flags)'),
  epollCtl: libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)'),
  epollWait: libc.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)'),
  fallocate: libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
  preadv2: libc.func('long preadv2(int fd, const void *iov, int iovcnt, int64_t offset, int flags)'),
  pwritev2: libc.func('long pwritev2(int fd, const void *iov, int iovcnt, int64_t offset, int flags)'),
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  ifNameToIndex: libc.func('unsigned int if_nametoindex(const char *name)'),
};

export const O_RDWR = 0o2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MFD_CLOEXEC = 1;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EINTR = 4;
export const EAGAIN = 11;
export const EOPNOTSUPP = 95;
export const ENOENT = 2;
export const ENODEV = 19;
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
/** struct iovec: u64 base, u64 length. */
export const IOVEC_SIZE = 16;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLLIN = 1;
/** struct epoll_event is packed on x86-64: u32 events, u64 data. */
export const EPOLL_EVENT_SIZE = 12;

export class SysError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call} failed: ${errnoName(errno)} (errno ${errno})`);
    this.name = 'SysError';
  }
}

export function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(os.constants.errno)) {
    if (value === errno) return name;
  }
  return `E${errno}`;
}

function check(call: string, ret: number): number {
  if (ret < 0) throw new SysError(call, koffi.errno());
  return ret;
}

export function openFile(path: string, flags: number): number {
  return check(`open(${path})`, c.open(path, flags | O_CLOEXEC, 0));
}

export function closeFd(fd: number): void {
  check('close', c.close(fd));
}

/**
 * Calls `op` again while a signal interrupts it before it did anything (EINTR):
 * the profiler's SIGPROF, for one, lands on any thread (KVM_CREATE_VM returns EINTR then).
 */
export function restarting(call: string, op: () => number): number {
  for (;;) {
    const ret = op();
    if (ret >= 0) return ret;
    const errno = koffi.errno();
    if (errno !== EINTR) throw new SysError(call, errno);
  }
}

/** An ioctl whose argument is a pointer to a struct held in a Buffer. */
export function ioctlBuf(fd: number, req: number, name: string, arg: Uint8Array): number {
  return restarting(name, () => c.ioctlPtr(fd, req, arg));
}

/** An ioctl whose argument is a plain integer. */
export function ioctlInt(fd: number, req: number, name: string, arg = 0): number {
  return restarting(name, () => c.ioctlVal(fd, req, arg));
}

/** Raw ioctl for the vCPU run loop: returns -errno instead of throwing, so EINTR stays cheap. */
export function ioctlRaw(fd: number, req: number, arg: number): number {
  const ret = c.ioctlVal(fd, req, arg);
  return ret < 0 ? -koffi.errno() : ret;
}

export interface Mapping {
  readonly pointer: unknown;
  readonly address: bigint;
  readonly length: number;
  readonly buffer: ArrayBuffer;
}

export function mmapShared(fd: number, length: number, offset = 0): Mapping {
  const pointer = c.mmap(null, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
  const address = BigInt(koffi.address(pointer));
  if (address === 0xffff_ffff_ffff_ffffn) throw new SysError('mmap', koffi.errno());
  return { pointer, address, length, buffer: koffi.view(pointer, length) };
}

export function munmap(mapping: Mapping): void {
  check('munmap', c.munmap(mapping.pointer, mapping.length));
}

export function memfdCreate(name: string, size: number): number {
  const fd = check('memfd_create', c.memfdCreate(name, MFD_CLOEXEC));
  check('ftruncate(memfd)', c.ftruncate(fd, size));
  return fd;
}

export function eventfd(flags = EFD_CLOEXEC | EFD_NONBLOCK): number {
  return check('eventfd', c.eventfd(0, flags));
}

export function gettid(): number {
  return c.gettid();
}

export function getpid(): number {
  return c.getpid();
}

/** Interrupts one thread of this process (used to take a vCPU out of KVM_RUN). */
export function tgkill(tid: number, signal: number): void {
  check('tgkill', c.tgkill(c.getpid(), tid, signal));
}

const ONE = new BigUint64Array([1n]);

/** Adds one to an eventfd's counter (wakes whoever polls it: KVM for an irqfd, epoll for ours). */
const F_GETFL = 3;
const F_SETFL = 4;

/** Makes `fd`'s file non-blocking (for every holder of it: the flag is on the open file). */
export function setNonBlocking(fd: number): void {
  const flags = check('fcntl(F_GETFL)', c.fcntl(fd, F_GETFL, 0));
  if (!(flags & O_NONBLOCK)) check('fcntl(F_SETFL)', c.fcntl(fd, F_SETFL, flags | O_NONBLOCK));
}

export function eventfdSignal(fd: number): void {
  check('write(eventfd)', Number(c.write(fd, ONE, 8)));
}

/** Reads and clears a non-blocking eventfd; 0 when it was not signalled. */
export function eventfdDrain(fd: number): number {
  const buf = new BigUint64Array(1);
  const n = Number(c.read(fd, buf, 8));
  if (n < 0) {
    const errno = koffi.errno();
    if (errno === EAGAIN) return 0;
    throw new SysError('read(eventfd)', errno);
  }
  return Number(buf[0]);
}

export function epollCreate(): number {
  return check('epoll_create1', c.epollCreate1(O_CLOEXEC));
}

/** Watches `fd` for input; `token` comes back in the event's data field. */
export function epollAdd(epfd: number, fd: number, token: number): void {
  const ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  ev.writeUInt32LE(EPOLLIN, 0);
  ev.writeBigUInt64LE(BigInt(token), 4);
  check('epoll_ctl(ADD)', c.epollCtl(epfd, EPOLL_CTL_ADD, fd, ev));
}

export function epollDelete(epfd: number, fd: number): void {
  check('epoll_ctl(DEL)', c.epollCtl(epfd, EPOLL_CTL_DEL, fd, null));
}

/**
 * epoll_wait on a libuv pool thread, so the event loop never blocks on it; the
 * callback runs on the main thread with the number of events, or -1 on failure
 * (EINTR in practice: errno is not readable from here).
 */
export function epollWaitAsync(epfd: number, events: Buffer, timeoutMs: number, done: (n: number) => void): void {
  c.epollWait.async(epfd, events, Math.floor(events.length / EPOLL_EVENT_SIZE), timeoutMs, (err: unknown, n: number) => done(err ? -1 : n));
}

/**
 * fallocate(2): 0 or the errno. Synchronous, because errno is only reliable on the
 * calling thread; punching or zeroing a range is a metadata update.
 */
export function fallocate(fd: number, mode: number, offset: number, length: number): number {
  return c.fallocate(fd, mode, offset, length) < 0 ? koffi.errno() : 0;
}

/**
 * epoll_wait on the calling thread (a device worker's loop): the number of events,
 * 0 on a timeout or EINTR; throws on any other failure.
 */
export function epollWait(epfd: number, events: Buffer, timeoutMs: number): number {
  const n = c.epollWait(epfd, events, Math.floor(events.length / EPOLL_EVENT_SIZE), timeoutMs);
  if (n >= 0) return n;
  const errno = koffi.errno();
  if (errno === EINTR) return 0;
  throw new SysError('epoll_wait', errno);
}

/** preadv/pwritev of host iovecs on the calling thread: the bytes moved or -errno. */
export function ioVector(op: 'read' | 'write', fd: number, iov: Buffer, offset: number): number {
  const n = Number((op === 'read' ? c.preadv2 : c.pwritev2)(fd, iov, iov.length / IOVEC_SIZE, offset, 0));
  return n < 0 ? -koffi.errno() : n;
}

/** read(2) without throwing: the byte count or -errno (-EAGAIN: nothing to read on a non-blocking fd). */
export function readFd(fd: number, buf: Uint8Array): number {
  const n = Number(c.read(fd, buf, buf.length));
  return n < 0 ? -koffi.errno() : n;
}

/** write(2) without throwing: the byte count or -errno. */
export function writeFd(fd: number, buf: Uint8Array): number {
  const n = Number(c.write(fd, buf, buf.length));
  return n < 0 ? -koffi.errno() : n;
}

const AF_INET = 2;
const SOCK_DGRAM = 2;

/** A datagram socket: the handle network-interface ioctls (SIOC*) go through. */
export function controlSocket(): number {
  return check('socket', c.socket(AF_INET, SOCK_DGRAM | O_CLOEXEC, 0));
}

/** The kernel's index for a network interface, or 0 when there is none by that name. */
export function ifNameToIndex(name: string): number {
  return c.ifNameToIndex(name);
}
