// The host console: publish camera/mic (or screen), watch chat and likes, moderate, see stream stats.
import { DanmakuLayer } from "./danmaku.js";
import { friendlyError } from "./errors.js";
import { LiveConnection, devToken, roomFromLocation } from "./live.js";
import { attachBoard } from "./board.js";
import { Publisher, isMediaError } from "./rtc.js";
import { attachShop, pinForms } from "./shop.js";
import { $, appendCapped, el, fmtCount, heartBurst, initials, showConnState, userColor } from "./ui.js";

const params = new URLSearchParams(location.search);
const room = roomFromLocation();
const user = params.get("user") || "host";
const state = { me: null, hosts: new Map(), cid: 0, modSupported: true, pendingMod: new Map() };

document.title = `${room} · host console`;
$("#room-title").textContent = room;
$("#viewer-link").replaceChildren(
  "Viewers watch at ",
  el("a", { href: `/room/${room}`, target: "_blank", style: "color:inherit" }, `${location.host}/room/${room}`),
);

async function getToken() {
  const urlToken = params.get("token");
  if (urlToken) return urlToken;
  const token = await devToken({ room, user, name: params.get("name") || user, role: "host" });
  if (token) return token;
  const pasted = prompt("Paste a host token (liveroom token --role host --room ROOM --user YOU)");
  if (!pasted) throw Object.assign(new Error("a host token is needed"), { fatal: true });
  return pasted.trim();
}

const conn = new LiveConnection({ room, getToken });
const danmaku = new DanmakuLayer($("#danmaku"));
const publisher = new Publisher({ conn, preview: $("#preview"), onStatus: renderPublisher });
// live commerce: the question board, pins (unpin, price/stock edits) and answers in the chat
const boardRoot = el("section", { class: "board", id: "board" });
document.querySelector("aside.side").prepend(boardRoot);
const board = attachBoard(conn, boardRoot);
const shop = attachShop(conn, { list: $("#chat-list"), me: () => state.me, manage: true });
pinForms(conn, document.querySelector(".console-col"));
window.liveroom = { conn, publisher, state, board, shop };

conn.on("state", (s, detail) => {
  showConnState($("#conn"), s, detail);
  document.body.dataset.conn = s;
});
conn.on("pong", (rtt) => {
  if (conn.state === "live") showConnState($("#conn"), "live", "", ` · ${Math.round(rtt)} ms`);
});

conn.on("snapshot", (snap, { resumed, recovered, since }) => {
  state.me = snap.you;
  state.hosts = new Map((snap.hosts || []).map((h) => [h.uid, h.name]));
  $("#me").replaceChildren("Hosting as ", el("b", {}, snap.you.name), snap.you.role === "host" ? "" : ` (${snap.you.role})`);
  $("#host-avatar").textContent = initials(snap.you.name);
  $("#host-avatar").style.background = userColor(snap.you.uid);
  setLikes(snap.likes);
  setOnline(snap.online);
  if (!recovered) for (const ev of snap.recent || []) if (!(ev.seq <= since)) chatLine(ev);
  if (resumed) sysLine(recovered ? "Reconnected: caught up." : "Reconnected.");
  if (resumed || publisher.needsSend) publisher.onReconnected();
});

conn.on("events", (events) => {
  for (const ev of events) {
    if (ev.t === "danmaku") {
      chatLine(ev);
      danmaku.add({ text: ev.text, name: ev.name, mine: ev.uid === state.me?.uid, key: ev.seq });
    } else if (ev.t === "likes") {
      setLikes(ev.total);
      heartBurst($("#hearts"), Math.min(5, ev.delta || 1));
    } else if (ev.t === "presence") {
      setOnline(ev.online);
    } else if (ev.t === "delete") {
      danmaku.remove(ev.target);
      const li = document.querySelector(`#chat-list li[data-seq="${ev.target}"]`);
      if (li) {
        li.classList.add("deleted");
        li.querySelector(".text").textContent = `removed by ${ev.name}`;
        li.querySelector(".mod")?.remove();
      }
    } else if (ev.t === "live") {
      sysLine(`${ev.name} ${ev.on ? "went live" : "stopped streaming"}`);
    } else if (ev.t === "host") {
      if (ev.live) state.hosts.set(ev.uid, ev.name);
      else state.hosts.delete(ev.uid);
    }
  }
});

conn.on("answer", (frame) => publisher.onAnswer(frame));
conn.on("mod_ack", (ack) => {
  const what = { mute: "muted", unmute: "unmuted", kick: "kicked", ban: "banned", unban: "unbanned", delete: "deleted" };
  const target = ack.action === "delete" ? `message #${ack.seq}` : ack.uid;
  sysLine(`Done: ${target} ${what[ack.action] || ack.action}${ack.until ? ` until ${new Date(ack.until).toLocaleTimeString()}` : ""}.`);
});
conn.on("invite_ack", (ack) => {
  $("#invite-note").textContent = ack.delivered
    ? `${ack.uid} was invited and can go live now.`
    : `${ack.uid} is not connected; they will see the invitation when they join.`;
});
conn.on("error", (frame) => {
  if (isMediaError(frame) || (typeof frame.ref === "string" && frame.ref.startsWith("p"))) {
    return publisher.onError(frame);
  }
  if (frame.code === 4001 && /mod/.test(frame.msg || "")) {
    state.modSupported = false;
    for (const b of document.querySelectorAll(".mod button")) b.disabled = true;
    return showError("Moderation is not supported by this server yet.");
  }
  showError(friendlyError(frame));
});

function setLikes(total) {
  $("#likes-top").textContent = fmtCount(total);
  $("#st-likes").textContent = fmtCount(total);
  $("#st-likes").dataset.total = String(total);
}

function setOnline(n) {
  $("#online").textContent = fmtCount(n);
  $("#st-online").textContent = fmtCount(n);
}

function showError(text) {
  const box = $("#chat-error");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => (box.hidden = true), 6000);
}

// -- chat with moderation buttons --------------------------------------------------------------

function mod(frame) {
  const cid = `mod${++state.cid}`;
  if (!conn.send({ t: "mod", ...frame, cid })) showError("Not connected.");
}

function modButtons(ev) {
  if (!state.me || ev.uid === state.me.uid) return null;
  const b = (label, title, onclick, danger = false) =>
    el("button", { type: "button", title, class: danger ? "danger" : "", onclick, disabled: !state.modSupported }, label);
  return el(
    "span",
    { class: "mod" },
    b("Delete", "Delete this message", () => mod({ action: "delete", seq: ev.seq })),
    b("Mute 10m", `Mute ${ev.name} for 10 minutes`, () => mod({ action: "mute", uid: ev.uid, duration: 600 })),
    b("Kick", `Remove ${ev.name} from the room`, () => mod({ action: "kick", uid: ev.uid }), true),
    b("Ban", `Ban ${ev.name} from the room`, () => {
      if (confirm(`Ban ${ev.name} (${ev.uid}) from this room?`)) mod({ action: "ban", uid: ev.uid });
    }, true),
  );
}

function chatLine(ev) {
  const mine = state.me && ev.uid === state.me.uid;
  const li = el(
    "li",
    { class: `msg${mine ? " mine" : ""}`, dataset: { uid: ev.uid, seq: ev.seq ?? "" } },
    state.hosts.has(ev.uid) ? el("span", { class: "role" }, "HOST") : null,
    el("span", { class: "who", style: `color:${userColor(ev.uid)}`, title: `@${ev.uid}` }, ev.name),
    el("span", { class: "text" }, ev.text),
    modButtons(ev),
  );
  appendCapped($("#chat-list"), li, 300);
}

function sysLine(text) {
  appendCapped($("#chat-list"), el("li", { class: "sys" }, text));
}

$("#chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text) return;
  if (conn.send({ t: "danmaku", text, cid: `c${++state.cid}` })) $("#chat-input").value = "";
});

$("#invite-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const uid = $("#invite-uid").value.trim();
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(uid)) return;
  if (conn.send({ t: "invite", uid, cid: `inv${++state.cid}` })) $("#invite-uid").value = "";
});

// -- publishing ---------------------------------------------------------------------------------

$("#go-camera").addEventListener("click", () => publisher.start("camera"));
$("#go-screen").addEventListener("click", () => publisher.start("screen"));
$("#stop").addEventListener("click", () => publisher.stop());

function renderPublisher({ state: s, detail, stats }) {
  const on = s !== "off" && s !== "error";
  $("#pub-state").dataset.state = s;
  $("#pub-state").textContent = { off: "off air", starting: "starting…", negotiating: "connecting…", live: "live", error: "error" }[s] || s;
  $("#onair").hidden = s !== "live";
  $("#live-badge").hidden = s !== "live";
  $("#offline").hidden = on && Boolean(publisher.stream);
  $("#pub-detail").textContent = detail || "Go live with your camera and microphone, or share your screen.";
  $("#go-camera").disabled = on;
  $("#go-screen").disabled = on;
  $("#stop").disabled = !on;
  $("#st-bitrate").textContent = stats.bitrate || "–";
  $("#st-fps").textContent = stats.fps ?? "–";
  $("#st-res").textContent = stats.resolution || "–";
  $("#st-loss").textContent = stats.loss || "–";
  $("#st-rtt").textContent = stats.rtt || "–";
  if (detail && s === "error") showError(detail);
}

if (params.get("autostart") === "camera" || params.get("autostart") === "1") publisher.start("camera");
conn.start();
