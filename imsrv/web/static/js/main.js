// The chat page's entry point: this browser's device id, the sign-in screen, the session kept
// in localStorage, and the page's fixed controls wired to the signed-in Chat (chat.js).

import {$, toast} from "./dom.js";
import {api, ConnectionLost} from "./net.js";
import {Chat} from "./chat.js";
import {fillIcons} from "./icons.js";

const DEVICE_KEY = "imsrv:device";
const SESSION_KEY = "imsrv:session";
const USER_RE = /^[a-z0-9_][a-z0-9_.-]{2,31}$/;

// one device id per browser (its localStorage): the `device` of login and auth
function deviceId() {
  let d = localStorage.getItem(DEVICE_KEY);
  if (!d) {
    const bytes = crypto.getRandomValues(new Uint8Array(5));
    d = "web-" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem(DEVICE_KEY, d);
  }
  return d;
}

function savedSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
    return s && s.user && s.token ? s : null;
  } catch (e) {
    return null;
  }
}

let chat = null;
let registering = false;

// ------------------------------------------------------------------------ signing in

function showAuth(message) {
  $("app").hidden = true;
  $("auth").hidden = false;
  document.body.dataset.screen = "auth";
  $("auth-error").textContent = message || "";
  $("auth-password").value = "";
  $("auth-user").focus();
}

function setMode(register) {
  registering = register;
  $("tab-login").classList.toggle("active", !register);
  $("tab-register").classList.toggle("active", register);
  $("auth-name-row").hidden = !register;
  $("auth-submit").textContent = register ? "Create account" : "Sign in";
  $("auth-password").autocomplete = register ? "new-password" : "current-password";
  $("auth-error").textContent = "";
}

async function submitAuth(ev) {
  ev.preventDefault();
  const user = $("auth-user").value.trim().toLowerCase();
  const password = $("auth-password").value;
  const err = $("auth-error");
  if (!USER_RE.test(user)) {
    err.textContent = "User names are 3 to 32 characters: a-z, 0-9, _ . - (not starting with . or -).";
    return;
  }
  if (password.length < 8 || password.length > 128) {
    err.textContent = "Passwords are 8 to 128 characters.";
    return;
  }
  const button = $("auth-submit");
  button.disabled = true;
  err.textContent = "";
  try {
    if (registering) {
      const name = $("auth-name").value.trim();
      await api("register", {user, password, ...(name ? {name} : {})});
    }
    const r = await api("login", {user, password, device: deviceId()});
    const session = {user: r.user, token: r.token};
    localStorage.setItem(SESSION_KEY, JSON.stringify(session));
    startChat(session);
  } catch (e) {
    if (e instanceof ConnectionLost) err.textContent = "The server cannot be reached. Try again in a moment.";
    else if (e.code === "rate_limited") err.textContent = `Too many attempts: try again in ${e.reply.retry_after} s.`;
    else if (e.code === "conflict") err.textContent = `The user name ${user} is taken.`;
    else err.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------ the chat

function startChat(session) {
  $("auth").hidden = true;
  $("app").hidden = false;
  document.body.dataset.screen = "chat";
  document.body.dataset.user = session.user;
  chat = new Chat(session, deviceId(), (message) => {
    localStorage.removeItem(SESSION_KEY);
    chat = null;
    showAuth(message);
  });
  chat.start();
}

function switchTab(tab) {
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const name of ["chats", "friends", "requests"]) $("pane-" + name).hidden = name !== tab;
  if (chat) chat.view.tab = tab;
}

function wire() {
  $("tab-login").addEventListener("click", () => setMode(false));
  $("tab-register").addEventListener("click", () => setMode(true));
  $("auth-form").addEventListener("submit", submitAuth);

  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  $("filter").addEventListener("input", () => {
    if (!chat) return;
    chat.view.filter = $("filter").value.trim().toLowerCase();
    chat.render();
  });
  $("logout").addEventListener("click", () => chat && chat.signOut());
  $("new-group").addEventListener("click", () => chat && chat.modals.newGroup());
  $("me-status").addEventListener("change", () => chat && chat.setStatus($("me-status").value));
  $("add-friend").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!chat) return;
    const to = $("add-friend-user").value.trim().toLowerCase();
    const message = $("add-friend-msg").value.trim();
    const r = await chat.run(chat.api("friend_request", {to, ...(message ? {message} : {})}));
    if (!r) return;
    $("add-friend-user").value = "";
    $("add-friend-msg").value = "";
    chat.refreshFriends();
    toast(`Friend request sent to ${to}`, "info");
  });

  $("back").addEventListener("click", () => chat && chat.close());
  $("group-info").addEventListener("click", () => {
    const c = chat && chat.state.openKey && chat.state.convs.get(chat.state.openKey);
    if (c && c.isGroup) chat.modals.groupInfo(c);
  });
  $("load-older").addEventListener("click", () => chat && chat.loadOlder());
  $("messages").addEventListener("scroll", () => {
    if (chat && $("messages").scrollTop < 40) chat.loadOlder();
  });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (chat) chat.composer.submit();
  });
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      if (chat) chat.composer.submit();
    } else if (ev.key === "Escape" && chat) {
      chat.composer.cancelEdit();
    }
  });
  $("input").addEventListener("input", () => chat && chat.composer.typed());
  $("edit-cancel").addEventListener("click", () => chat && chat.composer.cancelEdit());
  document.addEventListener("visibilitychange", () => chat && chat.markRead());
  window.addEventListener("focus", () => chat && chat.markRead());
}

fillIcons();
wire();
const saved = savedSession();
if (saved) startChat(saved);
else showAuth("");
