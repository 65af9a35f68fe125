/** A small time-series chart in SVG: stacked areas or lines over a sliding window. */
import { h, setText, svg } from './dom.js';

export interface SeriesSpec {
  key: string;
  label: string;
}

export interface Point {
  t: number;
  values: number[];
}

const WIDTH = 600;
const HEIGHT = 150;
const MIN_WINDOW_MS = 60_000;

/** 1, 2, 5, 10, 20, 50… at or above n. */
export function niceCeiling(n: number): number {
  if (n <= 1) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(n));
  for (const step of [1, 2, 5, 10]) if (step * magnitude >= n) return step * magnitude;
  return 10 * magnitude;
}

export class TimeChart {
  readonly element: HTMLElement;
  private readonly plot: SVGSVGElement;
  private readonly shapes: (SVGPolygonElement | SVGPolylineElement)[];
  private readonly legendValues: HTMLElement[];
  private readonly yMax: HTMLElement;
  private readonly yMid: HTMLElement;
  private readonly xStart: HTMLElement;

  constructor(private readonly options: { id: string; title: string; series: SeriesSpec[]; stacked: boolean; windowMs: number }) {
    const { series, stacked } = options;
    this.plot = svg('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: 'none', class: 'plot', 'aria-hidden': 'true', focusable: 'false' });
    for (const y of [0, HEIGHT / 2, HEIGHT]) {
      this.plot.append(svg('line', { x1: 0, x2: WIDTH, y1: y, y2: y, class: 'gridline' }));
    }
    this.shapes = series.map((spec) => {
      const shape = stacked ? svg('polygon', { class: `series series-${spec.key}`, points: '' }) : svg('polyline', { class: `series series-${spec.key}`, points: '' });
      shape.dataset.series = spec.key;
      this.plot.append(shape);
      return shape;
    });
    this.yMax = h('span', { class: 'y-max', text: '1' });
    this.yMid = h('span', { class: 'y-mid', text: '' });
    this.xStart = h('span', { text: `−${Math.round(options.windowMs / 60_000)} min` });
    this.legendValues = series.map(() => h('b', { text: '0' }));
    const legend = h('ul', { class: 'legend' }, ...series.map((spec, i) =>
      h('li', { class: `legend-${spec.key}` }, h('span', { class: 'swatch', attrs: { 'aria-hidden': 'true' } }), `${spec.label} `, this.legendValues[i]!)));
    this.element = h('figure', { class: `chart chart-${options.id}`, attrs: { id: `chart-${options.id}`, role: 'img', 'aria-label': options.title } },
      h('figcaption', { class: 'chart-title', text: options.title }),
      h('div', { class: 'chart-area' },
        h('div', { class: 'y-axis', attrs: { 'aria-hidden': 'true' } }, this.yMax, this.yMid, h('span', { text: '0' })),
        this.plot,
        h('div', { class: 'x-axis', attrs: { 'aria-hidden': 'true' } }, this.xStart, h('span', { text: 'now' }))),
      legend);
  }

  render(points: Point[], now: number): void {
    const { series, stacked } = this.options;
    // The window grows with the data, from one minute up to the full window, so a young
    // history fills the chart instead of hugging its right edge.
    const oldest = points[0]?.t ?? now;
    const windowMs = Math.min(this.options.windowMs, Math.max(MIN_WINDOW_MS, now - oldest));
    const start = now - windowMs;
    setText(this.xStart, `−${Math.round(windowMs / 60_000)} min`);
    const visible = points.filter((point) => point.t >= start - 2000);
    let peak = 0;
    for (const point of visible) {
      const value = stacked ? point.values.reduce((a, b) => a + b, 0) : Math.max(0, ...point.values);
      peak = Math.max(peak, value);
    }
    const top = niceCeiling(peak);
    setText(this.yMax, String(top));
    setText(this.yMid, top >= 2 && top % 2 === 0 ? String(top / 2) : '');
    const x = (t: number) => (Math.max(0, (t - start) / windowMs) * WIDTH).toFixed(1);
    const y = (v: number) => (HEIGHT - (v / top) * HEIGHT).toFixed(1);
    const base = visible.map(() => 0);
    series.forEach((_, s) => {
      const shape = this.shapes[s]!;
      if (visible.length === 0) {
        shape.setAttribute('points', '');
        return;
      }
      if (stacked) {
        const lower = visible.map((point, i) => `${x(point.t)},${y(base[i]!)}`).reverse();
        const upper = visible.map((point, i) => {
          base[i] = base[i]! + (point.values[s] ?? 0);
          return `${x(point.t)},${y(base[i]!)}`;
        });
        shape.setAttribute('points', [...upper, ...lower].join(' '));
      } else {
        shape.setAttribute('points', visible.map((point) => `${x(point.t)},${y(point.values[s] ?? 0)}`).join(' '));
      }
    });
    const latest = visible[visible.length - 1];
    series.forEach((_, s) => setText(this.legendValues[s]!, String(latest?.values[s] ?? 0)));
    this.element.dataset.peak = String(peak);
    this.element.dataset.samples = String(visible.length);
    const summary = series.map((spec, s) => `${spec.label} ${latest?.values[s] ?? 0}`).join(', ');
    this.element.setAttribute('aria-label', `${this.options.title}, over the last ${Math.round(windowMs / 60_000)} minutes. Now: ${summary}. Peak ${peak}.`);
  }
}
