// The live feed: one WebSocket to /api/metrics/live that reconnects on its own with
// exponential back-off and resumes from the last id it saw, so the log shows no hole
// and no duplicate across reconnects and server restarts.

const BACKOFF_START_MS = 250;
const BACKOFF_CAP_MS = 5000;
// After this many failed attempts in a row the state reads "offline" (retries go on).
const OFFLINE_AFTER_FAILURES = 4;
// A socket that has not said hello by then is given up and retried.
const HELLO_TIMEOUT_MS = 10000;
// Server close code for a client whose backlog passed the bound: resume at once.
const CLOSE_TOO_SLOW = 4008;

/**
 * Callbacks: onState(state) with "connecting" | "live" | "reconnecting" | "offline" |
 * "unauthorized"; onReset() when the log must be dropped (another store, or a gap the
 * server cannot fill); onActivities(items) with new activities in id order; onAlert(alert)
 * with each alert as it fires (every client gets them, filtered or not; they are not
 * replayed on a reconnect, so onHello(message), called at every connection's hello, is
 * the cue to catch up over REST).
 *
 * A browser cannot see why an upgrade was refused, so after a socket fails before its
 * hello, checkAccess() (a cheap REST call) tells a wrong or missing token (false) from a
 * server that is down (true). protocols() gives the subprotocols to offer: the access
 * token travels as one ("bearer.<token>"), never in the URL.
 */
export class LiveFeed {
  constructor({
    path = "/api/metrics/live",
    onState,
    onReset,
    onActivities,
    onAlert = () => {},
    onHello = () => {},
    protocols = () => undefined,
    params = () => [],
    checkAccess = async () => true,
  }) {
    this.path = path;
    this.onState = onState;
    this.onReset = onReset;
    this.onActivities = onActivities;
    this.onAlert = onAlert;
    this.onHello = onHello;
    this.protocols = protocols;
    this.params = params;
    this.checkAccess = checkAccess;
    this.storeId = null; // the store the ids below belong to
    this.lastId = 0; // the newest id this feed has delivered from that store
    this.failures = 0;
    this.socket = null;
    this.retryTimer = 0;
    this.helloTimer = 0;
    this.state = "";
  }

  start() {
    this.setState("connecting");
    this.connect();
    // Back online or back in view: no need to wait out the back-off.
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.reconnectNow();
    });
  }

  get live() {
    return this.state === "live";
  }

  /** Try at once if the feed is down (a no-op while connected or connecting). */
  reconnectNow() {
    if (this.socket) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.connect();
  }

  /**
   * Start over (the filters changed): drop the socket and connect again with since=0, so
   * the server replays the buffer's matching activities before the live ones. The caller
   * empties the log first. Anything the old socket still delivers is ignored.
   */
  restart() {
    const old = this.socket;
    this.socket = null;
    clearTimeout(this.helloTimer);
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.lastId = 0;
    if (old) old.close(1000, "filters changed");
    if (this.state === "unauthorized") return; // waits for a token (reconnectNow)
    this.connect();
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const params = new URLSearchParams({ since: String(this.lastId) });
    if (this.storeId) params.set("store", this.storeId);
    for (const [name, value] of this.params()) params.append(name, value);
    return `${scheme}//${location.host}${this.path}?${params}`;
  }

  connect() {
    let socket;
    try {
      socket = new WebSocket(this.url(), this.protocols());
    } catch {
      this.retry(null);
      return;
    }
    this.socket = socket;
    let greeted = false;
    this.helloTimer = setTimeout(() => socket.close(), HELLO_TIMEOUT_MS);
    socket.addEventListener("message", (event) => {
      if (socket !== this.socket) return;
      greeted = true;
      this.receive(event.data);
    });
    // "error" is always followed by "close", which does the work.
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      clearTimeout(this.helloTimer);
      this.retry(event.code);
      if (!greeted) this.probe();
    });
  }

  /** After a refused upgrade: stop retrying if it was the token, until a new one comes. */
  async probe() {
    const allowed = await this.checkAccess();
    if (allowed || this.socket) return; // down, not refused; or connected meanwhile
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.failures = 0;
    this.setState("unauthorized");
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // not ours to understand
    }
    switch (message.type) {
      case "hello":
        clearTimeout(this.helloTimer);
        if (this.storeId !== null && message.store_id !== this.storeId) {
          // The server restarted without its history: its ids mean something else now.
          this.dropLog();
        }
        this.storeId = message.store_id;
        this.failures = 0;
        this.setState("live");
        this.onHello(message);
        break;
      case "reset":
        this.dropLog();
        break;
      case "activities":
        if (Array.isArray(message.items) && message.items.length) {
          const last = message.items[message.items.length - 1].id;
          if (last > this.lastId) this.lastId = last;
          this.onActivities(message.items);
        }
        break;
      case "alert":
        if (message.alert && typeof message.alert === "object") this.onAlert(message.alert);
        break;
      default:
        break;
    }
  }

  dropLog() {
    this.lastId = 0;
    this.onReset();
  }

  retry(code) {
    this.failures += 1;
    this.setState(this.failures >= OFFLINE_AFTER_FAILURES ? "offline" : "reconnecting");
    let delay = Math.min(BACKOFF_CAP_MS, BACKOFF_START_MS * 2 ** (this.failures - 1));
    if (code === CLOSE_TOO_SLOW) delay = BACKOFF_START_MS;
    // Equal jitter: many dashboards do not come back in lockstep after a restart.
    delay = delay / 2 + Math.random() * (delay / 2);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = 0;
      this.connect();
    }, delay);
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  }
}
