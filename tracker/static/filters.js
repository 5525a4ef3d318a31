// The dashboard's filters (user, action): one value each, an exact match, as the API's
// `user_id=` and `action=` parameters. A blank input means "no filter"; an empty value is
// never sent (the server answers 400 for `user_id=`).

/** How long typing must pause before a filter applies. */
export const DEBOUNCE_MS = 300;

/** The filter names, as the API spells them. */
const NAMES = ["user_id", "action"];

/** Filter values: blank (white space only) means no filter; anything else exactly as typed. */
export function cleanFilters(values) {
  const clean = {};
  for (const name of NAMES) {
    const value = values[name] ?? "";
    if (value.trim() !== "") clean[name] = value;
  }
  return clean;
}

/** Whether two (clean) filter sets are the same. */
export function sameFilters(a, b) {
  return NAMES.every((name) => (a[name] ?? null) === (b[name] ?? null));
}

/** The query-string pairs for a filter set (never an empty value). */
export function filterParams(filters) {
  return NAMES.filter((name) => filters[name] !== undefined).map((name) => [name, filters[name]]);
}

/** A URL path with the filters (and any extra parameters) in its query string. */
export function withFilters(path, filters, extra = {}) {
  const params = new URLSearchParams(extra);
  for (const [name, value] of filterParams(filters)) params.append(name, value);
  const query = params.toString();
  return query ? `${path}?${query}` : path;
}

/** Whether an activity passes the filters (as the server decides it). */
export function matches(filters, activity) {
  return NAMES.every((name) => filters[name] === undefined || activity[name] === filters[name]);
}

/**
 * Two inputs bound to a filter set. onChange(filters) runs when the set changes: after
 * typing pauses for DEBOUNCE_MS, at once on Enter, Clear or set(). The page's URL keeps the
 * filters (?user_id=…&action=…), so a filtered view survives a reload and can be shared.
 */
export class FilterControls {
  constructor({ form, inputs, clearButton, onChange }) {
    this.form = form;
    this.inputs = inputs; // {user_id: <input>, action: <input>}
    this.clearButton = clearButton;
    this.onChange = onChange;
    this.timer = 0;
    this.current = cleanFilters(this.fromUrl());
    for (const name of NAMES) this.inputs[name].value = this.current[name] ?? "";
    this.show();

    for (const input of Object.values(inputs)) {
      input.addEventListener("input", () => this.schedule());
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.apply();
    });
    clearButton.addEventListener("click", () => {
      this.set({});
      this.inputs.user_id.focus();
    });
  }

  get active() {
    return filterParams(this.current).length > 0;
  }

  /** Set the inputs and apply at once (Clear, or a click on a top-list entry). */
  set(values) {
    for (const name of NAMES) this.inputs[name].value = values[name] ?? "";
    this.apply();
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.apply(), DEBOUNCE_MS);
  }

  apply() {
    clearTimeout(this.timer);
    this.timer = 0;
    const next = cleanFilters({
      user_id: this.inputs.user_id.value,
      action: this.inputs.action.value,
    });
    if (sameFilters(next, this.current)) return;
    this.current = next;
    this.show();
    this.toUrl();
    this.onChange(next);
  }

  show() {
    this.clearButton.hidden = !this.active;
    for (const name of NAMES) {
      this.inputs[name].classList.toggle("is-active", this.current[name] !== undefined);
    }
  }

  fromUrl() {
    const params = new URLSearchParams(location.search);
    return { user_id: params.get("user_id") ?? "", action: params.get("action") ?? "" };
  }

  toUrl() {
    const url = withFilters(location.pathname, this.current) + location.hash;
    history.replaceState(history.state, "", url);
  }
}

/** A sentence that says what is shown, e.g. `user “u1” · action “login”`. */
export function describeFilters(filters) {
  const parts = [];
  if (filters.user_id !== undefined) parts.push(`user “${filters.user_id}”`);
  if (filters.action !== undefined) parts.push(`action “${filters.action}”`);
  return parts.join(" · ");
}
