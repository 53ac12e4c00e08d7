// Small DOM helpers shared by the viewer page and the host console.

export const $ = (sel, root = document) => root.querySelector(sel);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

/** A stable, readable colour for a user id. */
export function userColor(uid) {
  let h = 0;
  for (const ch of String(uid)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 75% 68%)`;
}

export function initials(name) {
  return String(name || "?").trim().slice(0, 1).toUpperCase() || "?";
}

export function fmtCount(n) {
  n = Number(n) || 0;
  if (n < 10000) return n.toLocaleString("en-US");
  if (n < 1e6) return `${(n / 1000).toFixed(n < 1e5 ? 1 : 0)}k`;
  return `${(n / 1e6).toFixed(1)}M`;
}

const following = new WeakMap(); // list -> whether it follows new lines (set while it is shown)

function atBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

/** Follow a list's new lines unless the user scrolled up to read, across being hidden: a hidden
 * list (another tab) has no scroll position, and comes back at the top, so it remembers. */
function follow(list) {
  if (following.has(list)) return;
  following.set(list, true);
  let shown = list.clientHeight > 0;
  list.addEventListener("scroll", () => {
    if (shown && list.clientHeight) following.set(list, atBottom(list)); // the user's scrolling
  });
  new ResizeObserver(() => {
    shown = list.clientHeight > 0;
    if (shown && following.get(list)) list.scrollTop = list.scrollHeight; // shown again
  }).observe(list);
}

/** Keep a scrolling list pinned to the bottom unless the user scrolled up to read. */
export function appendCapped(list, node, cap = 200) {
  follow(list);
  const pinned = list.clientHeight ? atBottom(list) : following.get(list);
  list.append(node);
  while (list.children.length > cap) list.firstElementChild.remove();
  if (pinned) list.scrollTop = list.scrollHeight;
}

const HEART =
  "M12 21s-7.5-4.6-10-9.3C.4 8.4 2.4 4.5 6.2 4.5c2.2 0 3.8 1.3 4.8 2.8 1-1.5 2.6-2.8 4.8-2.8 3.8 0 5.8 3.9 4.2 7.2C19.5 16.4 12 21 12 21z";
const HEART_COLORS = ["#ff2e63", "#ff7aa2", "#ffb020", "#ff6a3d", "#c86bfa"];

/** Float a few hearts up from the bottom of `box` (the like burst). */
export function heartBurst(box, count = 3) {
  if (!box || box.childElementCount > 40) return;
  for (let i = 0; i < count; i++) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.classList.add("heart-fx");
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", HEART);
    svg.append(path);
    svg.style.fill = HEART_COLORS[Math.floor(Math.random() * HEART_COLORS.length)];
    svg.style.right = `${20 + Math.random() * 50}px`;
    box.append(svg);
    const drift = (Math.random() - 0.5) * 90;
    const rise = box.clientHeight * (0.6 + Math.random() * 0.4);
    const anim = svg.animate(
      [
        { transform: "translate(0, 0) scale(.4)", opacity: 0 },
        { transform: `translate(${drift * 0.3}px, -${rise * 0.2}px) scale(1.1)`, opacity: 1, offset: 0.15 },
        { transform: `translate(${drift}px, -${rise}px) scale(.9)`, opacity: 0 },
      ],
      { duration: 1400 + Math.random() * 700, delay: i * 90, easing: "cubic-bezier(.2,.6,.4,1)", fill: "both" },
    );
    anim.onfinish = () => svg.remove();
  }
}

const STATE_TEXT = {
  idle: "Offline",
  connecting: "Connecting…",
  live: "Connected",
  reconnecting: "Reconnecting…",
  failed: "Disconnected",
  closed: "Left the room",
};

/** What a person reads while the page reconnects: the why in plain words and when it tries
 * again; the connection's own detail (e.g. "token: cannot reach the server (Failed to fetch)")
 * stays in the status pill's tooltip. */
export function reconnectMessage(detail = "") {
  const why = /server restarting/.test(detail)
    ? "The server is restarting."
    : /cannot reach|Failed to fetch|NetworkError|connection lost|1006/.test(detail)
      ? "The server cannot be reached right now."
      : "The connection to the room was lost.";
  const wait = detail.match(/retrying in ([\d.]+) s/);
  const attempt = detail.match(/attempt (\d+)/);
  const next = wait ? `Trying again in ${wait[1]}\u00a0s.` : attempt ? `Trying again (attempt ${attempt[1]})…` : "The page is getting it back.";
  return `${why} ${next}`;
}

/** Reflect a LiveConnection's state in the top-bar indicator. */
export function showConnState(box, state, detail, extra = "") {
  box.dataset.state = state;
  box.title = detail || "";
  box.querySelector("#conn-text").textContent = (STATE_TEXT[state] || state) + extra;
}
