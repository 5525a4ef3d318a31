// The Alerts panel and the Rules list. Alerts: the newest from GET /api/alerts, then live
// from the socket ({"type": "alert"}), newest on top, bounded; a click on an alert's group
// filters the log to it. Rules: what is armed, from GET /api/alerts/rules, read-only.
// Every value reaches the page as text, never as markup.

import { timeElement } from "./activity-log.js";

/** Most alerts the panel keeps (and shows as rows). */
export const MAX_ALERTS = 200;
/** How many alerts a (re)load asks the server for. */
export const LOAD_ALERTS = 50;
// A frame that adds more live alerts than this is a burst: no highlight, one announcement.
const HIGHLIGHT_MAX = 20;

export const SEVERITIES = ["low", "medium", "high", "critical"];
/** The filters the log understands: a group of only these keys can filter it. */
const FILTER_KEYS = ["user_id", "action"];

const count = new Intl.NumberFormat();
const seconds = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

/** A coloured badge for a severity (an unknown one is shown, uncoloured). */
export function severityBadge(severity) {
  const badge = document.createElement("span");
  const known = SEVERITIES.includes(severity);
  badge.className = `severity severity-${known ? severity : "unknown"}`;
  badge.textContent = String(severity);
  return badge;
}

/** An alert's group as people read it: "user_id: mallory", or "all" for `{}`. */
export function describeGroup(group) {
  const pairs = Object.entries(group ?? {});
  if (pairs.length === 0) return "all";
  return pairs.map(([key, value]) => `${key}: ${value}`).join(", ");
}

/** The log filters that show a group's activities, or null when it cannot be one. */
export function groupFilters(group) {
  const pairs = Object.entries(group ?? {});
  if (pairs.length === 0) return null;
  const ok = pairs.every(
    ([key, value]) => FILTER_KEYS.includes(key) && typeof value === "string" && value.trim(),
  );
  return ok ? Object.fromEntries(pairs) : null;
}

/** A window in seconds, short: "60 s", "5 min", "2 h". */
export function duration(s) {
  if (s >= 3600 && s % 3600 === 0) return `${count.format(s / 3600)} h`;
  if (s >= 120 && s % 60 === 0) return `${count.format(s / 60)} min`;
  return `${seconds.format(s)} s`;
}

/** What a rule looks at: "login_failed", "login or logout by alice", "activities". */
function matched(rule) {
  const actions = rule.match?.action;
  const users = rule.match?.user_id;
  let what = actions?.length ? actions.join(" or ") : "activities";
  if (users?.length) what += ` by ${users.join(" or ")}`;
  return what;
}

/**
 * A rule in one line, e.g. "count ≥ 5 login_failed per user_id in 60 s",
 * "distinct ≥ 3 user_id among login_failed in 60 s", "first_seen: a new action per user_id".
 */
export function describeRule(rule) {
  const per = rule.group_by ? ` per ${rule.group_by}` : "";
  const what = matched(rule);
  const among = what === "activities" ? "" : ` among ${what}`;
  switch (rule.kind) {
    case "count":
      return `count ≥ ${count.format(rule.threshold)} ${what}${per} in ${duration(rule.window_s)}`;
    case "distinct":
      return (
        `distinct ≥ ${count.format(rule.threshold)} ${rule.field}${among}${per}` +
        ` in ${duration(rule.window_s)}`
      );
    case "first_seen":
      return `first_seen: a new ${rule.field}${among}${per}`;
    default:
      return String(rule.kind);
  }
}

/** One alert's row. Every value goes in as textContent. */
function renderAlert(alert, onPick) {
  const row = document.createElement("li");
  row.className = "alert-row";
  row.dataset.id = String(alert.id);
  row.dataset.severity = String(alert.severity);

  const rule = document.createElement("span");
  rule.className = "alert-rule";
  rule.textContent = String(alert.rule);
  rule.title = `Rule ${alert.rule}`;

  const groupText = describeGroup(alert.group);
  const filters = groupFilters(alert.group);
  let group;
  if (filters) {
    group = document.createElement("button");
    group.type = "button";
    group.title = `Show only the activities of ${groupText}`;
    group.addEventListener("click", () => onPick(filters));
  } else {
    group = document.createElement("span");
  }
  group.classList.add("alert-group");
  group.textContent = groupText;

  const head = document.createElement("span");
  head.className = "alert-head";
  head.append(rule, group);

  const time = timeElement(String(alert.fired_at), "alert-time");

  const message = document.createElement("p");
  message.className = "alert-message";
  message.textContent = String(alert.message);
  const ids = Array.isArray(alert.activity_ids) ? alert.activity_ids : [];
  if (ids.length) message.title = `Activities ${ids.map((id) => `#${id}`).join(", ")}`;

  row.append(severityBadge(alert.severity), head, time, message);
  return row;
}

/**
 * One load of a panel's list (of `what`: "alerts", "rules") from GET `path` with
 * `panel.api`; `show(items)` takes the list unless a newer load of the panel began
 * meanwhile (`panel.generation`). Resolves to true once shown; false on a 401 (the token
 * dialog is up; loaded again after) or a failure, which `panel.el.error` reports;
 * undefined when a newer load answers instead.
 */
async function loadList(panel, path, what, show) {
  const generation = ++panel.generation;
  try {
    const response = await panel.api(path);
    if (response.status === 401) return false;
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const items = await response.json();
    if (generation !== panel.generation) return undefined; // a newer load answers instead
    if (!Array.isArray(items)) throw new Error(`not a list of ${what}`);
    panel.el.error.hidden = true;
    show(items);
    return true;
  } catch (error) {
    if (generation !== panel.generation) return undefined;
    panel.el.error.textContent =
      error instanceof TypeError
        ? `Could not load the ${what}: the server cannot be reached.`
        : `Could not load the ${what}: ${error.message}`;
    panel.el.error.hidden = false;
    return false;
  }
}

/**
 * The alerts, newest on top, at most MAX_ALERTS, merged by id. Live alerts are drawn once
 * per animation frame, highlighted and announced (politely) to screen readers.
 */
export class AlertsPanel {
  /** api(path): fetch with the token; onPick(filters): a click on an alert's group. */
  constructor({ api, onPick, maxRows = MAX_ALERTS }) {
    this.api = api;
    this.onPick = onPick;
    this.maxRows = maxRows;
    const $ = (id) => document.getElementById(id);
    this.el = {
      list: $("alerts-list"),
      empty: $("alerts-empty"),
      summary: $("alerts-summary"),
      error: $("alerts-error"),
      announce: $("alerts-announce"),
    };
    this.entries = new Map(); // id -> {alert, row, live}
    this.fresh = []; // live entries that arrived since the last frame
    this.generation = 0; // bumped by every load: only the last one's answer counts
    this.failed = false; // the last load did not get the list (the feed's hello retries)
    this.frame = 0;
  }

  /** An alert from the live feed. */
  receive(alert) {
    this.add([alert], true);
  }

  /**
   * Load the newest alerts over REST. "merge": add what the feed missed (a reconnect);
   * "reset": start over (another store); "replace": the server's list, plus what came live
   * after it when `keepNewer` (Refresh).
   */
  async load(mode = "merge", keepNewer = false) {
    if (mode === "reset") this.clear();
    const loaded = await loadList(this, `/api/alerts?limit=${LOAD_ALERTS}`, "alerts", (items) => {
      if (mode === "replace") {
        const lastId = items.reduce((most, alert) => Math.max(most, alert.id), 0);
        const newer = keepNewer
          ? [...this.entries.values()].filter((e) => e.alert.id > lastId).map((e) => e.alert)
          : [];
        this.clear();
        this.add(newer, false);
      }
      this.add(items, false);
      this.render();
    });
    // A 401 fails too: the token dialog is up, and the list is loaded again with the token.
    if (loaded !== undefined) this.failed = !loaded;
  }

  /** Forget every alert shown. */
  clear() {
    for (const entry of this.entries.values()) entry.row?.remove();
    this.entries.clear();
    this.fresh = [];
    this.schedule();
  }

  add(alerts, live) {
    for (const alert of alerts) {
      if (!alert || !Number.isInteger(alert.id) || this.entries.has(alert.id)) continue;
      const entry = { alert, row: null, live };
      this.entries.set(alert.id, entry);
      if (live) this.fresh.push(entry);
    }
    if (this.entries.size > this.maxRows) {
      const ids = [...this.entries.keys()].sort((a, b) => a - b);
      for (const id of ids.slice(0, ids.length - this.maxRows)) {
        this.entries.get(id).row?.remove();
        this.entries.delete(id);
      }
    }
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  /** Bring the rows in line with the model: new rows in place, nothing else moved. */
  render() {
    if (this.frame) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
    }
    const list = this.el.list;
    const fresh = this.fresh.filter((entry) => this.entries.get(entry.alert.id) === entry);
    this.fresh = [];
    const highlight = fresh.length <= HIGHLIGHT_MAX;
    const ordered = [...this.entries.values()].sort((a, b) => b.alert.id - a.alert.id);
    let cursor = list.firstElementChild;
    for (const entry of ordered) {
      if (!entry.row) {
        entry.row = renderAlert(entry.alert, this.onPick);
        if (entry.live && highlight) entry.row.classList.add("is-new");
      }
      if (entry.row === cursor) {
        cursor = cursor.nextElementSibling;
      } else {
        list.insertBefore(entry.row, cursor);
      }
    }
    while (cursor) {
      const next = cursor.nextElementSibling;
      cursor.remove();
      cursor = next;
    }

    const rows = ordered.length;
    list.hidden = rows === 0;
    this.el.empty.hidden = rows > 0;
    this.el.summary.textContent = rows === 0 ? "" : `${count.format(rows)} shown`;
    if (fresh.length) this.announce(fresh);
  }

  /** Tell screen readers about new alerts: the newest, and how many came with it. */
  announce(fresh) {
    const newest = fresh.reduce((a, b) => (b.alert.id > a.alert.id ? b : a)).alert;
    const more = fresh.length > 1 ? ` (and ${count.format(fresh.length - 1)} more)` : "";
    this.el.announce.textContent =
      `New ${newest.severity} alert: ${newest.rule}, ${describeGroup(newest.group)}. ` +
      `${newest.message}${more}`;
  }
}

/** The armed rules, read-only: name, severity, kind and a one-line description. */
export class RulesList {
  constructor({ api }) {
    this.api = api;
    const $ = (id) => document.getElementById(id);
    this.el = { list: $("rules-list"), empty: $("rules-empty"), error: $("rules-error") };
    this.generation = 0;
  }

  async load() {
    await loadList(this, "/api/alerts/rules", "rules", (rules) => this.render(rules));
  }

  render(rules) {
    this.el.list.replaceChildren(
      ...rules.map((rule) => {
        const item = document.createElement("li");
        item.className = "rule";
        item.dataset.name = String(rule.name);

        const name = document.createElement("span");
        name.className = "rule-name";
        name.textContent = String(rule.name);

        const kind = document.createElement("span");
        kind.className = "rule-kind";
        kind.textContent = String(rule.kind);

        const description = document.createElement("span");
        description.className = "rule-description";
        description.textContent = describeRule(rule);
        const cooldown = rule.cooldown_s ?? rule.window_s;
        if (cooldown) description.title = `Then quiet for ${duration(cooldown)} per group`;

        item.append(severityBadge(rule.severity), name, kind, description);
        return item;
      }),
    );
    this.el.list.hidden = rules.length === 0;
    this.el.empty.hidden = rules.length > 0;
  }
}
