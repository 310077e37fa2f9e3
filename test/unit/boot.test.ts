import assert from 'node:assert/strict';
import { test } from 'node:test';
import { e820Map, E820_RAM, E820_RESERVED } from '../../src/arch/x86/e820.js';
import { GiB, HIMEM_START, MiB, ramRegions, ZERO_PAGE_START, CMDLINE_START } from '../../src/arch/x86/layout.js';
import { BP, buildZeroPage, KernelImageError, loadInitrd, loadKernel, parseBzImage, writeCmdline } from '../../src/arch/x86/linux-loader.js';
import { bootRegs, BOOT_GDT, segmentFromGdt, writeBootTables } from '../../src/arch/x86/cpu-state.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';

/** A minimal bzImage: boot sector + 4 setup sectors + a recognisable payload. */
export function fakeBzImage(opts: { version?: number; xloadflags?: number; payload?: number; initSize?: number } = {}): Buffer {
  const img = Buffer.alloc(5 * 512 + (opts.payload ?? 8192));
  img[BP.setupSects] = 4;
  img.writeUInt16LE(0xaa55, BP.bootFlag);
  img[0x201] = 0x66; // setup header ends at 0x202 + 0x66
  img.write('HdrS', BP.header, 'ascii');
  img.writeUInt16LE(opts.version ?? 0x020f, BP.version);
  img.writeUInt16LE(opts.xloadflags ?? 1, BP.xloadflags);
  img.writeUInt32LE(0x7fffffff, BP.initrdAddrMax);
  img.writeUInt32LE(2048, BP.cmdlineSize);
  img.writeUInt32LE(opts.initSize ?? 0x10000, BP.initSize);
  img.fill(0xab, 5 * 512);
  return img;
}

const mem = (size = 64 * MiB) => GuestMemory.fromBuffers(ramRegions(size));

test('RAM above 3 GiB moves above the 4 GiB boundary', () => {
  assert.deepEqual(ramRegions(512 * MiB), [{ start: 0, size: 512 * MiB }]);
  assert.deepEqual(ramRegions(4 * GiB), [
    { start: 0, size: 3 * GiB },
    { start: 4 * GiB, size: GiB },
  ]);
});

test('e820 map: low RAM, reserved BIOS area, RAM from 1 MiB, high RAM', () => {
  const map = e820Map(ramRegions(4 * GiB));
  assert.deepEqual(map, [
    { addr: 0, size: 0x9fc00, type: E820_RAM },
    { addr: 0xe0000, size: 0x20000, type: E820_RESERVED },
    { addr: HIMEM_START, size: 3 * GiB - HIMEM_START, type: E820_RAM },
    { addr: 4 * GiB, size: GiB, type: E820_RAM },
  ]);
});

test('bzImage: payload loads at 1 MiB, entry is startup_64', () => {
  const m = mem();
  const k = loadKernel(m, fakeBzImage());
  assert.equal(k.entry, HIMEM_START + 0x200);
  assert.equal(m.readU8(HIMEM_START), 0xab);
  assert.equal(m.readU8(HIMEM_START + 8191), 0xab);
  assert.equal(k.end, HIMEM_START + 0x10000);
});

test('bzImage: wrong magic, old protocol and 32-bit-only kernels are refused', () => {
  assert.throws(() => parseBzImage(Buffer.alloc(8192)), /not a bzImage/);
  assert.throws(() => parseBzImage(fakeBzImage({ version: 0x0206 })), /2\.06 is too old/);
  assert.throws(() => parseBzImage(fakeBzImage({ xloadflags: 0 })), /64-bit entry/);
  assert.throws(() => loadKernel(mem(), fakeBzImage({ initSize: 128 * MiB })), KernelImageError);
});

test('zero page carries the setup header, loader, cmdline, initrd, e820 and RSDP', () => {
  const m = mem();
  const kernel = loadKernel(m, fakeBzImage());
  writeCmdline(m, kernel, 'console=ttyS0');
  const initrd = loadInitrd(m, kernel, Buffer.alloc(1 * MiB, 7));
  assert.equal(initrd.addr % 4096, 0);
  assert.ok(initrd.addr + initrd.size <= 64 * MiB);
  assert.ok(initrd.addr >= kernel.end);
  const e820 = e820Map(ramRegions(64 * MiB));
  const zp = buildZeroPage({ kernel, cmdline: 'console=ttyS0', initrd, e820, rsdpAddr: 0xe0000 });
  assert.equal(zp.readUInt32LE(BP.header), 0x53726448);
  assert.equal(zp.readUInt16LE(BP.bootFlag), 0xaa55);
  assert.equal(zp[BP.typeOfLoader], 0xff);
  assert.equal(zp[BP.loadflags]! & 0x81, 0x81);
  assert.equal(zp.readUInt32LE(BP.cmdLinePtr), CMDLINE_START);
  assert.equal(zp.readUInt32LE(BP.ramdiskImage), initrd.addr);
  assert.equal(zp.readUInt32LE(BP.ramdiskSize), 1 * MiB);
  assert.equal(zp[BP.e820Entries], e820.length);
  assert.equal(zp.readBigUInt64LE(BP.e820Table + 20), 0xe0000n);
  assert.equal(zp.readBigUInt64LE(BP.acpiRsdpAddr), 0xe0000n);
  assert.equal(Buffer.from(m.read(CMDLINE_START, 14)).toString('latin1'), 'console=ttyS0\0');
});

test('command line longer than the kernel accepts is refused', () => {
  const m = mem();
  const kernel = loadKernel(m, fakeBzImage());
  assert.throws(() => writeCmdline(m, kernel, 'x'.repeat(4000)), /at most 2048/);
});

test('initrd too large for guest memory is refused', () => {
  const m = mem();
  const kernel = loadKernel(m, fakeBzImage());
  assert.throws(() => loadInitrd(m, kernel, Buffer.alloc(63 * MiB)), /does not fit/);
});

test('ELF vmlinux: PT_LOAD segments at their physical addresses, bss zeroed', () => {
  const elf = Buffer.alloc(0x2000);
  elf.writeUInt32BE(0x7f454c46, 0);
  elf[4] = 2;
  elf[5] = 1;
  elf.writeUInt16LE(2, 16);
  elf.writeUInt16LE(62, 18);
  elf.writeBigUInt64LE(0xffffffff81000000n, 24); // virtual entry
  elf.writeBigUInt64LE(64n, 32); // phoff
  elf.writeUInt16LE(56, 54);
  elf.writeUInt16LE(1, 56);
  const ph = 64;
  elf.writeUInt32LE(1, ph);
  elf.writeBigUInt64LE(0x1000n, ph + 8);
  elf.writeBigUInt64LE(0x1000000n, ph + 24);
  elf.writeBigUInt64LE(0x1000n, ph + 32);
  elf.writeBigUInt64LE(0x3000n, ph + 40);
  elf.fill(0xcd, 0x1000);
  const m = mem();
  m.fill(0x1000000, 0x3000, 0x77);
  const k = loadKernel(m, elf);
  assert.equal(k.entry, 0x1000000);
  assert.equal(m.readU8(0x1000000), 0xcd);
  assert.equal(m.readU8(0x1001fff), 0);
  assert.equal(k.end, 0x1003000);
  assert.equal(k.setupHeader.readUInt32LE(BP.header - BP.setupSects), 0x53726448);
});

test('boot state: flat long-mode GDT, identity page tables, rsi points at the zero page', () => {
  const m = mem();
  writeBootTables(m);
  const code = segmentFromGdt(BOOT_GDT[1]!, 1);
  assert.equal(code.l, 1);
  assert.equal(code.selector, 8);
  assert.equal(code.limit, 0xffffffff);
  assert.equal(m.readU64(0x9000), 0xa003n);
  assert.equal(m.readU64(0xb000 + 8 * 511), (511n << 21n) | 0x83n);
  const regs = bootRegs(0x100200);
  assert.equal(regs.rsi, BigInt(ZERO_PAGE_START));
  assert.equal(regs.rip, 0x100200n);
});
