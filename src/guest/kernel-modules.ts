// Finds kernel modules in an unpacked Debian kernel package and orders them so
// each loads after what it depends on. Dependencies come from each module's own
// .modinfo section ("depends=a,b"), so no depmod run is needed.
import fs from 'node:fs';
import path from 'node:path';

export interface KernelModule {
  name: string;
  file: string;
}

const normalize = (n: string) => n.replace(/-/g, '_');

/** Every module under lib/modules/<version>/kernel, by normalized name. */
export function indexModules(modulesDir: string): Map<string, string> {
  const index = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ko')) index.set(normalize(e.name.slice(0, -3)), p);
    }
  };
  walk(path.join(modulesDir, 'kernel'));
  return index;
}

export function moduleDepends(file: string): string[] {
  const data = fs.readFileSync(file);
  const key = Buffer.from('\0depends=');
  const at = data.indexOf(key);
  if (at < 0) return [];
  const end = data.indexOf(0, at + key.length);
  const value = data.subarray(at + key.length, end).toString('latin1');
  return value ? value.split(',').map(normalize) : [];
}

/** `wanted` and their dependencies, dependencies first. Names missing from `optional` are skipped. */
export function resolveModules(index: Map<string, string>, wanted: readonly string[], optional: readonly string[] = []): KernelModule[] {
  const order: KernelModule[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (raw: string, isOptional: boolean) => {
    const name = normalize(raw);
    if (done.has(name)) return;
    const file = index.get(name);
    if (!file) {
      if (isOptional) return;
      throw new Error(`kernel module ${name} is not in this kernel package`);
    }
    if (visiting.has(name)) throw new Error(`kernel module dependency cycle at ${name}`);
    visiting.add(name);
    for (const dep of moduleDepends(file)) visit(dep, false);
    visiting.delete(name);
    done.add(name);
    order.push({ name, file });
  };
  wanted.forEach((n) => visit(n, false));
  optional.forEach((n) => visit(n, true));
  return order;
}
