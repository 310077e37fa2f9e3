import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pkgLength, namePath } from '../../src/arch/x86/acpi/aml.js';
import { checksum, dsdt, fadt, madt, rsdp, writeAcpiTables, xsdt, PM1A_CNT_BLK } from '../../src/arch/x86/acpi/tables.js';
import { ramRegions, MiB } from '../../src/arch/x86/layout.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';

test('every table sums to zero and records its own length', () => {
  for (const t of [dsdt(), fadt(0x1234), madt(4), xsdt([1, 2])]) {
    assert.equal(checksum(t), 0, t.subarray(0, 4).toString());
    assert.equal(t.readUInt32LE(4), t.length);
  }
});

test('RSDP: both checksums hold and it points at the XSDT', () => {
  const r = rsdp(0xe0100);
  assert.equal(r.subarray(0, 8).toString(), 'RSD PTR ');
  assert.equal(checksum(r.subarray(0, 20)), 0);
  assert.equal(checksum(r), 0);
  assert.equal(r.readBigUInt64LE(24), 0xe0100n);
});

test('FADT points at the DSDT and the PM1a control block', () => {
  const f = fadt(0xe0040);
  assert.equal(f.length, 276);
  assert.equal(f.readUInt32LE(40), 0xe0040);
  assert.equal(f.readBigUInt64LE(140), 0xe0040n);
  assert.equal(f.readUInt32LE(64), PM1A_CNT_BLK);
  assert.equal(f.readBigUInt64LE(172 + 4), BigInt(PM1A_CNT_BLK));
});

test('MADT lists one enabled local APIC per vCPU and the I/O APIC', () => {
  const m = madt(3);
  const entries: number[] = [];
  for (let at = 44; at < m.length; at += m[at + 1]!) entries.push(m[at]!);
  assert.deepEqual(entries, [0, 0, 0, 1, 2, 4]);
  assert.equal(m.readUInt32LE(36), 0xfee00000);
});

test('DSDT declares \\_S5 and the pvpanic device', () => {
  const d = dsdt();
  assert.ok(d.includes(Buffer.from('_S5_')));
  assert.ok(d.includes(Buffer.from('QEMU0001\0')));
});

test('AML package lengths use 1 to 4 bytes', () => {
  assert.deepEqual(pkgLength(5), [6]);
  assert.deepEqual(pkgLength(62), [63]);
  assert.deepEqual(pkgLength(63), [0x41, 0x04]); // 65 bytes with its two length bytes
  assert.deepEqual(pkgLength(4093), [0x4f, 0xff]);
  assert.equal(pkgLength(5000).length, 3);
  assert.deepEqual(namePath('\\_SB.PEVT'), [0x5c, 0x2e, ...Buffer.from('_SB_PEVT')]);
});

test('tables land in guest memory, reachable from the RSDP', () => {
  const m = GuestMemory.fromBuffers(ramRegions(64 * MiB));
  const at = writeAcpiTables(m, 2);
  const xsdtAddr = Number(m.readU64(at + 24));
  assert.equal(Buffer.from(m.read(xsdtAddr, 4)).toString(), 'XSDT');
  const fadtAddr = Number(m.readU64(xsdtAddr + 36));
  assert.equal(Buffer.from(m.read(fadtAddr, 4)).toString(), 'FACP');
  const len = m.readU32(fadtAddr + 4);
  assert.equal(checksum(m.read(fadtAddr, len)), 0);
});
