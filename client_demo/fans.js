// Followers on the viewer page (docs/PROTOCOL.md "Followers and scheduled lives"): a follow
// button for the room's host, and a "going live" toast when a followed host starts publishing
// (`live_notice` frames arrive on the user channel, whatever room this page is in).
import { el, fmtCount } from "./ui.js";

const TOAST_MS = 15000;

export function attachFans(conn, { button, toastParent, host, me }) {
  const s = { following: new Map(), cid: 0 }; // host uid -> followed (as the server last said)
  const toast = el("div", { class: "toast live-toast", id: "live-toast", role: "status", hidden: true });
  toastParent.append(toast);
  let timer = null;

  function render() {
    const h = host();
    const self = me();
    button.hidden = !h || !self || h === self.uid;
    if (button.hidden) return;
    const on = s.following.get(h)?.on || false;
    button.setAttribute("aria-pressed", String(on));
    button.dataset.host = h;
    const n = s.following.get(h)?.followers;
    button.textContent = on ? "Following" : "+ Follow";
    button.title = typeof n === "number" ? `${fmtCount(n)} followers` : "Be told when this host goes live";
  }

  button.addEventListener("click", () => {
    const h = host();
    if (!h) return;
    const on = s.following.get(h)?.on || false;
    conn.send({ t: on ? "unfollow" : "follow", host: h, cid: `f${++s.cid}` });
  });
  conn.on("follow_ack", (ack) => {
    s.following.set(ack.host, { on: ack.on, followers: ack.followers });
    render();
  });
  conn.on("live_notice", (n) => {
    const here = n.room === conn.room;
    toast.replaceChildren(
      el("div", {}, el("b", {}, n.name || n.host), n.reserved && n.title ? ` is going live: ${n.title}` : " is going live now"),
      here ? "" : el("div", { class: "toast-actions" }, el("a", { class: "btn go", id: "live-toast-go", href: `/room/${encodeURIComponent(n.room)}${location.search}` }, "Watch")),
    );
    toast.dataset.host = n.host;
    toast.dataset.room = n.room;
    toast.hidden = false;
    clearTimeout(timer);
    timer = setTimeout(() => (toast.hidden = true), TOAST_MS);
  });
  conn.on("snapshot", render);
  return { render, state: s };
}
