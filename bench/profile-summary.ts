// Where a V8 CPU profile's time went: self time by function, the top lines, and
// the share of samples spent idle (the thread asleep in epoll_wait or Atomics.wait
// shows as "(idle)" or in the native call that blocks). For profiles that
// BENCH_CPU_PROF=DIR makes: node dist/bench/profile-summary.js DIR/*.cpuprofile
import fs from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const TOP = Number(process.env.TOP ?? 25);

for (const file of process.argv.slice(2)) {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    total += dt;
    const f = byId.get(id)!.callFrame;
    const where = f.url ? `${f.url.replace(/^.*\/(dist|node_modules)\//, '')}:${f.lineNumber + 1}` : '';
    const key = `${f.functionName || '(anonymous)'} ${where}`.trim();
    self.set(key, (self.get(key) ?? 0) + dt);
  });
  console.log(`${file}: ${(total / 1e6).toFixed(1)} s sampled`);
  for (const [key, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, TOP))
    console.log(`  ${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1e3).toFixed(0).padStart(7)} ms  ${key}`);
}
