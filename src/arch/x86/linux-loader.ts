// Loads a Linux kernel per the x86 boot protocol (Documentation/arch/x86/boot.rst):
// a bzImage's protected-mode part or an ELF vmlinux's PT_LOAD segments, the
// command line, the initrd, and the zero page (boot_params) that describes them.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { encodeE820, type E820Entry, E820_MAX_ENTRIES } from './e820.js';
import { CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, ZERO_PAGE_START } from './layout.js';

export class KernelImageError extends Error {
  override name = 'KernelImageError';
}

/** Offsets inside boot_params (the zero page). The setup header starts at 0x1f1. */
export const BP = {
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  setupSects: 0x1f1,
  vidMode: 0x1fa,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  initSize: 0x260,
  e820Table: 0x2d0,
} as const;

const HDRS = 0x53726448; // "HdrS"
const BOOT_FLAG = 0xaa55;
const LOADED_HIGH = 0x01;
const CAN_USE_HEAP = 0x80;
const XLF_KERNEL_64 = 0x01;
const MIN_PROTOCOL = 0x020c; // 2.12: xloadflags and the 64-bit entry point
const LOADER_UNDEFINED = 0xff;

export interface LoadedKernel {
  /** Guest-physical 64-bit entry point. */
  entry: number;
  /** First byte past what the kernel needs (its image, or init_size for a bzImage). */
  end: number;
  /** The setup header to copy into the zero page. */
  setupHeader: Buffer;
  cmdlineSize: number;
  initrdAddrMax: number;
}

export interface BzImageInfo {
  protocol: number;
  setupSects: number;
  payload: Buffer;
  initSize: number;
  header: Buffer;
  cmdlineSize: number;
  initrdAddrMax: number;
}

export function parseBzImage(image: Buffer): BzImageInfo {
  if (image.length < 0x1000 || image.readUInt32LE(BP.header) !== HDRS) {
    throw new KernelImageError('not a bzImage (no "HdrS" boot header) and not an ELF vmlinux');
  }
  const protocol = image.readUInt16LE(BP.version);
  if (protocol < MIN_PROTOCOL) {
    throw new KernelImageError(`boot protocol ${fmtProtocol(protocol)} is too old; tsvisor needs 2.12 or later`);
  }
  if (!(image.readUInt16LE(BP.xloadflags) & XLF_KERNEL_64)) {
    throw new KernelImageError('kernel has no 64-bit entry point (XLF_KERNEL_64 unset)');
  }
  const setupSects = image[BP.setupSects] || 4;
  const payloadStart = (setupSects + 1) * 512;
  if (payloadStart >= image.length) throw new KernelImageError('bzImage is truncated');
  const headerEnd = 0x202 + image[0x201]!;
  return {
    protocol,
    setupSects,
    payload: image.subarray(payloadStart),
    initSize: image.readUInt32LE(BP.initSize),
    header: Buffer.from(image.subarray(BP.setupSects, headerEnd)),
    cmdlineSize: image.readUInt32LE(BP.cmdlineSize),
    initrdAddrMax: image.readUInt32LE(BP.initrdAddrMax),
  };
}

function fmtProtocol(v: number): string {
  return `${v >> 8}.${(v & 0xff).toString().padStart(2, '0')}`;
}

export function isElf(image: Buffer): boolean {
  return image.length >= 64 && image.readUInt32BE(0) === 0x7f454c46;
}

/** Throws KernelImageError unless the image is an ELF vmlinux or a usable bzImage. */
export function checkKernelImage(image: Buffer): void {
  if (!isElf(image)) parseBzImage(image);
}

/** Loads an image of either kind into guest memory. */
export function loadKernel(mem: GuestMemory, image: Buffer): LoadedKernel {
  return isElf(image) ? loadElf(mem, image) : loadBzImage(mem, image);
}

function loadBzImage(mem: GuestMemory, image: Buffer): LoadedKernel {
  const info = parseBzImage(image);
  const end = HIMEM_START + Math.max(info.payload.length, info.initSize);
  if (!mem.contains(HIMEM_START, end - HIMEM_START)) {
    throw new KernelImageError(`kernel needs ${end >> 20} MiB of guest memory to decompress`);
  }
  mem.write(HIMEM_START, info.payload);
  return {
    entry: HIMEM_START + 0x200, // startup_64 sits 0x200 into the protected-mode code
    end,
    setupHeader: info.header,
    cmdlineSize: info.cmdlineSize,
    initrdAddrMax: info.initrdAddrMax,
  };
}

const PT_LOAD = 1;
const EM_X86_64 = 62;
/** Linux's x86_64 kernel text mapping: virtual = physical + this. */
const KERNEL_MAP_BASE = 0xffffffff80000000n;

function loadElf(mem: GuestMemory, image: Buffer): LoadedKernel {
  if (image[4] !== 2 || image[5] !== 1) throw new KernelImageError('ELF kernel is not 64-bit little-endian');
  if (image.readUInt16LE(18) !== EM_X86_64) throw new KernelImageError('ELF kernel is not for x86_64');
  const phoff = Number(image.readBigUInt64LE(32));
  const phentsize = image.readUInt16LE(54);
  const phnum = image.readUInt16LE(56);
  if (phentsize < 56 || phoff + phnum * phentsize > image.length) throw new KernelImageError('ELF program headers are truncated');
  let end = 0;
  let loaded = 0;
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (image.readUInt32LE(ph) !== PT_LOAD) continue;
    const offset = Number(image.readBigUInt64LE(ph + 8));
    const paddr = Number(image.readBigUInt64LE(ph + 24));
    const filesz = Number(image.readBigUInt64LE(ph + 32));
    const memsz = Number(image.readBigUInt64LE(ph + 40));
    if (filesz > memsz || offset + filesz > image.length) throw new KernelImageError('ELF segment is truncated');
    if (!mem.contains(paddr, memsz)) throw new KernelImageError(`ELF segment at 0x${paddr.toString(16)} does not fit in guest memory`);
    mem.write(paddr, image.subarray(offset, offset + filesz));
    mem.fill(paddr + filesz, memsz - filesz);
    end = Math.max(end, paddr + memsz);
    loaded++;
  }
  if (loaded === 0) throw new KernelImageError('ELF kernel has no loadable segments');
  let entry = image.readBigUInt64LE(24);
  if (entry >= KERNEL_MAP_BASE) entry -= KERNEL_MAP_BASE;
  // A vmlinux has no setup header of its own; describe it the way a bzImage would.
  const header = Buffer.alloc(0x202 + 0x6a - BP.setupSects);
  const at = (off: number) => off - BP.setupSects;
  header.writeUInt16LE(BOOT_FLAG, at(BP.bootFlag));
  header.writeUInt32LE(HDRS, at(BP.header));
  header.writeUInt16LE(MIN_PROTOCOL, at(BP.version));
  header.writeUInt32LE(0x01000000, at(BP.kernelAlignment));
  header.writeUInt32LE(0x7fffffff, at(BP.initrdAddrMax));
  header.writeUInt32LE(CMDLINE_MAX_SIZE - 1, at(BP.cmdlineSize));
  return { entry: Number(entry), end, setupHeader: header, cmdlineSize: CMDLINE_MAX_SIZE - 1, initrdAddrMax: 0x7fffffff };
}

export interface BootParamsInput {
  kernel: LoadedKernel;
  cmdline: string;
  initrd?: { addr: number; size: number };
  e820: readonly E820Entry[];
  rsdpAddr: number;
}

export function writeCmdline(mem: GuestMemory, kernel: LoadedKernel, cmdline: string): void {
  const bytes = Buffer.from(cmdline + '\0', 'latin1');
  const max = Math.min(kernel.cmdlineSize || 255, CMDLINE_MAX_SIZE - 1);
  if (bytes.length - 1 > max) throw new KernelImageError(`kernel command line is ${bytes.length - 1} bytes; this kernel takes at most ${max}`);
  mem.write(CMDLINE_START, bytes);
}

/** Puts the initrd as high in low RAM as the kernel allows, page aligned, above the kernel. */
export function loadInitrd(mem: GuestMemory, kernel: LoadedKernel, initrd: Buffer): { addr: number; size: number } {
  const lowEnd = mem.regions[0]!.end;
  const top = Math.min(lowEnd, kernel.initrdAddrMax + 1);
  const addr = Math.floor((top - initrd.length) / 4096) * 4096;
  if (addr < kernel.end) {
    throw new KernelImageError(
      `initrd (${(initrd.length / 1048576).toFixed(1)} MiB) does not fit in guest memory beside the kernel; give the guest more memory`,
    );
  }
  mem.write(addr, initrd);
  return { addr, size: initrd.length };
}

export function buildZeroPage(input: BootParamsInput): Buffer {
  const zp = Buffer.alloc(4096);
  input.kernel.setupHeader.copy(zp, BP.setupSects);
  zp[BP.typeOfLoader] = LOADER_UNDEFINED;
  zp[BP.loadflags] = zp[BP.loadflags]! | LOADED_HIGH | CAN_USE_HEAP;
  zp.writeUInt16LE(0xfe00, BP.heapEndPtr);
  zp.writeUInt16LE(0xffff, BP.vidMode);
  zp.writeUInt32LE(CMDLINE_START, BP.cmdLinePtr);
  zp.writeUInt32LE(0, BP.extCmdLinePtr);
  if (input.initrd) {
    zp.writeUInt32LE(input.initrd.addr % 2 ** 32, BP.ramdiskImage);
    zp.writeUInt32LE(input.initrd.size % 2 ** 32, BP.ramdiskSize);
    zp.writeUInt32LE(Math.floor(input.initrd.addr / 2 ** 32), BP.extRamdiskImage);
    zp.writeUInt32LE(Math.floor(input.initrd.size / 2 ** 32), BP.extRamdiskSize);
  }
  if (input.e820.length > E820_MAX_ENTRIES) throw new Error('too many e820 entries');
  zp[BP.e820Entries] = input.e820.length;
  encodeE820(input.e820).copy(zp, BP.e820Table);
  zp.writeBigUInt64LE(BigInt(input.rsdpAddr), BP.acpiRsdpAddr);
  return zp;
}

export function writeZeroPage(mem: GuestMemory, zeroPage: Buffer): void {
  mem.write(ZERO_PAGE_START, zeroPage);
}
