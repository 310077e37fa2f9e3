// `tsvisor bench io-paths`' output without running a guest: the table, the SVG
// chart (well-formed, every path and value in it, text escaped), /proc stat
// parsing and the path list.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { formatSvg, formatTable, IO_PATHS, METRICS, parseProcStat, selectPaths, type IoPathsReport } from '../../src/cli/bench-io-paths.js';
import { UsageError } from '../../src/cli/errors.js';
import { barChartSvg, escapeXml, niceScale } from '../../src/cli/svg-chart.js';

const MiB = 2 ** 20;

const REPORT: IoPathsReport = {
  size: 16 * MiB,
  date: '2026-12-05T10:11:12.000Z',
  results: [
    { path: 'e1000/user', seconds: 4, bytes: 16 * MiB, exits: 2546, interrupts: 386, kicks: 0, cpuMs: 9120, guestMs: 1600 },
    { path: 'virtio-net/user', seconds: 2, bytes: 16 * MiB, exits: 0, interrupts: 1765, kicks: 557, cpuMs: 6400, guestMs: 800 },
    { path: 'virtio-net/tap', seconds: 1, bytes: 16 * MiB, exits: 0, interrupts: 800, kicks: 40, cpuMs: 3200, guestMs: 400 },
    { path: 'vhost-net/tap', seconds: 0.5, bytes: 16 * MiB, exits: 0, interrupts: 400, kicks: null, cpuMs: 80, guestMs: 200 },
  ],
};

/**
 * A small XML well-formedness check: tags balance, attributes are quoted, text and
 * attribute values hold no raw `<` and only known entities after `&`.
 */
function assertWellFormed(xml: string): void {
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, '');
  const stack: string[] = [];
  const entity = /&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-f]+);/gi;
  const checkText = (t: string, where: string) => {
    assert.ok(!t.replace(entity, '').includes('&'), `a bare & in ${where}: ${t}`);
    assert.ok(!t.includes('<'), `a < in ${where}: ${t}`);
  };
  let roots = 0;
  let i = 0;
  while (i < body.length) {
    const lt = body.indexOf('<', i);
    const text = body.slice(i, lt < 0 ? body.length : lt);
    if (stack.length === 0) assert.equal(text.trim(), '', 'text outside the root element');
    checkText(text, 'text');
    if (lt < 0) break;
    const gt = body.indexOf('>', lt);
    assert.ok(gt > lt, 'an unclosed tag');
    const tag = body.slice(lt + 1, gt);
    if (tag.startsWith('/')) {
      assert.equal(stack.pop(), tag.slice(1).trim(), `mismatched </${tag.slice(1)}>`);
    } else {
      const m = /^([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"]*")*)\s*(\/?)$/.exec(tag);
      assert.ok(m, `a malformed tag: <${tag}>`);
      const names = [...m[2]!.matchAll(/([\w:.-]+)="([^"]*)"/g)].map((a) => {
        checkText(a[2]!, `attribute ${a[1]}`);
        return a[1]!;
      });
      assert.equal(new Set(names).size, names.length, `a repeated attribute in <${tag}>`);
      if (stack.length === 0) roots++;
      if (m[3] !== '/') stack.push(m[1]!);
    }
    i = gt + 1;
  }
  assert.deepEqual(stack, [], 'unclosed elements');
  assert.equal(roots, 1, 'one root element');
}

test('the well-formedness check itself refuses broken markup', () => {
  assertWellFormed('<svg a="1"><g><text>x &amp; y</text></g><rect/></svg>');
  for (const bad of ['<svg><g></svg>', '<svg>a & b</svg>', '<svg a=1></svg>', '<svg></svg><svg></svg>', '<svg><text>a < b</text></svg>', '<svg b="<"></svg>'])
    assert.throws(() => assertWellFormed(bad), bad);
});

test('table: one row per path, figures per MB, – for kicks tsvisor cannot see', () => {
  const table = formatTable(REPORT);
  const lines = table.split('\n');
  assert.equal(lines[0], 'io-paths: 16M HTTP download into the guest, 2026-12-05');
  assert.deepEqual(lines[1]!.split(/\s{2,}/), ['path', 'MB/s', 'exits/MB', 'interrupts/MB', 'kicks/MB', 'CPU ms/MB', 'guest ms/MB']);
  const rows = Object.fromEntries(lines.slice(2, 6).map((l) => [l.split(/\s+/)[0], l.trim().split(/\s+/).slice(1)]));
  assert.deepEqual(rows['e1000/user'], ['4.0', '159.1', '24.1', '0.0', '570.0', '100.0']);
  assert.deepEqual(rows['virtio-net/user'], ['8.0', '0.0', '110.3', '34.8', '400.0', '50.0']);
  assert.deepEqual(rows['virtio-net/tap'], ['16.0', '0.0', '50.0', '2.5', '200.0', '25.0']);
  assert.deepEqual(rows['vhost-net/tap'], ['32.0', '0.0', '25.0', '–', '5.0', '12.5']);
  // Columns line up: every row as long as the header.
  for (const l of lines.slice(2, 6)) assert.equal(l.length, lines[1]!.length, l);
  assert.match(table, /CPU: user \+ system time/);
  assert.match(table, /kicks –:/);
});

test('svg: well-formed, a bar group per metric, every path and value in it', () => {
  const svg = formatSvg(REPORT);
  assertWellFormed(svg);
  assert.match(svg, /^<\?xml version="1.0" encoding="UTF-8"\?>\n<svg xmlns="http:\/\/www.w3.org\/2000\/svg" width="\d+" height="\d+"/);
  assert.match(svg, /16M HTTP download/);
  assert.match(svg, /2026-12-05/);
  for (const m of METRICS) assert.ok(svg.includes(`>${escapeXml(m.title)}</text>`), m.title);
  for (const r of REPORT.results) {
    // The row label once per group, the value at the bar's end.
    assert.equal(svg.split(`>${r.path}</text>`).length - 1, METRICS.length, r.path);
    for (const m of METRICS) {
      const v = m.value(r);
      if (v !== null) assert.ok(svg.includes(`font-weight="bold">${v.toFixed(1)}</text>`), `${r.path} ${m.heading} ${v}`);
    }
  }
  // One bar per path and metric, but none for the kicks tsvisor does not see.
  assert.equal((svg.match(/<rect x=/g) ?? []).length, REPORT.results.length * METRICS.length - 1);
  assert.equal((svg.match(/>n\/a</g) ?? []).length, 1);
  // Bars within a group are scaled to one axis: the fastest path's throughput bar is the longest.
  const widths = [...svg.matchAll(/<rect x="\d+" y="\d+" width="([\d.]+)"[^>]*><title>([^<]*)<\/title>/g)].map((m) => [m[2]!, Number(m[1])] as const);
  const mbps = widths.slice(0, 4);
  assert.deepEqual(
    mbps.map(([t]) => t.split(':')[0]),
    REPORT.results.map((r) => r.path),
  );
  assert.ok(mbps[3]![1] > mbps[2]![1] && mbps[2]![1] > mbps[1]![1] && mbps[1]![1] > mbps[0]![1]);
});

test('svg: text is escaped', () => {
  const svg = barChartSvg({
    title: 'a <b> & "c" \'d\'',
    series: ['x<y', 'p&q'],
    groups: [{ title: 'MB/s & more', values: [1, 2] }],
    notes: ['</svg>'],
  });
  assertWellFormed(svg);
  assert.ok(svg.includes('a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;'));
  assert.ok(svg.includes('>x&lt;y</text>') && svg.includes('>p&amp;q</text>') && svg.includes('&lt;/svg&gt;'));
  assert.equal(escapeXml(`<&>"'`), '&lt;&amp;&gt;&quot;&apos;');
});

test('svg: no values, zeros, one series', () => {
  for (const values of [[null], [0], [1e-7], [123456789]]) assertWellFormed(barChartSvg({ title: 't', series: ['only'], groups: [{ title: 'g', values }] }));
});

test('scales: round steps, the top at or above the largest value', () => {
  assert.deepEqual(niceScale(0), { top: 1, step: 0.25 });
  assert.deepEqual(niceScale(10), { top: 10, step: 2.5 });
  assert.deepEqual(niceScale(159.1), { top: 200, step: 50 });
  assert.deepEqual(niceScale(7), { top: 8, step: 2 });
  for (let v = 0.013; v < 1e7; v *= 1.37) {
    const { top, step } = niceScale(v);
    assert.ok(top >= v && top / step <= 5 && top / step >= 1, `${v}: ${top}/${step}`);
    assert.match(String(step / 10 ** Math.floor(Math.log10(step))), /^(1|2|2\.5|5)$/);
  }
});

test('/proc stat lines: user + system ticks, guest ticks, command names with spaces and parentheses', () => {
  // Fields 3 to 52 (Linux 3.5 and later): utime 111, stime 222, guest_time 40.
  const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
  fields[0] = 'S';
  [fields[11], fields[12], fields[40]] = ['111', '222', '40'];
  const rest = fields.join(' ');
  assert.deepEqual(parseProcStat(`4242 (node) ${rest}\n`), { comm: 'node', ticks: 333, guestTicks: 40 });
  assert.deepEqual(parseProcStat(`4243 (vhost-4242) ${rest}`), { comm: 'vhost-4242', ticks: 333, guestTicks: 40 });
  assert.deepEqual(parseProcStat(`4244 (a) b (c) ${rest}`), { comm: 'a) b (c', ticks: 333, guestTicks: 40 });
  // A kernel before guest_time: none.
  assert.equal(parseProcStat(`1 (old) ${fields.slice(0, 30).join(' ')}`).guestTicks, 0);
  assert.throws(() => parseProcStat('garbage'));
  const self = parseProcStat(fs.readFileSync('/proc/self/stat', 'utf8'));
  assert.equal(self.comm.length > 0 && self.ticks >= 0 && self.guestTicks, 0);
});

test('paths: every one named once; --paths picks them in its order and refuses unknown names', () => {
  const names = IO_PATHS.map((p) => p.name);
  assert.equal(new Set(names).size, names.length);
  for (const want of ['e1000/user', 'virtio-net/user', 'virtio-net/tap', 'vhost-net/tap', 'vhost-user/user']) assert.ok(names.includes(want), want);
  assert.deepEqual(selectPaths(undefined), IO_PATHS);
  assert.deepEqual(
    selectPaths('vhost-net/tap, e1000/user').map((p) => p.name),
    ['vhost-net/tap', 'e1000/user'],
  );
  assert.throws(() => selectPaths('e1000/user,nope'), UsageError);
  // vhost-net and its in-VMM twin run over the same tap; only vhost's kicks bypass tsvisor.
  const twin = IO_PATHS.find((p) => p.name === 'virtio-net/tap')!.args('/x');
  const vhost = IO_PATHS.find((p) => p.name === 'vhost-net/tap')!.args('/x');
  assert.deepEqual(
    twin.map((a) => a.replace('vhost=off', 'vhost=on')),
    vhost,
  );
  assert.ok(vhost.some((a) => a.startsWith('tap,id=n0,') && a.includes('vhost=on')));
  assert.deepEqual(
    IO_PATHS.filter((p) => !p.kicksInVmm).map((p) => p.name),
    ['vhost-net/tap', 'vhost-user/user'],
  );
  // The vhost-user card's back-end socket is in the path's own directory.
  assert.ok(
    IO_PATHS.find((p) => p.name === 'vhost-user/user')!
      .args('/x')
      .includes('socket,id=c0,path=/x/net.sock'),
  );
});
