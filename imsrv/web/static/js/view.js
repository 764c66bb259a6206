// Rendering of the state (state.js) into the page: the sidebar (chats, friends, requests)
// and the open chat (header, messages, reactions, receipts).  User actions go to the
// `actions` callbacks main.js passes in; nothing here talks to the network.

import {$, avatar, bodyText, clear, clock, colorOf, dayKey, dayLabel, h, preview, shortTime} from "./dom.js";
import {icon} from "./icons.js";

export const QUICK_REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];
const STATUS_LABEL = {online: "online", away: "away", busy: "busy", offline: "offline"};

export function groupEventText(state, e) {
  const b = e.body || {};
  const by = b.by === state.me ? "You" : state.nameOf(b.by || e.from);
  const who = b.user === state.me ? "you" : state.nameOf(b.user);
  switch (b.event) {
    case "created": return `${by} created the group “${b.name || ""}”`;
    case "invited": return `${by} added ${who}`;
    case "joined": return `${who} joined`;
    case "left": return `${b.user === state.me ? "You" : state.nameOf(b.user)} left`;
    case "kicked": return `${by} removed ${who}`;
    case "role": return `${by} made ${who} ${b.role === "admin" ? "an admin" : "a member"}`;
    case "muted": return b.user ? `${by} muted ${who}` : `${by} muted the group`;
    case "unmuted": return b.user ? `${by} unmuted ${who}` : `${by} unmuted the group`;
    case "updated": return b.name ? `${by} renamed the group to “${b.name}”` : `${by} changed the group notice`;
    case "transferred": return `${by} made ${who} the owner`;
    case "dissolved": return `${by} dissolved the group`;
    default: return `${by}: ${b.event || "group changed"}`;
  }
}

export class View {
  constructor(state, actions) {
    this.state = state;
    this.actions = actions;
    this.tab = "chats";
    this.filter = "";
  }

  // ------------------------------------------------------------------ sidebar

  renderSidebar() {
    const s = this.state;
    avatar($("me-avatar"), s.myName, "user");
    $("me-name").textContent = s.myName;
    this.renderConvs();
    this.renderFriends();
    this.renderRequests();
    const total = this.state.totalUnread();
    const b = $("badge-chats");
    b.hidden = total === 0;
    b.textContent = total > 99 ? "99+" : String(total);
    const r = $("badge-requests");
    r.hidden = this.state.requests.length === 0;
    r.textContent = String(this.state.requests.length);
    document.title = total ? `(${total}) imsrv chat` : "imsrv chat";
  }

  matches(...texts) {
    if (!this.filter) return true;
    return texts.some((t) => String(t || "").toLowerCase().includes(this.filter));
  }

  renderConvs() {
    const s = this.state;
    const list = clear($("conv-list"));
    const now = Date.now();
    let shown = 0;
    for (const c of s.sortedConvs()) {
      const title = s.titleOf(c);
      if (!this.matches(title, c.id)) continue;
      shown += 1;
      const typing = !c.isGroup && c.typingUntil > now;
      let text = "";
      if (typing) text = "typing…";
      else if (c.last) {
        const m = c.last;
        if (m.kind === "group_event") text = groupEventText(s, m);
        else {
          const body = m.recalled ? "Message recalled" : preview(m.body);
          const who = m.from === s.me ? "You: " : c.isGroup ? s.nameOf(m.from) + ": " : "";
          text = who + body;
        }
      }
      const av = avatar(h("div"), title, c.isGroup ? "group" : "user", c.isGroup ? null : s.statusOf(c.id));
      const badge = c.unread ? h("span", {class: "badge" + (c.isMuted() ? " muted" : "")},
        c.unread > 99 ? "99+" : String(c.unread)) : null;
      list.append(h("li", {
        class: "conv" + (c.key === s.openKey ? " active" : "") + (c.unread ? " unread" : ""),
        dataset: {key: c.key}, tabindex: "0",
        onclick: () => this.actions.open(c.key),
        onkeydown: (ev) => { if (ev.key === "Enter") this.actions.open(c.key); },
      }, av, h("div", {class: "conv-main"},
        h("div", {class: "conv-top"}, h("span", {class: "conv-name"}, title),
          c.isMuted() ? h("span", {class: "muted-icon", title: "muted"}, icon("muted")) : null,
          h("span", {class: "conv-time"}, shortTime(c.ts))),
        h("div", {class: "conv-bottom"}, h("span", {class: "conv-preview" + (typing ? " typing" : "")}, text),
          c.mentioned && c.unread ? h("span", {class: "mention"}, "@") : null, badge))));
    }
    $("conv-empty").hidden = shown > 0;
  }

  renderFriends() {
    const s = this.state;
    const list = clear($("friend-list"));
    const order = {online: 0, busy: 1, away: 2, offline: 3};
    const friends = [...s.friends.values()].sort((a, b) =>
      (order[a.status] ?? 4) - (order[b.status] ?? 4) || s.nameOf(a.user).localeCompare(s.nameOf(b.user)));
    let shown = 0;
    for (const f of friends) {
      const name = s.nameOf(f.user);
      if (!this.matches(name, f.user)) continue;
      shown += 1;
      list.append(h("li", {class: "friend", dataset: {user: f.user}, tabindex: "0",
        onclick: () => this.actions.open("u:" + f.user)},
      avatar(h("div"), name, "user", f.status || "offline"),
      h("div", {class: "conv-main"},
        h("div", {class: "conv-top"}, h("span", {class: "conv-name"}, name),
          name !== f.user ? h("span", {class: "handle"}, "@" + f.user) : null),
        h("div", {class: "conv-bottom"}, h("span", {class: "presence " + (f.status || "offline")},
          STATUS_LABEL[f.status] || "offline"), f.text ? h("span", {class: "status-text"}, " · " + f.text) : null))));
    }
    $("friend-empty").hidden = shown > 0 || s.friends.size > 0;
  }

  renderRequests() {
    const s = this.state;
    const list = clear($("request-list"));
    for (const r of s.requests) {
      list.append(h("li", {class: "request", dataset: {user: r.from}},
        avatar(h("div"), r.from, "user"),
        h("div", {class: "conv-main"},
          h("div", {class: "conv-top"}, h("span", {class: "conv-name"}, r.from),
            r.ts ? h("span", {class: "conv-time"}, shortTime(r.ts)) : null),
          r.message ? h("div", {class: "request-msg"}, r.message) : null,
          h("div", {class: "request-actions"},
            h("button", {class: "primary small accept", type: "button", onclick: () => this.actions.accept(r.from)}, "Accept"),
            h("button", {class: "small reject", type: "button", onclick: () => this.actions.reject(r.from)}, "Decline")))));
    }
    $("request-empty").hidden = s.requests.length > 0;
  }

  // ------------------------------------------------------------------- the chat

  renderHeader() {
    const s = this.state;
    const c = s.openKey && s.convs.get(s.openKey);
    $("chat-none").hidden = !!c;
    $("chat-open").hidden = !c;
    document.body.classList.toggle("chat-is-open", !!c);
    if (!c) return;
    const title = s.titleOf(c);
    avatar($("chat-avatar"), title, c.isGroup ? "group" : "user", c.isGroup ? null : s.statusOf(c.id));
    $("chat-name").textContent = title;
    const sub = $("chat-sub");
    sub.className = "chat-sub";
    if (c.isGroup) {
      const g = s.groups.get(c.id);
      sub.textContent = g && g.left ? "you are not a member" : c.members ? (c.members.length === 1 ? "1 member" : `${c.members.length} members`) : "group";
    } else if (c.typingUntil > Date.now()) {
      sub.textContent = "typing…";
      sub.classList.add("typing");
    } else if (c.id === "system") {
      sub.textContent = "service messages";
    } else {
      const st = s.statusOf(c.id);
      const f = s.friends.get(c.id);
      sub.textContent = st ? STATUS_LABEL[st] + (f && f.text ? " · " + f.text : "") : "not a friend";
      if (st === "online") sub.classList.add("online");
    }
    $("group-info").hidden = !c.isGroup;
  }

  renderMessages({keepBottom = false, anchorTop = false} = {}) {
    const s = this.state;
    const c = s.openKey && s.convs.get(s.openKey);
    if (!c) return;
    const box = $("messages");
    const fromBottom = box.scrollHeight - box.scrollTop - box.clientHeight;
    const oldHeight = box.scrollHeight;
    const stick = keepBottom || fromBottom < 80;
    const list = clear($("msg-list"));
    const older = $("older");
    older.hidden = !c.msgs;
    older.className = "older" + (c.reachedStart ? " start" : "");
    $("load-older").textContent = c.reachedStart ? "Beginning of the conversation" : "Load older messages";
    $("load-older").disabled = c.reachedStart;
    let lastDay = null;
    let prev = null;
    const all = (c.msgs || []).concat(c.pending.map((p) => ({...p, from: s.me, pending: true})));
    for (const m of all) {
      const dk = dayKey(m.ts || Date.now());
      if (dk !== lastDay) {
        list.append(h("div", {class: "day"}, h("span", {}, dayLabel(m.ts || Date.now()))));
        lastDay = dk;
        prev = null;
      }
      if (m.kind === "group_event") {
        list.append(h("div", {class: "service", dataset: {mid: m.mid}}, h("span", {}, groupEventText(s, m))));
        prev = null;
        continue;
      }
      if (m.kind) continue;   // a kind this page does not know: skipped
      list.append(this.bubble(c, m, prev));
      prev = m;
    }
    if (stick) box.scrollTop = box.scrollHeight;
    else if (anchorTop) box.scrollTop = box.scrollHeight - oldHeight + box.scrollTop;
  }

  bubble(c, m, prev) {
    const s = this.state;
    const mine = m.from === s.me;
    const first = !prev || prev.from !== m.from || (m.ts - prev.ts) > 5 * 60e3;
    const row = h("div", {class: "msg " + (mine ? "out" : "in") + (first ? " first" : ""),
      dataset: m.pending ? {cmid: m.cmid} : {mid: m.mid, seq: m.seq}});
    const bubble = h("div", {class: "bubble" + (m.recalled ? " recalled" : "")});
    if (c.isGroup && !mine && first) {
      bubble.append(h("div", {class: "sender", style: {color: colorOf(s.nameOf(m.from))}}, s.nameOf(m.from)));
    }
    if (m.reply_to) {
      const q = c.byMid.get(m.reply_to);
      bubble.append(h("div", {class: "quote"}, q ? h("b", {}, s.nameOf(q.from)) : null,
        q ? (q.recalled ? "Message recalled" : preview(q.body)) : "an earlier message"));
    }
    if (m.recalled) {
      bubble.append(h("div", {class: "text"}, mine ? "You recalled this message" : "This message was recalled"));
    } else {
      const t = bodyText(m.body);
      bubble.append(t !== null ? h("div", {class: "text"}, t)
        : h("pre", {class: "text json"}, JSON.stringify(m.body, null, 1)));
    }
    const meta = h("span", {class: "meta"});
    if (m.edited && !m.recalled) meta.append(h("span", {class: "edited"}, "edited"));
    meta.append(h("span", {class: "time", title: new Date(m.ts || Date.now()).toLocaleString()}, clock(m.ts || Date.now())));
    if (mine) meta.append(this.statusMark(c, m));
    bubble.append(meta);
    const reactions = m.reactions && Object.entries(m.reactions);
    if (reactions && reactions.length) {
      bubble.append(h("div", {class: "reactions"}, reactions.map(([emoji, users]) =>
        h("button", {class: "reaction" + (users.includes(s.me) ? " mine" : ""), type: "button",
          title: users.map((u) => s.nameOf(u)).join(", "), dataset: {emoji},
          onclick: () => this.actions.react(c, m, emoji, !users.includes(s.me))},
        h("span", {class: "emoji"}, emoji), h("span", {class: "count"}, String(users.length))))));
    }
    row.append(bubble);
    if (!m.pending && !m.recalled) row.append(this.toolbar(c, m, mine));
    if (m.failed) {
      row.append(h("div", {class: "failed-note"}, `Not sent: ${m.failed} `,
        h("button", {type: "button", class: "linkish", onclick: () => this.actions.discard(c, m.cmid)}, "dismiss")));
    }
    return row;
  }

  statusMark(c, m) {
    if (m.failed) return h("span", {class: "status failed", title: "not sent"}, "!");
    if (m.pending) return h("span", {class: "status pending", title: "sending…"}, icon("clock"));
    const n = this.state.readBy(c, m);
    if (n > 0) {
      const label = c.isGroup ? `read by ${n}` : "read";
      return h("span", {class: "status read", title: label}, icon("done-all"), h("span", {class: "status-label"}, label));
    }
    return h("span", {class: "status sent", title: "sent"}, icon("check"));
  }

  toolbar(c, m, mine) {
    const s = this.state;
    const role = c.roles && c.roles[s.me];
    const canRecall = mine || (c.isGroup && (role === "owner" || role === "admin"));
    const bar = h("div", {class: "actions"});
    for (const emoji of QUICK_REACTIONS) {
      bar.append(h("button", {type: "button", class: "act react", title: "React " + emoji, dataset: {emoji},
        onclick: () => this.actions.react(c, m, emoji, !((m.reactions || {})[emoji] || []).includes(s.me))}, emoji));
    }
    if (mine && bodyText(m.body) !== null) {
      bar.append(h("button", {type: "button", class: "act edit", title: "Edit", onclick: () => this.actions.edit(c, m)}, icon("edit")));
    }
    if (canRecall) {
      bar.append(h("button", {type: "button", class: "act recall", title: "Recall",
        onclick: () => this.actions.recall(c, m)}, icon("recall")));
    }
    return bar;
  }
}
