import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { ExitReason } from '../../src/kvm/ioctls.js';
import { Kvm } from '../../src/kvm/kvm.js';
import { SysError } from '../../src/host/libc.js';
import { outLoop, runRealMode } from '../support/tiny-guest.js';

const noKvm = !fs.existsSync('/dev/kvm') && 'no /dev/kvm on this machine';

test('KVM: API version 12, and a failed ioctl names itself and its errno', { skip: noKvm }, () => {
  const kvm = Kvm.open();
  assert.equal(kvm.apiVersion(), 12);
  assert.ok(kvm.supportedCpuid().some((e) => e.function === 0));
  const vm = kvm.createVm();
  assert.throws(
    () => vm.setUserMemoryRegion(0, 0x1001, 0x1000, 0n),
    (e: Error) => e instanceof SysError && /KVM_SET_USER_MEMORY_REGION failed: EINVAL/.test(e.message),
  );
  vm.close();
  kvm.close();
});

test("a real-mode guest's port writes reach bus devices through the vCPU thread", { skip: noKvm }, async () => {
  const writes: number[] = [];
  let loopWrites = 0;
  const run = await runRealMode(outLoop(5), [
    [{ name: 'loop', read: (_o, d) => d.fill(0), write: () => loopWrites++ }, 0x10, 1],
    [{ name: 'com1', read: (_o, d) => d.fill(0), write: (_o, d) => writes.push(d[0]!) }, 0x3f8, 8],
  ]);
  assert.equal(run.stop.reason, ExitReason.HLT);
  assert.equal(loopWrites, 5);
  assert.deepEqual(writes, [0x41]);
  assert.equal(run.exits.io, 6);
  assert.equal(run.exits.hlt, 1);
});
