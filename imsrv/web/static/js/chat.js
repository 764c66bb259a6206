// The signed-in chat: one Chat per session (user, token, this browser's device id).  It owns
// the gateway connection, the inbox cursor and the outbox (sync.js), the state (state.js) and
// the view (view.js), and turns pushes, acks and clicks into state changes.

import {$, h, toast} from "./dom.js";
import {api, ConnectionLost, Gateway, ServerError} from "./net.js";
import {keyFields, keyTarget, State} from "./state.js";
import {Inbox, Outbox} from "./sync.js";
import {View} from "./view.js";
import {Modals} from "./modals.js";
import {Composer} from "./composer.js";

const HISTORY_PAGE = 40;
const TYPING_SHOWN = 6000;    // ms a typing hint is shown

export class Chat {
  // session: {user, token}; device: this browser's id; onSignOut(message)
  constructor(session, device, onSignOut) {
    this.session = session;
    this.device = device;
    this.onSignOut = onSignOut;
    this.state = new State(session.user, device);
    this.view = new View(this.state, this.viewActions());
    this.modals = new Modals(this);
    this.composer = new Composer(this);
    this.inbox = new Inbox(session.user, device, (e) => this.onEntry(e));
    this.outbox = new Outbox(session.user, device, {
      onAck: (item, ack) => this.onAck(item, ack),
      onFail: (item, err) => this.onFail(item, err),
    });
    this.maxFrame = 65536;    // the server's, from the auth reply
    this.loadingOlder = false;
    this.renderQueued = null;
    this.typingTimers = new Map();   // conv key -> the timer that ends its typing hint
    this.restorePending();
  }

  // ------------------------------------------------------------------ life cycle

  start() {
    this.gateway = this.newGateway();
    this.loadLists();
    this.gateway.start();
    this.render();
  }

  newGateway() {
    return new Gateway({
      token: this.session.token,
      device: this.device,
      onPush: (f) => this.onPush(f),
      onOnline: (auth) => this.onOnline(auth),
      onState: (st, detail) => this.showConnection(st, detail),
      onStop: (kind, reason) => this.onStop(kind, reason),
    });
  }

  stop() {
    if (this.gateway) this.gateway.stop();
    this.typingTimers.forEach(clearTimeout);
  }

  async signOut() {
    const token = this.session.token;
    this.end("");
    try {
      await api("logout", {token});
    } catch (e) { /* the token dies with the session either way */ }
  }

  // the API with this session's token; an unaccepted token ends the session
  async api(op, fields = {}) {
    try {
      return await api(op, {token: this.session.token, ...fields});
    } catch (e) {
      if (e instanceof ServerError && e.code === "unauthorized") this.end("Your session has ended: sign in again.");
      throw e;
    }
  }

  // the session is over (signed out, kicked, token refused): once
  end(message) {
    if (this.ended) return;
    this.ended = true;
    this.stop();
    this.onSignOut(message);
  }

  // run an action: errors become toasts
  run(promise) {
    return promise.catch((e) => {
      if (!this.ended) toast(e instanceof ConnectionLost ? "Not connected: " + e.message : e.message);
      return null;
    });
  }

  async loadLists() {
    await Promise.all([
      this.run(this.api("profile").then((p) => { this.state.myName = p.name || this.state.me; })),
      this.refreshFriends(),
      this.refreshRequests(),
      this.refreshGroups(),
      this.refreshConvs(),
    ]);
    this.render();
  }

  refreshFriends() {
    return this.run(this.api("friends").then((r) => { this.state.setFriends(r.friends || []); this.render(); }));
  }

  refreshRequests() {
    return this.run(this.api("friend_requests").then((r) => { this.state.requests = r.requests || []; this.render(); }));
  }

  refreshGroups() {
    return this.run(this.api("groups").then((r) => { this.state.setGroups(r.groups || []); this.render(); }));
  }

  refreshConvs() {
    const gw = this.gateway;
    const p = gw && gw.authed ? gw.request("conversations", {limit: 200}) : this.api("conversations", {limit: 200});
    return this.run(p.then((r) => {
      this.state.setConversations(r.convs || []);
      const unknown = (r.convs || []).some((it) => it.group && !this.state.groups.has(it.group));
      if (unknown) this.refreshGroups();
      this.render();
    }));
  }

  // after every auth: catch up from the cursor, then the server's unread counts, then the outbox
  async onOnline(auth) {
    if (auth.max_frame) this.maxFrame = auth.max_frame;
    const synced = await this.inbox.catchUp(this.gateway, auth.head);
    await this.refreshConvs();
    if (!synced) this.reloadOpenChat();
    this.outbox.flush(this.gateway);
    const status = $("me-status").value;
    if (status !== "online") this.gateway.request("status", {status}).catch(() => {});
    this.markRead();
  }

  onStop(kind, reason) {
    if (kind === "kicked" && reason === "replaced") {
      this.showConnection("replaced");
      return;
    }
    this.end(kind === "kicked" ? (reason === "admin" ? "An administrator ended your session."
      : "You were signed out.") : "Your session has ended: sign in again.");
  }

  // after kicked "replaced": take this device's session back (the other window gets kicked)
  useHere() {
    const old = this.gateway;
    old.opts.onState = null;
    old.stop();
    this.gateway = this.newGateway();
    this.gateway.start();
  }

  showConnection(st, detail) {
    document.body.dataset.conn = st;
    const el = $("conn");
    el.hidden = st === "online";
    const texts = {
      connecting: "Connecting…",
      offline: navigator.onLine === false ? "Offline: messages are sent when you are back online"
        : "Connection lost: reconnecting…",
      stopped: "Signed out",
    };
    if (st === "replaced") {
      el.replaceChildren(h("span", {}, "This device is open in another window. "),
        h("button", {type: "button", class: "linkish", onclick: () => this.useHere()}, "Use here"));
    } else {
      el.textContent = texts[st] || st;
    }
    el.className = "conn " + st;
    if (detail) el.title = detail;
  }

  // ------------------------------------------------------------------- entries

  onPush(f) {
    const s = this.state;
    switch (f.op) {
      case "msg":
        this.inbox.offer(f);
        break;
      case "presence": {
        const fr = s.friends.get(f.user);
        if (fr) {
          fr.status = f.status;
          fr.text = f.text || "";
        }
        break;
      }
      case "typing": {
        const c = s.conv("u:" + f.from);
        c.typingUntil = Date.now() + TYPING_SHOWN;
        clearTimeout(this.typingTimers.get(c.key));
        this.typingTimers.set(c.key, setTimeout(() => this.render(), TYPING_SHOWN + 50));
        break;
      }
      case "receipt": {
        const {stale} = s.receipt(f);
        if (stale) this.refreshConvs();
        break;
      }
      case "friend_request":
        if (!s.requests.some((r) => r.from === f.from)) s.requests.push({from: f.from, message: f.message, ts: Date.now()});
        toast(`${f.from} wants to be your friend`, "info");
        break;
      case "friend_added":
        this.refreshFriends();
        this.refreshRequests();
        break;
      default:
        return;
    }
    this.render();
  }

  onEntry(e) {
    const c = this.state.apply(e);
    if (e.kind === "group_event" && !this.state.groups.has(c.id)) this.refreshGroups();
    if (c.key === this.state.openKey) this.markRead();
    this.render();
  }

  entryOfAck(item, ack) {
    const f = item.fields;
    const e = {seq: ack.seq, mid: ack.mid, ts: ack.ts, from: this.state.me, cmid: item.cmid, ...keyTarget(item.key)};
    if (item.op === "send") return {...e, body: f.body, ...(f.reply_to ? {reply_to: f.reply_to} : {})};
    if (item.op === "recall") return {...e, kind: "recall", ref: f.mid, body: null};
    if (item.op === "edit") return {...e, kind: "edit", ref: f.mid, body: f.body};
    return {...e, kind: "reaction", ref: f.mid, body: {emoji: f.emoji, on: f.on !== false}};
  }

  onAck(item, ack) {
    const e = this.entryOfAck(item, ack);
    if (this.inbox.cursor !== null && ack.seq <= this.inbox.cursor) {
      this.state.apply(e);   // already past the cursor (a resend of a stored entry): idempotent
      this.render();
    } else {
      this.inbox.offer(e);
    }
  }

  onFail(item, err) {
    const c = this.state.conv(item.key);
    const p = c.pending.find((x) => x.cmid === item.cmid);
    if (p) p.failed = err.message;
    else toast(err.message);
    this.render();
  }

  restorePending() {
    for (const item of this.outbox.items) {
      if (item.op !== "send") continue;
      const c = this.state.conv(item.key);
      c.pending.push({cmid: item.cmid, body: item.fields.body, ts: item.ts || Date.now()});
    }
  }

  // ------------------------------------------------------------------- chats

  viewActions() {
    return {
      open: (key) => this.open(key),
      accept: (user) => this.run(this.api("friend_accept", {user}).then(() => {
        this.state.requests = this.state.requests.filter((r) => r.from !== user);
        this.refreshFriends();
        toast(`You and ${user} are now friends`, "info");
      })),
      reject: (user) => this.run(this.api("friend_reject", {user}).then(() => {
        this.state.requests = this.state.requests.filter((r) => r.from !== user);
        this.render();
      })),
      react: (c, m, emoji, on) => this.queue(c, "react", {mid: m.mid, emoji, on}),
      edit: (c, m) => this.composer.startEdit(c, m),
      recall: (c, m) => this.modals.confirmRecall(() => this.queue(c, "recall", {mid: m.mid})),
      discard: (c, cmid) => {
        c.pending = c.pending.filter((p) => p.cmid !== cmid);
        this.render();
      },
    };
  }

  open(key) {
    const s = this.state;
    s.openKey = key;
    const c = s.conv(key);
    this.composer.cancelEdit();
    if (!c.msgs) this.loadHistory(c);
    if (c.isGroup && !c.members) this.loadMembers(c);
    this.markRead();
    this.render({keepBottom: true});
    $("input").focus();
  }

  close() {
    this.state.openKey = null;
    this.render();
  }

  reloadOpenChat() {
    const c = this.state.openKey && this.state.convs.get(this.state.openKey);
    if (!c) return;
    c.msgs = null;
    c.byMid = new Map();
    c.reachedStart = false;
    this.loadHistory(c);
  }

  async loadHistory(c, before) {
    const r = await this.run(this.api("history", {...keyFields(c.key), limit: HISTORY_PAGE,
      ...(before ? {before} : {})}));
    if (!r) return;
    const msgs = r.msgs || [];
    this.state.addHistory(c, msgs);
    // the start: an empty page, or a short one that was not cut to fit a frame (a reply cut
    // short holds fewer than the limit, but then it is near the frame size)
    if (!msgs.length || (msgs.length < HISTORY_PAGE && JSON.stringify(msgs).length < this.maxFrame / 2)) {
      c.reachedStart = true;
    }
    if (c.key === this.state.openKey) {
      this.render({keepBottom: !before, anchorTop: !!before});
      this.markRead();
    }
  }

  async loadOlder() {
    const c = this.state.openKey && this.state.convs.get(this.state.openKey);
    if (!c || !c.msgs || c.reachedStart || this.loadingOlder) return;
    this.loadingOlder = true;
    try {
      await this.loadHistory(c, this.state.oldestMid(c));
    } finally {
      this.loadingOlder = false;
    }
  }

  async loadMembers(c) {
    const r = await this.run(this.api("group_members", {group: c.id}));
    if (!r) return;
    c.members = r.members || [];
    c.roles = r.roles || {};
    this.render();
  }

  // the open chat is read when the page is visible: its position moves to the latest entry
  markRead() {
    const s = this.state;
    const c = s.openKey && s.convs.get(s.openKey);
    if (!c || document.visibilityState === "hidden" || c.maxSeq <= c.readSeq) return;
    if (!c.unread && !this.hasIncomingAfter(c, c.readSeq)) return;
    const seq = c.maxSeq;
    s.markedRead(c);
    const fields = {...keyFields(c.key), seq};
    const gw = this.gateway;
    const p = gw && gw.authed ? gw.request("read", fields) : this.api("mark_read", fields);
    p.catch((e) => console.warn("imsrv: read", e));
    this.render();
  }

  hasIncomingAfter(c, seq) {
    if (c.last && !c.last.kind && c.last.from !== this.state.me && c.last.seq > seq) return true;
    return (c.msgs || []).some((m) => !m.kind && m.from !== this.state.me && m.seq > seq);
  }

  // a send, recall, edit or reaction: into the outbox (sent now if online, else after the next auth)
  queue(c, op, fields) {
    const cmid = this.outbox.newCmid(this.device);
    const item = {cmid, op, key: c.key, fields: op === "send" ? {...keyTarget(c.key), ...fields} : fields,
      ts: Date.now()};
    if (op === "send") c.pending.push({cmid, body: fields.body, ts: item.ts});
    this.outbox.add(item);
    this.render({keepBottom: op === "send"});
  }

  setStatus(status) {
    this.run(this.gateway.request("status", {status}));
  }

  // ------------------------------------------------------------------- render

  render(opts = {}) {
    this.pendingOpts = {keepBottom: !!(opts.keepBottom || (this.pendingOpts && this.pendingOpts.keepBottom)),
      anchorTop: !!(opts.anchorTop || (this.pendingOpts && this.pendingOpts.anchorTop))};
    if (this.renderQueued) return;
    const draw = () => {
      this.renderQueued = null;
      const o = this.pendingOpts;
      this.pendingOpts = null;
      this.view.renderSidebar();
      this.view.renderHeader();
      this.view.renderMessages(o);
    };
    // a hidden tab gets no animation frames: its title (the unread count) still follows
    this.renderQueued = document.hidden ? setTimeout(draw, 100) : requestAnimationFrame(draw);
  }
}
