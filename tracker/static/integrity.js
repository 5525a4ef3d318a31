// The audit-integrity indicator: the last signed checkpoint (GET /api/audit/checkpoints)
// and the chain's verdict (GET /api/audit/verify). Verifying recomputes the whole chain on
// the server, so it runs at start, on a click and on Refresh only: never on a timer.

import { localTime, timeElement } from "./activity-log.js";

const count = new Intl.NumberFormat();

function plural(n, one, many) {
  return `${count.format(n)} ${n === 1 ? one : many}`;
}

/** Why a fetch failed, in a few words. */
function failure(error) {
  return error instanceof TypeError ? "the server cannot be reached" : error.message;
}

export class IntegrityIndicator {
  /** api(path): fetch with the token. */
  constructor({ api }) {
    this.api = api;
    const $ = (id) => document.getElementById(id);
    this.el = {
      button: $("integrity"),
      text: $("integrity-text"),
      detail: $("integrity-detail"),
      checkpoint: $("integrity-checkpoint"),
      checked: $("integrity-checked"),
    };
    this.inflight = false;
    this.again = false; // asked again while a check ran: run once more after it
  }

  start() {
    this.el.button.addEventListener("click", () => this.check());
    this.check();
  }

  /** Fetch the last checkpoint and verify the chain (one check at a time). */
  async check() {
    if (this.inflight) {
      this.again = true;
      return;
    }
    this.inflight = true;
    this.again = false;
    const button = this.el.button;
    // The last verdict stays up (marked busy) until the new one replaces it.
    button.setAttribute("aria-busy", "true");
    try {
      await Promise.all([this.loadCheckpoint(), this.verify()]);
    } finally {
      this.inflight = false;
      button.removeAttribute("aria-busy");
      if (this.again) this.check();
    }
  }

  show(state, text, detail, title = "") {
    this.el.button.dataset.state = state;
    this.el.text.textContent = text;
    this.el.detail.textContent = detail;
    this.el.detail.title = title;
    this.el.detail.hidden = !detail;
  }

  async verify() {
    try {
      const response = await this.api("/api/audit/verify");
      if (response.status === 401) {
        this.show("unauthorized", "Token needed", "Enter the access token to verify.");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const verdict = await response.json();
      const notes = Array.isArray(verdict.notes) ? verdict.notes.join("\n") : "";
      if (verdict.ok === false) {
        const bad = verdict.first_bad_id;
        this.show(
          "tampered",
          bad === null || bad === undefined ? "Tampered" : `Tampered at #${bad}`,
          String(verdict.reason ?? "the chain does not verify"),
          notes,
        );
      } else if (verdict.verified_through === null || verdict.verified_through === undefined) {
        this.show("empty", "Nothing to verify yet", "No activities are stored.", notes);
      } else {
        const parts = [plural(verdict.count ?? 0, "row", "rows")];
        parts.push(plural(verdict.checkpoints_checked ?? 0, "checkpoint", "checkpoints"));
        parts.push(verdict.signatures_checked ? "signatures checked" : "signatures not checked");
        this.show(
          "ok",
          `Verified through #${verdict.verified_through}`,
          parts.join(" · "),
          notes,
        );
      }
      this.el.checked.textContent = `Checked at ${localTime(new Date().toISOString())}`;
    } catch (error) {
      this.show("error", "Could not verify", `The check failed: ${failure(error)}.`);
    }
  }

  async loadCheckpoint() {
    const line = this.el.checkpoint;
    try {
      const response = await this.api("/api/audit/checkpoints?limit=1");
      if (response.status === 401) return;
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const checkpoints = await response.json();
      const last = Array.isArray(checkpoints) ? checkpoints[checkpoints.length - 1] : undefined;
      if (!last) {
        // No key means no --db: checkpoints are never made. With one, none was made yet.
        const key = await this.api("/api/audit/key");
        line.textContent =
          key.status === 404 ? "No checkpoints (memory mode)" : "No checkpoint yet";
        line.dataset.lastId = "";
        return;
      }
      const time = timeElement(String(last.timestamp));
      line.replaceChildren("Last checkpoint ", time, ` · through #${last.last_id}`);
      line.dataset.lastId = String(last.last_id);
    } catch (error) {
      line.textContent = `Could not load the checkpoints: ${failure(error)}.`;
    }
  }
}
