// The libc calls tsvisor needs, bound once through koffi. Every call that can fail
// goes through a wrapper that throws SysError naming the call and the errno, so no
// caller ever has to remember to check a return value.
import koffi from 'koffi';
import os from 'node:os';

const libc = koffi.load('libc.so.6');

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
};

export const O_RDWR = 0o2;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MFD_CLOEXEC = 1;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EINTR = 4;
export const EAGAIN = 11;

export class SysError extends Error {
  constructor(readonly call: string, readonly errno: number) {
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

/** An ioctl whose argument is a pointer to a struct held in a Buffer. */
export function ioctlBuf(fd: number, req: number, name: string, arg: Uint8Array): number {
  return check(name, c.ioctlPtr(fd, req, arg));
}

/** An ioctl whose argument is a plain integer. */
export function ioctlInt(fd: number, req: number, name: string, arg = 0): number {
  return check(name, c.ioctlVal(fd, req, arg));
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

/** Interrupts one thread of this process (used to kick a vCPU out of KVM_RUN). */
export function tgkill(tid: number, signal: number): void {
  check('tgkill', c.tgkill(c.getpid(), tid, signal));
}
