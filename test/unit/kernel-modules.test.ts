import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { indexModules, resolveModules } from '../../src/guest/kernel-modules.js';

test('modules load after their .modinfo dependencies', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvisor-mods-'));
  const kdir = path.join(dir, 'kernel', 'drivers');
  fs.mkdirSync(kdir, { recursive: true });
  const mod = (name: string, deps: string) =>
    fs.writeFileSync(path.join(kdir, `${name}.ko`), Buffer.from(`\x7fELF junk\0license=GPL\0depends=${deps}\0name=${name}\0`));
  mod('kvm-amd', 'kvm,ccp');
  mod('kvm', 'irqbypass');
  mod('irqbypass', '');
  mod('ccp', '');
  const order = resolveModules(indexModules(dir), ['kvm_amd'], ['not_there']).map((m) => m.name);
  assert.deepEqual(order, ['irqbypass', 'kvm', 'ccp', 'kvm_amd']);
  assert.throws(() => resolveModules(indexModules(dir), ['missing']), /not in this kernel package/);
  fs.rmSync(dir, { recursive: true });
});
