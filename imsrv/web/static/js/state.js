// What the page knows: conversations, the messages of the chats opened, friends, requests,
// groups; and how each inbox entry changes it (docs/PROTOCOL.md section 8, "Applying
// entries on a device").  No DOM here: the view renders this state.

import {storageKey} from "./sync.js";

export function convKey(entry, me) {
  if (entry.group) return "g:" + entry.group;
  if (entry.with) return "u:" + entry.with;
  return "u:" + (entry.from === me ? entry.to : entry.from);
}

export function keyTarget(key) {
  // -> {to: user} or {group: id}, the fields naming a conversation in send
  return key.startsWith("g:") ? {group: key.slice(2)} : {to: key.slice(2)};
}

export function keyFields(key) {
  // -> {with: user} or {group: id}, the fields naming a conversation in read/history
  return key.startsWith("g:") ? {group: key.slice(2)} : {with: key.slice(2)};
}

export class Conversation {
  constructor(key) {
    this.key = key;
    this.isGroup = key.startsWith("g:");
    this.id = key.slice(2);
    this.last = null;          // the latest message or group event
    this.ts = 0;
    this.unread = 0;
    this.readSeq = 0;
    this.maxSeq = 0;           // the highest seq of this conversation the page has seen
    this.countedSeq = 0;       // unread counts entries up to here already (the server's count)
    this.countedHere = [];     // seqs counted unread here, past the server's last count
    this.mutedUntil = 0;
    this.mentioned = false;
    this.typingUntil = 0;
    this.msgs = null;          // null until opened: [message], in seq order
    this.byMid = new Map();
    this.reachedStart = false;
    this.pending = [];         // own sends not acked yet: {cmid, body, ts, failed}
    this.members = null;       // groups: [user] once asked
    this.roles = {};
  }

  isMuted(now = Date.now()) {
    return this.mutedUntil === -1 || this.mutedUntil > now;
  }
}

export class State {
  constructor(me, device) {
    this.me = me;
    this.device = device;
    this.myName = me;
    this.convs = new Map();
    this.friends = new Map();    // user -> {user, name, status, text, remark}
    this.requests = [];          // [{from, message, ts}]
    this.groups = new Map();     // group id -> {group, name, left}
    this.receiptKey = storageKey(me, device, "receipts");
    this.receipts = this.loadReceipts();   // conv key -> {reader: mid}
    this.openKey = null;
  }

  loadReceipts() {
    try {
      return JSON.parse(localStorage.getItem(this.receiptKey) || "{}");
    } catch (e) {
      return {};
    }
  }

  saveReceipts() {
    try {
      localStorage.setItem(this.receiptKey, JSON.stringify(this.receipts));
    } catch (e) { /* full or disabled: receipts are a display nicety */ }
  }

  conv(key) {
    let c = this.convs.get(key);
    if (!c) {
      c = new Conversation(key);
      this.convs.set(key, c);
    }
    return c;
  }

  // -- names

  nameOf(user) {
    if (user === this.me) return this.myName;
    const f = this.friends.get(user);
    if (f) return f.remark || f.name || user;
    return user;
  }

  titleOf(c) {
    if (c.isGroup) {
      const g = this.groups.get(c.id);
      return (g && g.name) || c.id;
    }
    return this.nameOf(c.id);
  }

  statusOf(user) {
    const f = this.friends.get(user);
    return f ? f.status : null;
  }

  // -- the server's lists

  setConversations(items) {
    for (const it of items) {
      const c = this.conv(it.group ? "g:" + it.group : "u:" + it.with);
      c.last = it.last || c.last;
      c.ts = it.ts || (it.last && it.last.ts) || c.ts;
      const seq = it.last ? it.last.seq : 0;
      // messages counted here that the server's answer did not see yet still count
      c.countedHere = c.countedHere.filter((q) => q > seq && q > it.read_seq);
      c.unread = it.unread + c.countedHere.length;
      c.readSeq = it.read_seq;
      c.mutedUntil = it.muted_until;
      c.mentioned = !!it.mentioned;
      c.countedSeq = Math.max(c.countedSeq, seq);
      c.maxSeq = Math.max(c.maxSeq, seq);
    }
  }

  setFriends(list) {
    this.friends = new Map(list.map((f) => [f.user, f]));
  }

  setGroups(list) {
    const known = new Map(list.map((g) => [g.group, {group: g.group, name: g.name, left: false}]));
    for (const [id, g] of this.groups) if (!known.has(id)) known.set(id, {...g, left: true});
    this.groups = known;
  }

  // -- history of an opened chat (newest first, each in its current state)

  addHistory(c, msgs) {
    if (!c.msgs) c.msgs = [];
    for (const m of msgs) {
      if (c.byMid.has(m.mid)) continue;
      const copy = {...m};
      c.byMid.set(m.mid, copy);
      c.msgs.push(copy);
      c.maxSeq = Math.max(c.maxSeq, m.seq || 0);
    }
    c.msgs.sort((a, b) => a.seq - b.seq);
  }

  oldestMid(c) {
    return c.msgs && c.msgs.length ? c.msgs[0].mid : undefined;
  }

  // -- one inbox entry, in seq order (a push, a sync item, or built from our own ack)

  apply(e) {
    const key = convKey(e, this.me);
    const c = this.conv(key);
    c.maxSeq = Math.max(c.maxSeq, e.seq || 0);
    const kind = e.kind;
    if (!kind || kind === "group_event") {
      if (e.from === this.me && e.cmid) c.pending = c.pending.filter((p) => p.cmid !== e.cmid);
      if (c.msgs && !c.byMid.has(e.mid)) {
        const copy = {...e};
        c.byMid.set(e.mid, copy);
        c.msgs.push(copy);
        c.msgs.sort((a, b) => a.seq - b.seq);
      }
      if (!c.last || e.ts >= c.ts || e.seq > c.last.seq) {
        c.last = c.byMid.get(e.mid) || e;
        c.ts = e.ts;
      }
      if (!kind && e.from !== this.me && e.seq > c.countedSeq && e.seq > c.readSeq) {
        c.unread += 1;
        c.countedHere.push(e.seq);
        const m = e.mentions || [];
        if (m.includes("all") || m.includes(this.me)) c.mentioned = true;
      }
      if (!kind && e.from !== this.me) c.typingUntil = 0;
      if (kind === "group_event") this.applyGroupEvent(c, e);
      c.countedSeq = Math.max(c.countedSeq, e.seq || 0);
      return c;
    }
    const target = (c.msgs && c.byMid.get(e.ref)) || (c.last && c.last.mid === e.ref ? c.last : null);
    if (target) this.change(target, e);
    if (c.last && c.last !== target && c.last.mid === e.ref) this.change(c.last, e);
    c.countedSeq = Math.max(c.countedSeq, e.seq || 0);
    return c;
  }

  change(m, e) {
    if (e.kind === "recall") {
      m.recalled = true;
      m.body = null;
    } else if (e.kind === "edit") {
      if (!m.recalled) {
        m.body = e.body;
        m.edited = e.ts;
      }
    } else if (e.kind === "reaction" && e.body && typeof e.body.emoji === "string") {
      const r = {...(m.reactions || {})};
      const users = (r[e.body.emoji] || []).filter((u) => u !== e.from);
      if (e.body.on !== false) users.push(e.from);
      if (users.length) r[e.body.emoji] = users;
      else delete r[e.body.emoji];
      m.reactions = r;
    }
  }

  applyGroupEvent(c, e) {
    const b = e.body || {};
    const g = this.groups.get(c.id) || {group: c.id, name: c.id, left: false};
    if (b.name && (b.event === "created" || b.event === "updated")) g.name = b.name;
    if ((b.event === "left" || b.event === "kicked") && b.user === this.me) g.left = true;
    if (b.event === "invited" && b.user === this.me) g.left = false;
    this.groups.set(c.id, g);
    if (c.members && b.user) {
      if (b.event === "invited" && !c.members.includes(b.user)) c.members.push(b.user);
      if (b.event === "left" || b.event === "kicked") c.members = c.members.filter((u) => u !== b.user);
    }
  }

  // a receipt push: another member read up to mid; or my other device read up to seq
  receipt(r) {
    const key = r.group ? "g:" + r.group : "u:" + (r.from === this.me ? r.with : r.from);
    const c = this.conv(key);
    if (r.from === this.me) {
      c.readSeq = Math.max(c.readSeq, r.seq || 0);
      c.countedHere = c.countedHere.filter((q) => q > c.readSeq);
      if (c.readSeq >= c.maxSeq) {
        c.unread = 0;
        c.mentioned = false;
        return {c, stale: false};
      }
      return {c, stale: true};   // read up to the middle: the server recounts
    }
    const readers = this.receipts[key] || (this.receipts[key] = {});
    readers[r.from] = Math.max(readers[r.from] || 0, r.mid || 0);
    this.saveReceipts();
    return {c, stale: false};
  }

  // how many others read my message m ("read" in 1:1, "read by N" in groups)
  readBy(c, m) {
    const readers = this.receipts[c.key] || {};
    let n = 0;
    for (const [u, mid] of Object.entries(readers)) if (u !== this.me && mid >= m.mid) n += 1;
    return n;
  }

  markedRead(c) {
    c.readSeq = Math.max(c.readSeq, c.maxSeq);
    c.countedHere = [];
    c.unread = 0;
    c.mentioned = false;
  }

  totalUnread() {
    let n = 0;
    for (const c of this.convs.values()) if (!c.isMuted()) n += c.unread;
    return n;
  }

  sortedConvs() {
    return [...this.convs.values()].filter((c) => c.last || c.pending.length || c.key === this.openKey)
      .sort((a, b) => (b.ts || 0) - (a.ts || 0));
  }
}
