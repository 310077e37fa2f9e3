// A self-contained SVG bar chart, no dependency: one group of horizontal bars per
// metric, one bar per series (the same colour and row label in every group), the
// value written at the end of each bar and a scale under each group. Made for
// `tsvisor bench io-paths --svg`, readable at a glance in a browser or an image viewer.

export interface BarGroup {
  /** The metric and its unit, e.g. "throughput (MB/s), higher is better". */
  title: string;
  /** One value per series; null: not measured for that series (drawn as "n/a"). */
  values: (number | null)[];
}

export interface BarChart {
  title: string;
  subtitle?: string;
  /** Bar labels, in drawing order within every group. */
  series: string[];
  groups: BarGroup[];
  /** Lines under the chart (what the figures mean). */
  notes?: string[];
  /** How a value is written at its bar's end (default: one decimal). */
  format?: (v: number) => string;
}

const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];
const WIDTH = 880;
const MARGIN = 20;
const BAR = 18;
const BAR_GAP = 6;
const VALUE_ROOM = 84;
const CHAR = 7; // average advance of a 12px sans-serif character, for sizing the label column

/** Text and attribute values as XML needs them. */
export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** A round step (1, 2, 2.5 or 5 times a power of ten) at least `raw`. */
function niceStep(raw: number): number {
  const exp = 10 ** Math.floor(Math.log10(raw));
  const f = raw / exp;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * exp;
}

/** The scale for values up to `max`: about four round steps, the top a whole number of them. */
export function niceScale(max: number): { top: number; step: number } {
  if (!(max > 0) || !Number.isFinite(max)) return { top: 1, step: 0.25 };
  const step = niceStep(max / 4);
  return { top: step * Math.ceil(max / step - 1e-9), step };
}

const tick = (v: number) => String(Number(v.toPrecision(10)));
const oneDecimal = (v: number) => v.toFixed(1);

export function barChartSvg(chart: BarChart): string {
  const format = chart.format ?? oneDecimal;
  const labelWidth = Math.max(80, Math.max(...chart.series.map((s) => s.length), 0) * CHAR + 12);
  const plotX = MARGIN + labelWidth;
  const plotWidth = WIDTH - plotX - MARGIN - VALUE_ROOM;
  const out: string[] = [];
  const text = (x: number, y: number, s: string, attrs = '') => out.push(`<text x="${x}" y="${y}"${attrs ? ' ' + attrs : ''}>${escapeXml(s)}</text>`);

  let y = MARGIN + 16;
  text(MARGIN, y, chart.title, 'font-size="17" font-weight="bold"');
  if (chart.subtitle) {
    y += 20;
    text(MARGIN, y, chart.subtitle, 'fill="#555"');
  }
  y += 14;
  for (const group of chart.groups) {
    y += 22;
    text(MARGIN, y, group.title, 'font-size="13" font-weight="bold"');
    y += 10;
    const numbers = group.values.filter((v): v is number => v !== null && Number.isFinite(v));
    const { top, step } = niceScale(Math.max(0, ...numbers));
    const rowsHeight = chart.series.length * (BAR + BAR_GAP) - BAR_GAP;
    // Grid lines and the scale under the bars.
    for (let k = 0; k * step <= top + step / 2; k++) {
      const v = k * step;
      const x = plotX + (Math.min(v, top) / top) * plotWidth;
      out.push(`<line x1="${x.toFixed(1)}" y1="${y - 2}" x2="${x.toFixed(1)}" y2="${y + rowsHeight + 2}" stroke="${v === 0 ? '#888' : '#e3e3e3'}"/>`);
      text(Number(x.toFixed(1)), y + rowsHeight + 15, tick(v), 'font-size="10" fill="#777" text-anchor="middle"');
    }
    chart.series.forEach((name, i) => {
      const rowY = y + i * (BAR + BAR_GAP);
      const mid = rowY + BAR / 2 + 4;
      text(plotX - 8, mid, name, 'text-anchor="end"');
      const v = group.values[i];
      if (v === null || v === undefined || !Number.isFinite(v)) {
        text(plotX + 6, mid, 'n/a', 'fill="#999" font-style="italic"');
        return;
      }
      const w = (Math.max(0, v) / top) * plotWidth;
      out.push(
        `<rect x="${plotX}" y="${rowY}" width="${w.toFixed(1)}" height="${BAR}" fill="${PALETTE[i % PALETTE.length]}"><title>${escapeXml(`${name}: ${format(v)}`)}</title></rect>`,
      );
      text(Number((plotX + w + 5).toFixed(1)), mid, format(v), 'font-weight="bold"');
    });
    y += rowsHeight + 22;
  }
  for (const note of chart.notes ?? []) {
    y += 16;
    text(MARGIN, y, note, 'font-size="11" fill="#555"');
  }
  const height = Math.ceil(y + MARGIN);
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`,
    `<title>${escapeXml(chart.title)}</title>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    ...out,
    `</svg>`,
    '',
  ].join('\n');
}
