// The activity log: a bounded model of recent activities, merged by id, rendered as
// rows newest first. DOM work is batched into one requestAnimationFrame per frame.

/**
 * Most activities the log keeps, in its model and as rows. At 1000 activities/s the page
 * still creates at most this many rows and never holds more, so every frame's work and
 * the DOM size stay bounded. Older activities remain available from
 * GET /api/metrics/activities (the server keeps its full capacity).
 */
export const MAX_ROWS = 500;

// A frame that adds more rows than this is a burst or a reload: no highlight animation.
const HIGHLIGHT_MAX = 20;

const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

/** The viewer's local time; the date too unless the activity happened today. */
export function localTime(timestamp) {
  // The server sends microseconds; Date parses milliseconds reliably.
  const moment = new Date(timestamp.replace(/(\.\d{3})\d+/, "$1"));
  if (Number.isNaN(moment.getTime())) return timestamp;
  const now = new Date();
  const today =
    moment.getFullYear() === now.getFullYear() &&
    moment.getMonth() === now.getMonth() &&
    moment.getDate() === now.getDate();
  return (today ? timeFormat : dateTimeFormat).format(moment);
}

const TONES = 6;

/** A stable colour class for an action name, so the same action always looks alike. */
export function toneOf(action) {
  let hash = 0;
  for (let i = 0; i < action.length; i++) hash = (hash * 31 + action.charCodeAt(i)) | 0;
  return `tone-${Math.abs(hash) % TONES}`;
}

/** A <time> for a UTC timestamp: the viewer's local time, the full UTC value on hover. */
export function timeElement(timestamp, className) {
  const time = document.createElement("time");
  if (className) time.className = className;
  time.dateTime = timestamp;
  time.title = timestamp;
  time.textContent = localTime(timestamp);
  return time;
}

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text; // always text, never markup
  return el;
}

/** One row of the log. Every value goes in as textContent. */
export function renderRow(activity) {
  const row = document.createElement("li");
  row.className = "row";
  row.dataset.id = String(activity.id);

  const time = timeElement(activity.timestamp, "cell-time");

  const user = span("cell-user", activity.user_id);
  user.title = activity.user_id;

  const action = span(`cell-action chip ${toneOf(activity.action)}`, activity.action);
  action.title = activity.action;

  const hasDetails = activity.details !== null && activity.details !== "";
  const details = span(
    hasDetails ? "cell-details" : "cell-details is-empty",
    hasDetails ? activity.details : "—",
  );
  if (hasDetails) details.title = activity.details;

  const id = span("cell-id", `#${activity.id}`);
  row.append(time, user, action, details, id);
  return row;
}

/**
 * The log's model (activities ascending by id, at most maxRows) and its rows in `list`
 * (descending). Changes to the model are cheap; rows follow once per animation frame,
 * and not at all while paused.
 */
export class ActivityLog {
  constructor(list, { maxRows = MAX_ROWS, onRender = () => {} } = {}) {
    this.list = list;
    this.maxRows = maxRows;
    this.onRender = onRender;
    this.entries = []; // {activity, row}, ascending by id
    this.byId = new Map();
    this.unrendered = []; // entries that need a row
    this.detached = []; // rows of entries that left the model
    this.clearRows = false;
    this.paused = false;
    this.newWhilePaused = 0;
    this.frame = 0;
  }

  /** Add activities not seen yet (any order); drop the oldest beyond maxRows. */
  merge(items) {
    const entries = this.entries;
    for (const activity of items) {
      const id = activity.id;
      if (this.byId.has(id)) continue;
      if (entries.length >= this.maxRows && id < entries[0].activity.id) continue;
      const entry = { activity, row: null };
      if (entries.length === 0 || id > entries[entries.length - 1].activity.id) {
        entries.push(entry);
      } else {
        entries.splice(this.indexAbove(id), 0, entry);
      }
      this.byId.set(id, entry);
      this.unrendered.push(entry);
      if (this.paused) this.newWhilePaused += 1;
    }
    const excess = entries.length - this.maxRows;
    if (excess > 0) {
      for (const entry of entries.splice(0, excess)) {
        this.byId.delete(entry.activity.id);
        if (entry.row) this.detached.push(entry.row);
        entry.row = null;
        entry.dropped = true;
      }
    }
    this.schedule();
  }

  /** Forget every activity (another store, or a gap that cannot be filled). */
  reset() {
    for (const entry of this.entries) entry.dropped = true;
    this.entries = [];
    this.byId.clear();
    this.unrendered = [];
    this.detached = [];
    this.clearRows = true;
    this.newWhilePaused = 0;
    this.schedule();
  }

  /**
   * Replace the log with a reloaded list (oldest first), keeping activities newer than
   * its last one when `keepNewer` (they came live after the list was read). Shown at once.
   */
  replace(items, keepNewer) {
    const lastId = items.length ? items[items.length - 1].id : 0;
    const newer = keepNewer
      ? this.entries.filter((e) => e.activity.id > lastId).map((e) => e.activity)
      : [];
    this.reset();
    this.merge(items);
    this.merge(newer);
    this.newWhilePaused = 0;
    this.render(true);
  }

  get size() {
    return this.entries.length;
  }

  /** Hold the rows still; count what arrives meanwhile. */
  pause() {
    this.paused = true;
    this.newWhilePaused = 0;
    this.onRender(this);
  }

  /** Show everything that arrived while paused, now. */
  resume() {
    this.paused = false;
    this.newWhilePaused = 0;
    this.render();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  /** Index of the first entry with an id above `id` (binary search). */
  indexAbove(id) {
    let lo = 0;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.entries[mid].activity.id > id) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** Bring the rows in line with the model (unless paused and not forced). */
  render(force = false) {
    if (this.frame) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
    }
    if (this.paused && !force) {
      this.onRender(this);
      return;
    }
    const list = this.list;
    let highlight = true;
    if (this.clearRows) {
      list.replaceChildren();
      this.clearRows = false;
      highlight = false;
    }
    for (const row of this.detached) row.remove();
    this.detached = [];

    const fresh = this.unrendered.filter((e) => !e.dropped && !e.row);
    this.unrendered = [];
    if (fresh.length) {
      fresh.sort((a, b) => b.activity.id - a.activity.id);
      highlight = highlight && fresh.length <= HIGHLIGHT_MAX && list.childElementCount > 0;
      const top = list.firstElementChild;
      const topId = top ? Number(top.dataset.id) : -Infinity;
      // The usual case: everything new is newer than the top row; one prepend.
      const batch = document.createDocumentFragment();
      let i = 0;
      for (; i < fresh.length && fresh[i].activity.id > topId; i++) {
        batch.append(this.rowFor(fresh[i], highlight));
      }
      list.prepend(batch);
      // Late arrivals (older than the top row) go below their next newer neighbour.
      for (; i < fresh.length; i++) {
        const entry = fresh[i];
        const row = this.rowFor(entry, highlight);
        let above = null;
        for (let j = this.indexAbove(entry.activity.id); j < this.entries.length; j++) {
          if (this.entries[j].row) {
            above = this.entries[j].row;
            break;
          }
        }
        if (above) above.after(row);
        else list.prepend(row);
      }
    }
    this.onRender(this);
  }

  rowFor(entry, highlight) {
    const row = renderRow(entry.activity);
    if (highlight) row.classList.add("is-new");
    entry.row = row;
    return row;
  }
}
