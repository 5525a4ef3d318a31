// The metrics dashboard: wires the form, the filters, the live log, the summary, the
// alerts, rules and integrity panels, Pause, Refresh and Export together. Plain ES
// modules, no build step; every value reaches the page as text.

import { ActivityLog, MAX_ROWS } from "./activity-log.js";
import { AlertsPanel, RulesList } from "./alerts-panel.js";
import {
  FilterControls,
  describeFilters,
  filterParams,
  matches,
  withFilters,
} from "./filters.js";
import { IntegrityIndicator } from "./integrity.js";
import { LiveFeed } from "./live-feed.js";
import { SummaryPanel } from "./summary-panel.js";

const $ = (id) => document.getElementById(id);

const form = $("track-form");
const fields = { user_id: $("user-id"), action: $("action"), details: $("details") };
const submitButton = $("submit");
const formError = $("form-error");
const formStatus = $("form-status");
const list = $("activity-log");
const emptyNote = $("log-empty");
const noMatchNote = $("log-no-match");
const summary = $("log-summary");
const pending = $("pending-count");
const pauseButton = $("pause");
const refreshButton = $("refresh");
const logError = $("log-error");
const connection = $("connection-state");
const connectionText = $("connection-text");
const tokenDialog = $("token-dialog");
const tokenForm = $("token-form");
const tokenInput = $("token-input");
const tokenError = $("token-error");
const tokenOpen = $("token-open");
const filterStatus = $("filter-status");
const exportLinks = { csv: $("export-csv"), ndjson: $("export-ndjson") };
const exportError = $("export-error");

const count = new Intl.NumberFormat();

const STATE_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline · retrying",
  unauthorized: "Token needed",
};

// -- access token (only when the server was started with --api-token) ------------------

// Kept for this tab only; sent as a header, and to the live feed as a subprotocol.
const TOKEN_KEY = "tracker.token";
let token = sessionStorage.getItem(TOKEN_KEY) ?? "";

function askForToken(message) {
  tokenError.textContent = message;
  tokenError.hidden = !message;
  tokenOpen.hidden = false;
  if (!tokenDialog.open) {
    tokenInput.value = "";
    tokenDialog.showModal();
  }
}

/** fetch() with the token; a 401 asks for one (the caller still sees the response). */
async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...options.headers };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) {
    const error = await serverError(response.clone(), "This server needs an access token.");
    askForToken(token ? error.message : "");
  }
  return response;
}

list.dataset.maxRows = String(MAX_ROWS);
// curl speaks http:// by default, so a plain-HTTP host needs no scheme (a shorter line).
const origin = location.protocol === "http:" ? location.host : location.origin;
$("curl-example").textContent = [
  "curl -d user_id=user_123 \\",
  "     -d action=login \\",
  `     ${origin}/api/metrics/track`,
].join("\n");

// -- filters ---------------------------------------------------------------------------

const filters = new FilterControls({
  form: $("filter-form"),
  inputs: { user_id: $("filter-user"), action: $("filter-action") },
  clearButton: $("filter-clear"),
  onChange: filtersChanged,
});

function showFilters() {
  const current = filters.current;
  const described = describeFilters(current);
  filterStatus.textContent = described ? `Showing ${described}` : "Showing all activities";
  filterStatus.classList.toggle("is-filtered", filters.active);
  for (const [format, link] of Object.entries(exportLinks)) {
    link.href = withFilters("/api/metrics/export", current, { format });
  }
}

/** New filters: the log starts over from what matches, live and summary alike. */
function filtersChanged() {
  showFilters();
  logError.hidden = true;
  exportError.hidden = true;
  refreshGeneration += 1; // a Refresh still in flight answers for the old filters
  setPaused(false); // another view: show it, rather than count it as "new"
  log.reset();
  feed.restart(); // since=0 with the filters: the server replays the matching buffer
  summaryPanel.restart();
}

// -- the log ---------------------------------------------------------------------------

const log = new ActivityLog(list, {
  onRender(current) {
    const rows = list.childElementCount;
    emptyNote.hidden = rows > 0 || filters.active;
    noMatchNote.hidden = rows > 0 || !filters.active;
    const shown = `${count.format(rows)} shown`;
    summary.textContent = rows === 0 ? "" : rows >= MAX_ROWS ? `latest ${shown}` : shown;
    pending.hidden = !current.paused;
    pending.textContent = `${count.format(current.newWhilePaused)} new`;
  },
});

// -- security: alerts, rules, integrity ---------------------------------------------------

const alertsPanel = new AlertsPanel({
  api,
  // An alert's group, e.g. {user_id: "mallory"}: the log shows exactly that group.
  onPick: (values) => filters.set(values),
});
const rulesList = new RulesList({ api });
const integrity = new IntegrityIndicator({ api });
let hellos = 0;

const feed = new LiveFeed({
  onState(state) {
    connection.dataset.state = state;
    connectionText.textContent = STATE_TEXT[state] ?? state;
  },
  onReset() {
    log.reset();
    summaryPanel.poke();
    alertsPanel.load("reset"); // another store, or a gap: its alerts are another list too
  },
  onActivities(items) {
    log.merge(items);
    summaryPanel.poke();
  },
  onAlert(alert) {
    alertsPanel.receive(alert);
  },
  onHello() {
    // Alerts are not replayed on a reconnect: catch up on what fired while away.
    hellos += 1;
    if (hellos > 1 || alertsPanel.failed) alertsPanel.load("merge");
  },
  protocols: () => (token ? ["tracker", `bearer.${token}`] : undefined),
  params: () => filterParams(filters.current),
  async checkAccess() {
    try {
      return (await api("/api/metrics/activities?limit=0")).status !== 401;
    } catch {
      return true; // unreachable is not refused: keep retrying
    }
  },
});

const summaryPanel = new SummaryPanel({
  api,
  filters: () => filters.current,
  onPick: (values) => filters.set({ ...filters.current, ...values }),
});

tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  token = tokenInput.value.trim();
  if (!token) {
    askForToken("Enter the token the server was started with (--api-token).");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  tokenDialog.close();
  tokenOpen.hidden = true;
  feed.reconnectNow();
  summaryPanel.resume();
  alertsPanel.load("merge");
  rulesList.load();
  integrity.check();
});

tokenOpen.addEventListener("click", () => askForToken(""));

/** The error object of the server's JSON error body, or one holding `fallback`. */
async function serverError(response, fallback) {
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") return body.error;
  } catch {
    // not JSON: use the fallback
  }
  return { message: fallback };
}

// -- the form --------------------------------------------------------------------------

let statusTimer = 0;

function clearFormError() {
  formError.hidden = true;
  formError.textContent = "";
  for (const input of Object.values(fields)) input.removeAttribute("aria-invalid");
}

function showFormError(message, field) {
  formError.textContent = message;
  formError.hidden = false;
  const input = fields[field];
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (submitButton.disabled) return;
  clearFormError();
  formStatus.textContent = "";
  // Sent exactly as typed: the server decides what is valid and says why not.
  const details = fields.details.value;
  const body = {
    user_id: fields.user_id.value,
    action: fields.action.value,
    details: details === "" ? null : details,
  };
  submitButton.disabled = true;
  form.setAttribute("aria-busy", "true");
  try {
    const response = await api("/api/metrics/track", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      const error = await serverError(response, `The server refused it (HTTP ${response.status}).`);
      showFormError(error.message, error.field);
      return;
    }
    const activity = await response.json();
    // Shown at once, even if the live feed is down; the feed's copy merges by id.
    if (matches(filters.current, activity)) log.merge([activity]);
    summaryPanel.poke();
    // Keep the user (people record several things in a row); clear what was said.
    fields.action.value = "";
    fields.details.value = "";
    fields.action.focus();
    formStatus.textContent = `Recorded #${activity.id}.`;
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => (formStatus.textContent = ""), 4000);
  } catch {
    showFormError("Could not reach the server. Check the connection and try again.");
  } finally {
    submitButton.disabled = false;
    form.removeAttribute("aria-busy");
  }
});

for (const input of Object.values(fields)) {
  input.addEventListener("input", () => {
    if (input.getAttribute("aria-invalid") === "true") clearFormError();
  });
}

// -- Pause and Refresh -------------------------------------------------------------------

function setPaused(paused) {
  if (paused === log.paused) return;
  if (paused) log.pause();
  else log.resume();
  pauseButton.textContent = log.paused ? "Resume" : "Pause";
  pauseButton.setAttribute("aria-pressed", String(log.paused));
  list.closest(".log-card").classList.toggle("is-paused", log.paused);
}

pauseButton.addEventListener("click", () => setPaused(!log.paused));

let refreshGeneration = 0;

refreshButton.addEventListener("click", async () => {
  refreshButton.disabled = true;
  logError.hidden = true;
  // A Refresh while the feed is down is also a "try now".
  feed.reconnectNow();
  summaryPanel.resume();
  alertsPanel.load("replace", feed.live);
  rulesList.load();
  integrity.check();
  const generation = refreshGeneration;
  try {
    const path = withFilters("/api/metrics/activities", filters.current, {
      limit: String(MAX_ROWS),
    });
    const response = await api(path);
    if (!response.ok) {
      const error = await serverError(response, `HTTP ${response.status}`);
      throw new Error(error.message);
    }
    const items = await response.json();
    if (generation !== refreshGeneration) return; // the filters changed meanwhile
    // While live, anything newer than the list came over the feed after it was read.
    log.replace(items, feed.live);
  } catch (error) {
    logError.textContent =
      error instanceof TypeError
        ? "Could not reload the log: the server cannot be reached."
        : `Could not reload the log: ${error.message}`;
    logError.hidden = false;
  } finally {
    refreshButton.disabled = false;
  }
});

// -- Export ------------------------------------------------------------------------------

/** The file name from a Content-Disposition header, if it has a plain one. */
function fileName(disposition, fallback) {
  const match = /filename="([^"\\/]+)"/.exec(disposition ?? "");
  return match ? match[1] : fallback;
}

/**
 * Download with the token: a link cannot send the Authorization header, so fetch the file
 * and save it from a Blob. (Without a token the links are followed as they are, and the
 * browser streams the export to disk however large it is.)
 */
async function downloadWithToken(link, format) {
  exportError.hidden = true;
  link.setAttribute("aria-busy", "true");
  try {
    const response = await api(link.href);
    if (!response.ok) {
      const error = await serverError(response, `HTTP ${response.status}`);
      throw new Error(error.message);
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const save = document.createElement("a");
    save.href = url;
    save.download = fileName(response.headers.get("Content-Disposition"), `activities.${format}`);
    save.hidden = true;
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    exportError.textContent =
      error instanceof TypeError
        ? "Could not export: the server cannot be reached."
        : `Could not export: ${error.message}`;
    exportError.hidden = false;
  } finally {
    link.removeAttribute("aria-busy");
  }
}

for (const [format, link] of Object.entries(exportLinks)) {
  link.addEventListener("click", (event) => {
    exportError.hidden = true;
    if (!token && feed.state !== "unauthorized") return; // a plain download
    event.preventDefault();
    if (!token) askForToken("");
    else if (!link.hasAttribute("aria-busy")) downloadWithToken(link, format);
  });
}

showFilters();
log.render();
feed.start();
summaryPanel.start();
alertsPanel.load("merge");
rulesList.load();
integrity.start();
