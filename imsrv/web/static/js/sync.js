// The device's side of the delivery guarantees (docs/PROTOCOL.md sections 9 and 10), kept
// in the browser's localStorage per user and device:
//
// - Inbox: the cursor (the highest inbox seq processed without a gap).  Entries (msg pushes,
//   sync replies, the acks of our own sends) are applied strictly in seq order: a duplicate
//   (seq <= cursor) is dropped, an entry past a gap waits, and a gap that does not close
//   soon is filled by a sync from the cursor.  After every auth: sync from the cursor until
//   `more` is false (entries below `oldest` are gone: the cursor moves over them).
// - Outbox: sends, recalls, edits and reactions not acked yet, each with its cmid.  After
//   every auth they are sent again, in order, with the same cmid (the server stores each
//   once and answers the first ack again).

import {ConnectionLost, ServerError} from "./net.js";

const GAP_WAIT = 1500;          // ms a gap may stay open before a sync fills it
const SYNC_PAGE = 500;
export const MAX_CATCH_UP = 5000;   // entries behind head beyond which a device skips to head

function load(key, fallback) {
  try {
    const v = localStorage.getItem(key);
    return v === null ? fallback : JSON.parse(v);
  } catch (e) {
    return fallback;
  }
}

function save(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (e) {
    console.warn("imsrv: localStorage", e);
  }
}

export function storageKey(user, device, what) {
  return `imsrv:${user}:${device}:${what}`;
}

export class Inbox {
  // apply(entry) is called once per entry, in seq order
  constructor(user, device, apply) {
    this.key = storageKey(user, device, "cursor");
    this.cursor = load(this.key, null);   // null: a device that never synced
    this.apply = apply;
    this.waiting = new Map();             // seq -> entry past a gap
    this.gapTimer = null;
    this.gateway = null;
    this.syncing = null;
  }

  setCursor(seq) {
    this.cursor = seq;
    save(this.key, seq);
  }

  offer(entry) {
    if (typeof entry.seq !== "number" || this.cursor === null || entry.seq <= this.cursor) return;
    this.waiting.set(entry.seq, entry);
    this.drain();
  }

  drain() {
    while (this.waiting.has(this.cursor + 1)) {
      const e = this.waiting.get(this.cursor + 1);
      this.waiting.delete(this.cursor + 1);
      try {
        this.apply(e);
      } catch (err) {
        console.error("imsrv: applying entry", e, err);
      }
      this.setCursor(e.seq);
    }
    for (const seq of this.waiting.keys()) if (seq <= this.cursor) this.waiting.delete(seq);
    clearTimeout(this.gapTimer);
    if (this.waiting.size) this.gapTimer = setTimeout(() => this.fillGap(), GAP_WAIT);
  }

  fillGap() {
    if (this.waiting.size && this.gateway) this.sync(this.gateway).catch(() => {});
  }

  // after auth: -> true when the device caught up by syncing, false when it skipped to head
  async catchUp(gateway, head) {
    this.gateway = gateway;
    if (this.cursor === null || head - this.cursor > MAX_CATCH_UP || head < this.cursor) {
      // a new device, one too far behind, or an inbox that was reset: history and
      // conversations give the past; the cursor starts at head
      this.waiting.clear();
      this.setCursor(head);
      return false;
    }
    await this.sync(gateway);
    return true;
  }

  sync(gateway) {
    if (!this.syncing) {
      this.syncing = this.syncLoop(gateway).finally(() => { this.syncing = null; });
    }
    return this.syncing;
  }

  async syncLoop(gateway) {
    for (;;) {
      const r = await gateway.request("sync", {since: this.cursor, limit: SYNC_PAGE});
      const msgs = r.msgs || [];
      if (r.oldest === 0 && r.head > this.cursor && !msgs.length) {
        this.setCursor(r.head);           // everything up to head expired
      } else if (r.oldest > this.cursor + 1) {
        this.setCursor(r.oldest - 1);     // entries below oldest are gone, not missed
      }
      for (const m of msgs) this.offer(m);
      if (!r.more || !msgs.length) return;
    }
  }
}

export class Outbox {
  // items: {cmid, op, fields, key}; send(item) -> Promise(ack); onAck(item, ack);
  // onFail(item, error) for a refused request (removed from the outbox)
  constructor(user, device, handlers) {
    this.key = storageKey(user, device, "outbox");
    this.items = load(this.key, []);
    this.handlers = handlers;
    this.gateway = null;
    this.inFlight = new Set();
    this.counter = 0;
  }

  newCmid(device) {
    this.counter += 1;
    const rnd = Math.random().toString(36).slice(2, 8);
    return `${device}-${Date.now().toString(36)}-${this.counter}-${rnd}`;
  }

  persist() {
    save(this.key, this.items);
  }

  add(item) {
    this.items.push(item);
    this.persist();
    if (this.gateway && this.gateway.authed) this.sendOne(item);
  }

  remove(cmid) {
    this.items = this.items.filter((i) => i.cmid !== cmid);
    this.persist();
  }

  // after auth (and the catch-up sync): every unacked item again, in order
  flush(gateway) {
    this.gateway = gateway;
    this.inFlight.clear();
    for (const item of this.items) this.sendOne(item);
  }

  sendOne(item) {
    if (this.inFlight.has(item.cmid)) return;
    this.inFlight.add(item.cmid);
    const gw = this.gateway;
    gw.request(item.op, {...item.fields, cmid: item.cmid}).then((ack) => {
      this.inFlight.delete(item.cmid);
      this.remove(item.cmid);
      this.handlers.onAck(item, ack);
    }, (err) => {
      this.inFlight.delete(item.cmid);
      if (err instanceof ConnectionLost) return;   // sent again after the next auth
      if (err instanceof ServerError && (err.code === "rate_limited" || err.code === "unavailable")) {
        const wait = (Number(err.reply.retry_after) || 2) * 1000;
        setTimeout(() => { if (gw === this.gateway && gw.authed) this.sendOne(item); }, wait);
        return;
      }
      this.remove(item.cmid);
      this.handlers.onFail(item, err);
    });
  }

  has(cmid) {
    return this.items.some((i) => i.cmid === cmid);
  }
}
