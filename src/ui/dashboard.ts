/** The scaling panel: instance and queue charts, and the list of instances. */
import { TimeChart, type Point } from './chart.js';
import { byId, h, setText } from './dom.js';
import { formatCount, formatDuration, formatSeconds, shortId } from './format.js';
import type { LoopHealth, QueueCounts, ScalingStatus, StatusSnapshot } from './types.js';

const WINDOW_MS = 5 * 60_000;
const STATES = ['busy', 'idle', 'starting'] as const;

const depth = (counts: QueueCounts | undefined) => (counts ? counts.visible + counts.inFlight + counts.delayed : 0);

export class Dashboard {
  private readonly instancePoints: Point[] = [];
  private readonly queuePoints: Point[] = [];
  private readonly instances = new TimeChart({
    id: 'instances',
    title: 'Instances',
    stacked: true,
    windowMs: WINDOW_MS,
    series: [
      { key: 'busy', label: 'Busy' },
      { key: 'idle', label: 'Idle' },
      { key: 'starting', label: 'Starting' },
    ],
  });
  private readonly queues = new TimeChart({
    id: 'queues',
    title: 'Queue depth',
    stacked: false,
    windowMs: WINDOW_MS,
    series: [
      { key: 'launch', label: 'Launch' },
      { key: 'monitor', label: 'Monitor' },
      { key: 'output', label: 'Output' },
    ],
  });
  private readonly panel = byId('scaling');
  private readonly now = byId('scale-now');
  private readonly max = byId('scale-max');
  private readonly tableBody = byId<HTMLTableSectionElement>('instance-rows');
  private readonly emptyRow = byId('instances-empty');
  private readonly problems = byId('service-problems');
  private readonly problemList = byId<HTMLUListElement>('problem-list');
  private readonly why = byId('scaling-why');
  private shownProblems = '';
  private peak = 0;
  private lastAt = 0;

  constructor() {
    byId('charts').append(this.instances.element, this.queues.element);
  }

  update(status: StatusSnapshot, nameOf: (imageId: string) => string | undefined): void {
    if (status.at <= this.lastAt) return;
    this.lastAt = status.at;
    const active = status.instances.filter((instance) => instance.state !== 'stopped');
    const count = (state: string) => active.filter((instance) => instance.state === state).length;
    this.instancePoints.push({ t: status.at, values: STATES.map(count) });
    this.queuePoints.push({ t: status.at, values: [depth(status.queues.launch), depth(status.queues.monitor), depth(status.queues.output)] });
    for (const points of [this.instancePoints, this.queuePoints]) {
      while (points.length > 0 && points[0]!.t < status.at - WINDOW_MS - 5000) points.shift();
    }
    this.instances.render(this.instancePoints, status.at);
    this.queues.render(this.queuePoints, status.at);

    this.peak = Math.max(0, ...this.instancePoints.map((point) => point.values.reduce((a, b) => a + b, 0)));
    // Observable state for people and tests: what the chart shows, as numbers.
    this.panel.dataset.instances = String(active.length);
    this.panel.dataset.maxInstances = String(this.peak);
    this.panel.dataset.limit = String(status.max);
    setText(this.now, formatCount(active.length));
    setText(this.max, formatCount(status.max));

    const rows = status.instances
      .slice()
      .sort((a, b) => Number(a.state === 'stopped') - Number(b.state === 'stopped') || a.startedAt - b.startedAt)
      .slice(0, 40)
      .map((instance) => {
        const image = instance.imageId ? nameOf(instance.imageId) ?? `image ${shortId(instance.imageId)}` : '–';
        return h('tr', { attrs: { 'data-state': instance.state } },
          h('td', { class: 'mono', text: instance.id, attrs: { title: instance.id } }),
          h('td', {}, h('span', { class: `state state-${instance.state}`, text: instance.state })),
          h('td', { class: 'image-cell', text: image, attrs: { title: image } }),
          h('td', { class: 'num', text: formatCount(instance.processed ?? 0) }),
          h('td', { class: 'num', text: formatDuration(Math.max(0, status.at - instance.startedAt)) }));
      });
    this.tableBody.replaceChildren(...rows);
    this.emptyRow.hidden = rows.length > 0;
    this.showProblems((status.health ?? []).filter((loop) => !loop.ok), status.at);
    this.showWhy(status.scaling);
  }

  /** Why the tier has its size: what the launch policy saw and decided last. */
  private showWhy(scaling: ScalingStatus | undefined): void {
    this.why.hidden = !scaling;
    if (!scaling) return;
    const guess = (measured: boolean) => (measured ? '' : ' (assumed)');
    this.panel.dataset.policy = scaling.policy;
    this.panel.dataset.target = String(scaling.target);
    this.panel.dataset.capacity = String(scaling.capacity);
    setText(byId('why-backlog'), formatCount(scaling.backlog + scaling.inFlight));
    setText(byId('why-drain'), scaling.drainMs === null ? '–' : formatSeconds(scaling.drainMs));
    setText(byId('why-capacity'), `${formatCount(scaling.capacity)} at once`);
    setText(byId('why-service'), `${formatCount(scaling.serviceMs)} ms${guess(scaling.measured.service)}`);
    setText(byId('why-startup'), `${formatSeconds(scaling.startupMs)}${guess(scaling.measured.startup)}`);
    setText(byId('why-reason'), `${scaling.policy}: ${scaling.reason}`);
  }

  /** Each failing loop with what to do about it; redrawn only when that changes. */
  private showProblems(failing: LoopHealth[], now: number): void {
    const text = failing.map((loop) => `${loop.loop}: ${loop.problem ?? loop.detail ?? 'failing'}`);
    this.panel.dataset.problems = String(failing.length);
    const key = JSON.stringify([text, failing.map((loop) => (loop.since ? Math.floor((now - loop.since) / 60_000) : 0))]);
    if (key === this.shownProblems) return;
    this.shownProblems = key;
    this.problems.hidden = failing.length === 0;
    this.problemList.replaceChildren(...failing.map((loop, i) => h('li', { attrs: { title: loop.detail ?? '' } },
      h('span', { class: 'problem-text', text: text[i]! }),
      loop.since ? h('span', { class: 'muted small', text: ` (for ${formatDuration(Math.max(0, now - loop.since))})` }) : null)));
  }
}
