// DOM and formatting helpers of the chat page.  Text from the network only ever reaches the
// page as text nodes or attribute values (never as HTML), so a message cannot inject markup.

export const $ = (id) => document.getElementById(id);

// h("div", {class: "x", onclick: fn, dataset: {k: v}}, child, "text", [more]) -> Element
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") Object.assign(el.style, v);   // CSSOM: allowed by the CSP, unlike style=""
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// --- people

const PALETTE = ["#e17076", "#7bc862", "#e5ca77", "#65aadd", "#a695e7", "#ee7aae", "#6ec9cb", "#faa774"];

export function colorOf(name) {
  let n = 0;
  for (const ch of String(name)) n = (n * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[n % PALETTE.length];
}

export function initials(name) {
  const words = String(name || "?").replace(/[_.\-]+/g, " ").trim().split(/\s+/);
  const first = [...(words[0] || "?")][0] || "?";
  const second = words.length > 1 ? [...words[words.length - 1]][0] : "";
  return (first + (second || "")).toUpperCase();
}

// an avatar circle: initials on a colour of the name; kind "group" shows a group glyph
export function avatar(el, name, kind, status) {
  clear(el);
  el.className = "avatar" + (kind === "group" ? " group" : "") + (name === "system" ? " system" : "");
  el.style.background = colorOf(name);
  el.append(document.createTextNode(kind === "group" ? "#" : name === "system" ? "i" : initials(name)));
  if (status) el.append(h("span", {class: "dot " + status, title: status}));
  return el;
}

// --- time

const pad = (n) => String(n).padStart(2, "0");

export function clock(ts) {
  const d = new Date(ts);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function sameDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

export function dayLabel(ts) {
  const d = new Date(ts);
  const now = new Date();
  if (sameDay(d, now)) return "Today";
  const y = new Date(now);
  y.setDate(now.getDate() - 1);
  if (sameDay(d, y)) return "Yesterday";
  const opts = {weekday: "long", day: "numeric", month: "long"};
  if (d.getFullYear() !== now.getFullYear()) opts.year = "numeric";
  return d.toLocaleDateString(undefined, opts);
}

export function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

// the time in the conversation list: the clock today, the weekday this week, else the date
export function shortTime(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  const now = new Date();
  if (sameDay(d, now)) return clock(ts);
  if (now - d < 6 * 86400e3) return d.toLocaleDateString(undefined, {weekday: "short"});
  return d.toLocaleDateString(undefined, {day: "numeric", month: "short"});
}

// --- message bodies

// the text of a body (the protocol's rule: body.text when it is a string, else a string body)
export function bodyText(body) {
  if (typeof body === "string") return body;
  if (body && typeof body === "object" && typeof body.text === "string") return body.text;
  return null;
}

// a one-line preview of any body
export function preview(body) {
  const t = bodyText(body);
  if (t !== null) return t.replace(/\s+/g, " ").slice(0, 120);
  if (body === null || body === undefined) return "";
  return JSON.stringify(body).slice(0, 120);
}

// --- toasts

export function toast(message, kind = "error") {
  const box = $("toasts");
  const el = h("div", {class: "toast " + kind, role: kind === "error" ? "alert" : "status"}, message);
  box.append(el);
  setTimeout(() => el.classList.add("gone"), 4500);
  setTimeout(() => el.remove(), 5000);
}
