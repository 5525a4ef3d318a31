// The summary panel: totals, an activity-rate chart per minute (uPlot, vendored) and the
// top actions and users, from GET /api/metrics/summary with the dashboard's filters.
// It refreshes every few seconds, and soon after live activity arrives (throttled), with
// at most one request in flight. Every name reaches the page as text.

import { toneOf } from "./activity-log.js";
import { withFilters } from "./filters.js";

/** How many actions and users the top lists show. */
export const TOP = 5;
/** The chart shows the last this many minutes, up to the current one. */
export const WINDOW_MINUTES = 60;
/** The screen-reader table lists the last this many minutes. */
const TABLE_MINUTES = 10;
/** Refresh at least this often while the page is visible. */
const PERIOD_MS = 5000;
/** Live activity refreshes sooner, but never more often than this, */
const MIN_GAP_MS = 1000;
/** nor more often than this many times the last request took (a slow server gets air). */
const GAP_PER_DURATION = 4;
const CHART_HEIGHT = 168;
const MINUTE = 60; // seconds: uPlot's time scale counts seconds

const count = new Intl.NumberFormat();
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

/** The server's spelling of a minute, "2025-11-05T10:42:00+00:00", from Unix seconds. */
function minuteKey(seconds) {
  return `${new Date(seconds * 1000).toISOString().slice(0, 16)}:00+00:00`;
}

/**
 * The chart's series: one point per minute of the last WINDOW_MINUTES, ending at the
 * current minute (or the server's last, if its clock is ahead), quiet minutes as 0.
 */
export function rateSeries(perMinute, nowMs = Date.now()) {
  const counts = new Map();
  let last = Math.floor(nowMs / 60000) * MINUTE;
  for (const point of perMinute) {
    const seconds = Math.round(Date.parse(point.minute) / 1000);
    if (Number.isNaN(seconds)) continue;
    counts.set(seconds, point.count);
    if (seconds > last) last = seconds;
  }
  const xs = [];
  const ys = [];
  for (let t = last - (WINDOW_MINUTES - 1) * MINUTE; t <= last; t += MINUTE) {
    xs.push(t);
    ys.push(counts.get(t) ?? 0);
  }
  return [xs, ys];
}

/** A CSS custom property of the page, for the canvas (which cannot use var()). */
function cssColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export class SummaryPanel {
  /**
   * api(path): fetch with the token; filters(): the current filter set; onPick(values):
   * a click on a top-list entry (e.g. {action: "login"}) to filter by it.
   */
  constructor({ api, filters, onPick }) {
    this.api = api;
    this.filters = filters;
    this.onPick = onPick;
    const $ = (id) => document.getElementById(id);
    this.el = {
      panel: $("summary"),
      total: $("stat-total"),
      users: $("stat-users"),
      chart: $("rate-chart"),
      legend: $("rate-legend"),
      table: $("rate-table"),
      actions: $("top-actions"),
      actionsEmpty: $("top-actions-empty"),
      topUsers: $("top-users"),
      usersEmpty: $("top-users-empty"),
      error: $("summary-error"),
    };
    this.data = null; // the last summary shown
    this.series = null; // [xs, ys] of the chart
    this.plot = null;
    this.generation = 0; // bumped when the filters change: older answers are dropped
    this.timer = 0;
    this.due = Infinity;
    this.inflight = false;
    this.dirty = false;
    this.stopped = false; // after a 401, until resume()
    this.lastStart = -Infinity;
    this.lastDuration = 0;
  }

  start() {
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) this.schedule(0);
    });
    // The chart's colours follow the page's colour scheme.
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.rebuild());
    new ResizeObserver(() => this.resize()).observe(this.el.chart);
    this.load();
  }

  /** The filters changed: mark the figures shown as stale and fetch at once. */
  restart() {
    this.generation += 1;
    this.el.panel.setAttribute("aria-busy", "true");
    this.schedule(0);
  }

  /** Fetch now (Refresh, or a new token after a 401). */
  resume() {
    this.stopped = false;
    this.schedule(0);
  }

  /** Activities arrived: fetch soon, throttled. */
  poke() {
    if (this.inflight) {
      this.dirty = true;
      return;
    }
    const gap = Math.max(MIN_GAP_MS, GAP_PER_DURATION * this.lastDuration);
    this.schedule(Math.max(0, this.lastStart + gap - performance.now()));
  }

  schedule(delay) {
    if (this.stopped) return;
    if (this.inflight) {
      this.dirty = true;
      return;
    }
    const due = performance.now() + delay;
    if (this.timer && this.due <= due) return; // an earlier fetch is already planned
    clearTimeout(this.timer);
    this.due = due;
    this.timer = setTimeout(() => this.load(), delay);
  }

  async load() {
    clearTimeout(this.timer);
    this.timer = 0;
    this.due = Infinity;
    if (this.stopped || document.hidden) return; // visibilitychange fetches again
    if (this.inflight) {
      this.dirty = true;
      return;
    }
    this.inflight = true;
    this.dirty = false;
    const generation = this.generation;
    const started = performance.now();
    this.lastStart = started;
    try {
      const path = withFilters("/api/metrics/summary", this.filters(), { top: String(TOP) });
      const response = await this.api(path);
      if (response.status === 401) {
        this.stopped = true; // the token dialog is up; resume() comes with a token
      } else if (!response.ok) {
        throw new Error(`HTTP ${response.status}`);
      } else {
        const data = await response.json();
        if (generation === this.generation) {
          this.data = data;
          this.el.error.hidden = true;
          this.render();
        }
      }
    } catch {
      this.el.error.hidden = false; // the figures stay, marked as possibly stale
    } finally {
      this.inflight = false;
      this.lastDuration = performance.now() - started;
      if (generation !== this.generation) this.schedule(0); // new filters meanwhile
      else if (this.dirty) this.poke(); // activity arrived meanwhile
      else this.schedule(PERIOD_MS);
    }
  }

  // -- rendering ------------------------------------------------------------------------

  render() {
    const data = this.data ?? {
      total: 0,
      distinct_users: 0,
      actions: [],
      users: [],
      per_minute: [],
    };
    this.el.panel.setAttribute("aria-busy", "false");
    this.el.total.textContent = count.format(data.total);
    this.el.users.textContent = count.format(data.distinct_users);
    this.el.total.dataset.value = String(data.total);
    this.el.users.dataset.value = String(data.distinct_users);
    this.renderTop(this.el.actions, this.el.actionsEmpty, data.actions, "action");
    this.renderTop(this.el.topUsers, this.el.usersEmpty, data.users, "user_id");
    this.series = rateSeries(data.per_minute);
    this.renderRate();
  }

  renderTop(list, emptyNote, entries, key) {
    const most = entries.length ? entries[0].count : 1;
    const what = key === "action" ? "action" : "user";
    list.replaceChildren(
      ...entries.map((entry) => {
        const name = entry[key];
        const item = document.createElement("li");
        // An action keeps its colour from the log; the bar takes it too.
        item.className = key === "action" ? `top-item ${toneOf(name)}` : "top-item";
        item.dataset.count = String(entry.count);

        const pick = document.createElement("button");
        pick.type = "button";
        pick.className = key === "action" ? "top-name chip" : "top-name";
        pick.textContent = name; // text, never markup
        pick.title = `Show only ${what} ${name}`;
        pick.addEventListener("click", () => this.onPick({ [key]: name }));

        const figure = document.createElement("span");
        figure.className = "top-count";
        figure.textContent = count.format(entry.count);

        const bar = document.createElement("span");
        bar.className = "top-bar";
        bar.setAttribute("aria-hidden", "true");
        // The CSSOM, not a style attribute: allowed under style-src 'self'.
        bar.style.setProperty("--share", String(entry.count / most));

        item.append(pick, figure, bar);
        return item;
      }),
    );
    emptyNote.hidden = entries.length > 0;
  }

  renderRate() {
    const [xs, ys] = this.series;
    const peak = Math.max(0, ...ys);
    const inWindow = ys.reduce((sum, n) => sum + n, 0);
    const current = ys[ys.length - 1] ?? 0;
    const chart = this.el.chart;
    chart.dataset.windowTotal = String(inWindow);
    chart.dataset.peak = String(peak);
    chart.dataset.current = String(current);
    this.figures = { peak, inWindow, current };
    this.showLegend(null);
    this.renderTable(xs, ys);
    if (!globalThis.uPlot) return; // the chart library did not load: the figures remain
    if (this.plot) this.plot.setData(this.series);
    else this.build();
  }

  /** The legend: the current minute, the peak and the hour's total; or the hovered minute. */
  showLegend(index) {
    const parts = [];
    if (index !== null && this.series && index < this.series[0].length) {
      const [xs, ys] = this.series;
      const n = ys[index];
      const what = n === 1 ? "activity" : "activities";
      parts.push([clock.format(new Date(xs[index] * 1000)), `${count.format(n)} ${what}`]);
    } else if (this.figures) {
      const { current, peak, inWindow } = this.figures;
      parts.push(["This minute", count.format(current)]);
      parts.push(["Peak", `${count.format(peak)}/min`]);
      parts.push(["Last hour", count.format(inWindow)]);
    }
    this.el.legend.replaceChildren(
      ...parts.map(([label, value]) => {
        const item = document.createElement("span");
        item.className = "legend-item";
        const strong = document.createElement("strong");
        strong.textContent = value;
        item.append(`${label} `, strong);
        return item;
      }),
    );
  }

  /** The chart's data for screen readers: the last minutes, newest first. */
  renderTable(xs, ys) {
    const body = this.el.table.tBodies[0];
    const rows = [];
    for (let i = xs.length - 1; i >= Math.max(0, xs.length - TABLE_MINUTES); i--) {
      const row = document.createElement("tr");
      const head = document.createElement("th");
      head.scope = "row";
      const time = document.createElement("time");
      time.dateTime = minuteKey(xs[i]);
      time.textContent = clock.format(new Date(xs[i] * 1000));
      head.append(time);
      const cell = document.createElement("td");
      cell.textContent = String(ys[i]);
      row.append(head, cell);
      rows.push(row);
    }
    body.replaceChildren(...rows);
  }

  build() {
    const uPlot = globalThis.uPlot;
    const accent = cssColor("--accent");
    const muted = cssColor("--faint");
    const grid = cssColor("--border");
    const font = `12px ${getComputedStyle(document.body).fontFamily}`;
    const width = Math.max(120, this.el.chart.clientWidth);
    const options = {
      width,
      height: CHART_HEIGHT,
      padding: [10, 26, 0, 0], // room for the last time label, centred on its tick
      legend: { show: false },
      cursor: {
        y: false,
        points: { show: false },
        drag: { x: false, y: false, setScale: false },
      },
      select: { show: false },
      scales: {
        x: {
          time: true,
          range: (u, min, max) => [min - MINUTE / 2, max + MINUTE / 2],
        },
        y: { range: (u, min, max) => [0, Math.max(4, Math.ceil(max * 1.15))] },
      },
      axes: [
        {
          stroke: muted,
          font,
          size: 30,
          gap: 6,
          space: 64,
          incrs: [MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE, 60 * MINUTE],
          values: (u, splits) => splits.map((s) => clock.format(new Date(s * 1000))),
          grid: { show: false },
          ticks: { stroke: grid, width: 1, size: 4 },
        },
        {
          stroke: muted,
          font,
          size: 40,
          space: 28,
          incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000, 100000],
          values: (u, splits) => splits.map((s) => count.format(s)),
          grid: { stroke: grid, width: 1 },
          ticks: { show: false },
        },
      ],
      series: [
        {},
        {
          label: "Activities per minute",
          stroke: accent,
          fill: accent,
          width: 0,
          paths: uPlot.paths.bars({ size: [0.72, 28], gap: 1 }),
          points: { show: false },
        },
      ],
      hooks: {
        setCursor: [(u) => this.showLegend(u.cursor.idx ?? null)],
      },
    };
    this.plot = new uPlot(options, this.series, this.el.chart);
  }

  resize() {
    if (!this.plot) return;
    const width = Math.max(120, this.el.chart.clientWidth);
    if (width !== this.plot.width) this.plot.setSize({ width, height: CHART_HEIGHT });
  }

  /** Colours changed (light/dark): draw the chart again with the new ones. */
  rebuild() {
    if (!this.plot) return;
    this.plot.destroy();
    this.plot = null;
    this.renderRate();
  }
}
