// The message composer of the open chat: sending, editing one of my messages (the edit
// bar), typing hints to the other user of a 1:1 chat, and the growing text box.

import {$, toast} from "./dom.js";

export const MAX_BODY = 16384;   // bytes of a message body's JSON (docs/PROTOCOL.md section 4)
const TYPING_EVERY = 3000;       // ms between two typing hints while the user types

export class Composer {
  constructor(chat) {
    this.chat = chat;
    this.editing = null;         // the message being edited
    this.lastTyping = 0;
  }

  submit() {
    const s = this.chat.state;
    const c = s.openKey && s.convs.get(s.openKey);
    const input = $("input");
    const text = input.value.replace(/\s+$/, "");
    if (!c || !text.trim()) return;
    let body = {text};
    if (this.editing) body = typeof this.editing.body === "string" ? text : {...this.editing.body, text};
    if (new TextEncoder().encode(JSON.stringify(body)).length > MAX_BODY) {
      toast(`The message is too long (at most ${MAX_BODY} bytes).`);
      return;
    }
    if (this.editing) {
      this.chat.queue(c, "edit", {mid: this.editing.mid, body});
      this.cancelEdit();
    } else {
      this.chat.queue(c, "send", {body});
    }
    input.value = "";
    this.autoGrow();
  }

  startEdit(c, m) {
    this.editing = m;
    $("edit-bar").hidden = false;
    $("edit-preview").textContent = (m.body && m.body.text) || String(m.body);
    const input = $("input");
    input.value = typeof m.body === "string" ? m.body : m.body.text;
    input.focus();
    this.autoGrow();
  }

  cancelEdit() {
    if (!this.editing) return;
    this.editing = null;
    $("edit-bar").hidden = true;
    $("input").value = "";
    this.autoGrow();
  }

  typed() {
    const c = this.chat.state.openKey && this.chat.state.convs.get(this.chat.state.openKey);
    this.autoGrow();
    if (!c || c.isGroup || !$("input").value.trim() || this.editing) return;
    const now = Date.now();
    if (now - this.lastTyping < TYPING_EVERY) return;
    this.lastTyping = now;
    this.chat.gateway.hint("typing", {to: c.id});
  }

  autoGrow() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 160) + "px";
  }
}
