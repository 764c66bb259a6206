// The chat page's dialogs: a new group, a group's members (invite, leave), and the
// confirmation of a recall.  One modal element (index.html #modal) shows one at a time.

import {$, avatar, clear, h, toast} from "./dom.js";

export class Modals {
  constructor(chat) {
    this.chat = chat;
    $("modal-close").addEventListener("click", () => this.close());
    $("modal").addEventListener("click", (ev) => { if (ev.target === $("modal")) this.close(); });
    document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !$("modal").hidden) this.close(); });
  }

  show(title, ...content) {
    $("modal-title").textContent = title;
    clear($("modal-body")).append(...content);
    $("modal").hidden = false;
    const first = $("modal-body").querySelector("input, button");
    if (first) first.focus();
  }

  close() {
    $("modal").hidden = true;
    clear($("modal-body"));
  }

  // checkboxes of friends (except those in `exclude`) -> [element, () => [chosen users]]
  friendPicker(exclude = []) {
    const s = this.chat.state;
    const friends = [...s.friends.values()].filter((f) => !exclude.includes(f.user));
    if (!friends.length) return [h("p", {class: "empty-note"}, "No friends to add."), () => []];
    const boxes = [];
    const list = h("ul", {class: "pick-list"}, friends.map((f) => {
      const box = h("input", {type: "checkbox", value: f.user, dataset: {user: f.user}});
      boxes.push(box);
      return h("li", {}, h("label", {}, box, avatar(h("div"), s.nameOf(f.user), "user"),
        h("span", {}, s.nameOf(f.user))));
    }));
    return [list, () => boxes.filter((b) => b.checked).map((b) => b.value)];
  }

  newGroup() {
    const name = h("input", {id: "group-name", placeholder: "Group name", maxlength: "64", required: true});
    const [picker, chosen] = this.friendPicker();
    const form = h("form", {class: "modal-form", onsubmit: async (ev) => {
      ev.preventDefault();
      if (!name.value.trim()) return;
      const r = await this.chat.run(this.chat.api("group_create", {name: name.value.trim(), members: chosen()}));
      if (!r) return;
      this.close();
      this.chat.state.groups.set(r.group, {group: r.group, name: name.value.trim(), left: false});
      this.chat.open("g:" + r.group);
    }}, h("label", {}, "Name", name), h("div", {class: "pick-title"}, "Members"), picker,
    h("div", {class: "modal-actions"}, h("button", {class: "primary", type: "submit", id: "group-create"}, "Create group")));
    this.show("New group", form);
  }

  async groupInfo(c) {
    await this.chat.loadMembers(c);
    const s = this.chat.state;
    const members = c.members || [];
    const roleLabel = {owner: "owner", admin: "admin"};
    const list = h("ul", {class: "member-list"}, members.map((u) => h("li", {dataset: {user: u}},
      avatar(h("div"), s.nameOf(u), "user", s.statusOf(u)),
      h("span", {class: "member-name"}, u === s.me ? "You" : s.nameOf(u)),
      c.roles[u] && roleLabel[c.roles[u]] ? h("span", {class: "role"}, roleLabel[c.roles[u]]) : null)));
    const [picker, chosen] = this.friendPicker(members);
    const invite = h("form", {class: "modal-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const users = chosen();
      if (!users.length) return;
      const r = await this.chat.run(this.chat.api("group_invite", {group: c.id, users}));
      if (!r) return;
      toast(`Added ${users.join(", ")}`, "info");
      c.members = null;
      this.close();
      this.chat.loadMembers(c);
    }}, h("div", {class: "pick-title"}, "Add friends"), picker,
    h("div", {class: "modal-actions"},
      h("button", {class: "danger", type: "button", id: "group-leave", onclick: () => this.leave(c)}, "Leave group"),
      h("button", {class: "primary", type: "submit", id: "group-invite"}, "Add to group")));
    this.show(`${s.titleOf(c)} · ${members.length} members`, list, invite);
  }

  async leave(c) {
    const r = await this.chat.run(this.chat.api("group_leave", {group: c.id}));
    if (!r) return;
    this.close();
    this.chat.refreshGroups();
  }

  confirmRecall(onYes) {
    this.show("Recall message?",
      h("p", {}, "The message will be removed for everyone in this chat."),
      h("div", {class: "modal-actions"},
        h("button", {type: "button", onclick: () => this.close()}, "Cancel"),
        h("button", {type: "button", class: "danger", id: "recall-yes", onclick: () => { this.close(); onYes(); }},
          "Recall")));
  }
}
