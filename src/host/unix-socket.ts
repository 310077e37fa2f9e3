// Unix-domain stream sockets with fd passing (SCM_RIGHTS), for vhost-user: Node's
// net module cannot send or receive file descriptors, so this binds the socket
// calls through koffi, following libc.ts (wrappers throw SysError, EINTR retried).
import koffi from 'koffi';
import fs from 'node:fs';
import { closeFd, EAGAIN, EINTR, libc, restarting, SysError } from './libc.js';

const c = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  socketpair: libc.func('int socketpair(int domain, int type, int protocol, void *sv)'),
  bind: libc.func('int bind(int fd, const void *addr, uint32_t len)'),
  listen: libc.func('int listen(int fd, int backlog)'),
  accept4: libc.func('int accept4(int fd, void *addr, void *addrlen, int flags)'),
  connect: libc.func('int connect(int fd, const void *addr, uint32_t len)'),
  sendmsg: libc.func('long sendmsg(int fd, const void *msg, int flags)'),
  recvmsg: libc.func('long recvmsg(int fd, void *msg, int flags)'),
  poll: libc.func('int poll(void *fds, unsigned long nfds, int timeout)'),
};

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const POLLIN = 0x1;
const POLLOUT = 0x4;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;
const EBADF = 9;
const EISCONN = 106;
const EALREADY = 114;
const EINPROGRESS = 115;
const EMSGSIZE = 90;

/** The most fds one sendWithFds carries (vhost-user sends at most 8 per message; 32 leaves room). */
export const MAX_SEND_FDS = 32;
/** sun_path is 108 bytes including the terminating NUL. */
const SUN_PATH_MAX = 107;

// struct msghdr (x86-64): name@0, namelen@8, iov@16, iovlen@24, control@32, controllen@40, flags@48; 56 bytes.
const MSGHDR_SIZE = 56;
const IOV_OFFSET = MSGHDR_SIZE; // one struct iovec {base, len} right after the header
const CONTROL_OFFSET = IOV_OFFSET + 16;
// struct cmsghdr: u64 len, i32 level, i32 type, then the data (8-aligned).
const CMSG_HDR = 16;
const align8 = (n: number) => (n + 7) & ~7;
const cmsgSpace = (fds: number) => CMSG_HDR + align8(fds * 4);

/** Closes without throwing: for cleanup on a path that is already failing. */
function closeQuietly(fd: number): void {
  try {
    closeFd(fd);
  } catch {
    // Nothing useful to do; the original error matters more.
  }
}

function sockaddrUn(path: string): Buffer {
  const bytes = Buffer.from(path, 'utf8');
  if (bytes.length === 0 || bytes.length > SUN_PATH_MAX || bytes.includes(0)) {
    throw new Error(`unix socket path must be 1..${SUN_PATH_MAX} bytes without NUL (got ${bytes.length} bytes): ${path}`);
  }
  const addr = Buffer.alloc(2 + bytes.length + 1); // family, path, NUL
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  return addr;
}

/** Makes a socket and runs `setup` on it, closing the socket if setup throws. */
function withSocket(type: number, setup: (fd: number) => void): number {
  const fd = restarting('socket(AF_UNIX)', () => c.socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  try {
    setup(fd);
  } catch (err) {
    closeQuietly(fd);
    throw err;
  }
  return fd;
}

/** A listening socket at `path` (a stale socket file there is removed first), non-blocking, close-on-exec. */
export function unixListen(path: string, backlog = 16): number {
  const addr = sockaddrUn(path);
  // Only a socket is taken for stale; any other file stays, and bind reports EADDRINUSE.
  if (fs.lstatSync(path, { throwIfNoEntry: false })?.isSocket()) fs.unlinkSync(path);
  return withSocket(SOCK_STREAM | SOCK_NONBLOCK, (fd) => {
    restarting(`bind(${path})`, () => c.bind(fd, addr, addr.length));
    restarting(`listen(${path})`, () => c.listen(fd, backlog));
  });
}

/** Connects to `path`; blocking fd, close-on-exec. Throws SysError (ENOENT / ECONNREFUSED tell the caller the peer is not there). */
export function unixConnect(path: string): number {
  const addr = sockaddrUn(path);
  return withSocket(SOCK_STREAM, (fd) => {
    for (let interrupted = false; ;) {
      if (c.connect(fd, addr, addr.length) >= 0) return;
      const errno = koffi.errno();
      // An interrupted connect carries on in the kernel: wait for it, then ask again.
      if (errno === EINTR || (interrupted && (errno === EALREADY || errno === EINPROGRESS))) {
        interrupted = true;
        pollOnce(fd, POLLOUT, -1);
        continue;
      }
      if (interrupted && errno === EISCONN) return;
      throw new SysError(`connect(${path})`, errno);
    }
  });
}

/** Accepts one connection (non-blocking listener): the new fd (blocking, close-on-exec), or undefined when none is waiting. */
export function unixAccept(listenFd: number): number | undefined {
  for (;;) {
    // accept4 does not inherit O_NONBLOCK from the listener, so the new fd is blocking.
    const fd = c.accept4(listenFd, null, null, SOCK_CLOEXEC);
    if (fd >= 0) return fd;
    const errno = koffi.errno();
    if (errno === EAGAIN) return undefined;
    if (errno !== EINTR) throw new SysError('accept4', errno);
  }
}

/** Fills the msghdr + iovec at the front of `scratch`; the control area follows them. */
function fillMsghdr(scratch: Buffer, data: Uint8Array, offset: number, controlLen: number): void {
  scratch.fill(0, 0, CONTROL_OFFSET);
  scratch.writeBigUInt64LE(koffi.address(scratch) + BigInt(IOV_OFFSET), 16);
  scratch.writeBigUInt64LE(1n, 24);
  if (controlLen > 0) {
    scratch.writeBigUInt64LE(koffi.address(scratch) + BigInt(CONTROL_OFFSET), 32);
    scratch.writeBigUInt64LE(BigInt(controlLen), 40);
  }
  scratch.writeBigUInt64LE(koffi.address(data) + BigInt(offset), IOV_OFFSET);
  scratch.writeBigUInt64LE(BigInt(data.length - offset), IOV_OFFSET + 8);
}

/** sendmsg with MSG_NOSIGNAL; `fds` go along as one SCM_RIGHTS message (at most 32). Sends all of `data` (loops on partial sends, retries EINTR). Throws SysError (EPIPE when the peer is gone). */
export function sendWithFds(fd: number, data: Uint8Array, fds: readonly number[] = []): void {
  if (fds.length > MAX_SEND_FDS) throw new Error(`sendWithFds: ${fds.length} fds, at most ${MAX_SEND_FDS}`);
  // A stream socket drops ancillary data sent with no bytes, so fds need at least one.
  if (fds.length > 0 && data.length === 0) throw new Error('sendWithFds: fds need at least one byte of data to travel with');
  const controlLen = fds.length > 0 ? cmsgSpace(fds.length) : 0;
  const scratch = Buffer.alloc(CONTROL_OFFSET + controlLen);
  if (controlLen > 0) {
    scratch.writeBigUInt64LE(BigInt(CMSG_HDR + fds.length * 4), CONTROL_OFFSET);
    scratch.writeInt32LE(SOL_SOCKET, CONTROL_OFFSET + 8);
    scratch.writeInt32LE(SCM_RIGHTS, CONTROL_OFFSET + 12);
    fds.forEach((f, i) => scratch.writeInt32LE(f, CONTROL_OFFSET + CMSG_HDR + 4 * i));
  }
  let sent = 0;
  while (sent < data.length) {
    // The fds ride with the first chunk only: once any byte went, they went too.
    fillMsghdr(scratch, data, sent, sent === 0 ? controlLen : 0);
    const n = Number(c.sendmsg(fd, scratch, MSG_NOSIGNAL));
    if (n >= 0) {
      sent += n;
      continue;
    }
    const errno = koffi.errno();
    if (errno === EAGAIN)
      pollOnce(fd, POLLOUT, -1); // a non-blocking fd that is full: wait for room
    else if (errno !== EINTR) throw new SysError('sendmsg', errno);
  }
}

/** One recvmsg into `buf` with MSG_CMSG_CLOEXEC (and MSG_DONTWAIT when `nonBlocking`): bytes read (0 = the peer closed) and the fds that came with them. undefined when nothing is waiting (EAGAIN). If the control data was truncated (MSG_CTRUNC) every fd that did arrive is closed and a SysError-like Error is thrown — the caller must never leak fds a hostile peer sends. */
export function recvWithFds(fd: number, buf: Uint8Array, maxFds: number, nonBlocking = false): { bytes: number; fds: number[] } | undefined {
  // A zero-length read would return 0 and look like the peer closing.
  if (buf.length === 0) throw new Error('recvWithFds: empty buffer');
  const controlLen = maxFds > 0 ? cmsgSpace(maxFds) : 0;
  const scratch = Buffer.alloc(CONTROL_OFFSET + controlLen);
  const flags = MSG_CMSG_CLOEXEC | (nonBlocking ? MSG_DONTWAIT : 0);
  let bytes: number;
  for (;;) {
    fillMsghdr(scratch, buf, 0, controlLen);
    bytes = Number(c.recvmsg(fd, scratch, flags));
    if (bytes >= 0) break;
    const errno = koffi.errno();
    if (errno === EAGAIN) return undefined;
    if (errno !== EINTR) throw new SysError('recvmsg', errno);
  }
  // Collect every SCM_RIGHTS fd the kernel installed, whatever else happens next.
  const fds: number[] = [];
  const used = Number(scratch.readBigUInt64LE(40));
  for (let at = 0; at + CMSG_HDR <= used;) {
    const len = Number(scratch.readBigUInt64LE(CONTROL_OFFSET + at));
    if (len < CMSG_HDR || at + len > used) break;
    const level = scratch.readInt32LE(CONTROL_OFFSET + at + 8);
    const type = scratch.readInt32LE(CONTROL_OFFSET + at + 12);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let i = 0; i < Math.floor((len - CMSG_HDR) / 4); i++) fds.push(scratch.readInt32LE(CONTROL_OFFSET + at + CMSG_HDR + 4 * i));
    }
    at += align8(len);
  }
  if (scratch.readInt32LE(48) & MSG_CTRUNC) {
    fds.forEach(closeQuietly);
    throw new SysError(`recvmsg (control data truncated: the peer sent more than ${maxFds} fds)`, EMSGSIZE);
  }
  return { bytes, fds };
}

/** One poll(2) of `fd` for `events`, retrying EINTR with the time left: the revents, 0 on a timeout. */
function pollOnce(fd: number, events: number, timeoutMs: number): number {
  const pfd = Buffer.alloc(8); // struct pollfd: i32 fd, i16 events, i16 revents
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(events, 4);
  const deadline = timeoutMs < 0 ? Infinity : Date.now() + timeoutMs;
  for (;;) {
    const wait = deadline === Infinity ? -1 : Math.max(0, deadline - Date.now());
    const n = c.poll(pfd, 1, wait);
    if (n > 0) {
      const revents = pfd.readInt16LE(6);
      if (revents & POLLNVAL) throw new SysError('poll', EBADF);
      return revents;
    }
    if (n === 0) return 0;
    const errno = koffi.errno();
    if (errno !== EINTR) throw new SysError('poll', errno);
  }
}

/** Waits up to `timeoutMs` for `fd` to be readable (or hung up): true if it is. */
export function waitReadable(fd: number, timeoutMs: number): boolean {
  return (pollOnce(fd, POLLIN, timeoutMs) & (POLLIN | POLLHUP | POLLERR)) !== 0;
}

/** A connected pair (socketpair AF_UNIX SOCK_STREAM, close-on-exec), for tests and in-process peers. */
export function unixPair(): [number, number] {
  const sv = new Int32Array(2);
  restarting('socketpair(AF_UNIX)', () => c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  return [sv[0]!, sv[1]!];
}
