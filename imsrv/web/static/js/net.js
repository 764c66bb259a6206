// The network layer of the chat page: API requests (POST /api, relayed by the server to the
// API service) and the gateway connection (the WebSocket at /ws of this page's own host).
//
// Gateway: connect -> auth (the first frame) -> "online"; requests carry an id and resolve
// with their reply (ServerError for an error reply, ConnectionLost when the connection goes
// before the reply); pushes go to onPush.  Reconnects with backoff and jitter, honours bye's
// retry_after, pings when quiet, and stops for good on kicked or an unaccepted token.

export class ServerError extends Error {
  constructor(reply) {
    super(reply.message || reply.code);
    this.code = reply.code;
    this.reply = reply;
  }
}

export class ConnectionLost extends Error {}

// One API request: -> the reply object; ServerError for an error reply, ConnectionLost when
// the server cannot be reached.
export async function api(op, fields = {}) {
  let res;
  try {
    res = await fetch("/api", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({op, ...fields}),
      cache: "no-store",
    });
  } catch (e) {
    throw new ConnectionLost("the server cannot be reached");
  }
  let reply;
  try {
    reply = await res.json();
  } catch (e) {
    throw new ConnectionLost(`the server answered HTTP ${res.status}`);
  }
  if (reply.op === "error") throw new ServerError(reply);
  return reply;
}

const PING_EVERY = 25000;     // ms of quiet before a ping (the server closes after 90 s of silence)
const PONG_WITHIN = 10000;    // ms a ping may take before the connection is taken for dead
const REQUEST_TIMEOUT = 30000;

export class Gateway {
  // opts: token, device, onPush(frame), onOnline(authReply) (awaited before the queue flushes),
  // onState(state, detail) with state "connecting" | "online" | "offline" | "stopped",
  // onStop(reason) (kicked, unauthorized: no more reconnects)
  constructor(opts) {
    this.opts = opts;
    this.ws = null;
    this.state = "offline";
    this.nextId = 1;
    this.pending = new Map();   // id -> {resolve, reject, timer}
    this.attempt = 0;
    this.retryTimer = null;
    this.stopped = false;
    this.lastSent = 0;
    this.pingTimer = null;
    this.onlineHandler = () => this.reconnectNow();
    this.offlineHandler = () => this.drop("the browser is offline");
    // leaving the page (or entering the back/forward cache) closes the connection at once,
    // so friends see us go offline; coming back from that cache reconnects
    this.hideHandler = () => { this.suspended = true; this.drop("page hidden"); };
    this.showHandler = (ev) => { if (ev.persisted) { this.suspended = false; this.reconnectNow(); } };
    window.addEventListener("online", this.onlineHandler);
    window.addEventListener("offline", this.offlineHandler);
    window.addEventListener("pagehide", this.hideHandler);
    window.addEventListener("pageshow", this.showHandler);
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  setState(state, detail) {
    this.state = state;
    this.opts.onState && this.opts.onState(state, detail);
  }

  start() {
    if (this.stopped || this.suspended || this.ws) return;
    if (navigator.onLine === false) {
      this.setState("offline", "no network");
      return;
    }
    this.setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.authed = false;
    ws.onopen = () => {
      this.rawSend({op: "auth", id: "auth", token: this.opts.token, device: this.opts.device});
    };
    ws.onmessage = (ev) => this.onFrame(ws, ev.data);
    ws.onclose = () => this.onClosed(ws);
    ws.onerror = () => {};   // onclose follows and handles it
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    window.removeEventListener("online", this.onlineHandler);
    window.removeEventListener("offline", this.offlineHandler);
    window.removeEventListener("pagehide", this.hideHandler);
    window.removeEventListener("pageshow", this.showHandler);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.failPending("signed out");
    this.setState("stopped");
  }

  // close the connection now (the server may not notice; it reconnects when it can)
  drop(reason) {
    if (this.ws) {
      const ws = this.ws;
      this.onClosed(ws, reason);
      ws.close();
    }
  }

  reconnectNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    this.start();
  }

  scheduleReconnect(delayMs) {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    if (delayMs === undefined) {
      const base = Math.min(15000, 500 * 2 ** Math.min(this.attempt, 5));
      delayMs = base / 2 + Math.random() * base / 2;
    }
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.start(), delayMs);
  }

  onClosed(ws, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.authed = false;
    clearInterval(this.pingTimer);
    this.failPending(reason || "connection lost");
    if (this.stopped) return;
    this.setState("offline", reason);
    if (this.suspended) return;
    if (this.byeDelay !== undefined) {
      const d = this.byeDelay;
      this.byeDelay = undefined;
      this.scheduleReconnect(d);
    } else if (navigator.onLine !== false) {
      this.scheduleReconnect();
    }
  }

  failPending(reason) {
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ConnectionLost(reason));
    }
    this.pending.clear();
  }

  rawSend(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    this.lastSent = Date.now();
    return true;
  }

  // a request on the authenticated connection: -> Promise of the reply
  request(op, fields = {}) {
    return new Promise((resolve, reject) => {
      if (!this.authed) {
        reject(new ConnectionLost("not connected"));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ConnectionLost(`no reply to ${op} within ${REQUEST_TIMEOUT / 1000} s`));
        this.drop("a request timed out");
      }, REQUEST_TIMEOUT);
      this.pending.set(id, {resolve, reject, timer});
      this.rawSend({op, id, ...fields});
    });
  }

  // a frame that gets no reply when it works (typing): sent only when online, else dropped
  hint(op, fields = {}) {
    if (this.authed) this.rawSend({op, ...fields});
  }

  async onFrame(ws, data) {
    if (ws !== this.ws) return;
    let f;
    try {
      f = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (f.id === "auth") return this.onAuthReply(f);
    if (f.id !== undefined && this.pending.has(f.id)) {
      const p = this.pending.get(f.id);
      this.pending.delete(f.id);
      clearTimeout(p.timer);
      if (f.op === "error") p.reject(new ServerError(f));
      else p.resolve(f);
      return;
    }
    if (f.op === "kicked") {
      this.stopped = true;
      this.opts.onStop && this.opts.onStop("kicked", f.reason);
      return;
    }
    if (f.op === "bye") {
      this.byeDelay = Math.max(0, Number(f.retry_after) || 5) * 1000;
      return;
    }
    if (f.op === "pong" || f.op === "error") return;   // a late pong; an error of a hint
    this.opts.onPush && this.opts.onPush(f);
  }

  async onAuthReply(f) {
    if (f.op === "error") {
      if (f.code === "unauthorized") {
        this.stopped = true;
        this.opts.onStop && this.opts.onStop("unauthorized", f.message);
      } else {
        this.drop(f.message);
      }
      return;
    }
    this.authed = true;
    this.attempt = 0;
    this.startPings();
    try {
      if (this.opts.onOnline) await this.opts.onOnline(f);
    } catch (e) {
      console.warn("imsrv: after auth", e);
      if (!(e instanceof ConnectionLost)) this.drop("could not sync: " + e.message);
      return;
    }
    if (this.authed) this.setState("online");
  }

  startPings() {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (!this.authed || Date.now() - this.lastSent < PING_EVERY) return;
      const ws = this.ws;
      const timer = setTimeout(() => { if (ws === this.ws) this.drop("no pong"); }, PONG_WITHIN);
      this.request("ping").then(() => clearTimeout(timer), () => clearTimeout(timer));
    }, 5000);
  }
}
