// The host console: publish camera/mic (or screen), watch chat and likes, moderate, see stream stats.
import { DanmakuLayer } from "./danmaku.js";
import { friendlyError } from "./errors.js";
import { attachGifts } from "./gifts.js";
import { LiveConnection, devToken, roomFromLocation } from "./live.js";
import { attachBoard } from "./board.js";
import { attachPk } from "./pk.js";
import { attachSchedule } from "./schedule.js";
import { Publisher, ViewerMedia, isMediaError, setIceServers } from "./rtc.js";
import { attachShop, pinForms } from "./shop.js";
import { $, appendCapped, el, fmtCount, heartBurst, initials, showConnState, userColor } from "./ui.js";
import { UserCard } from "./usercard.js";

const params = new URLSearchParams(location.search);
const room = roomFromLocation();
const user = params.get("user") || "host";
const CID_TAG = Math.random().toString(36).slice(2, 10); // danmaku cids are remembered 10 min per user
const state = { me: null, hosts: new Map(), names: new Map(), cid: 0, modSupported: true, pendingMod: new Map() };
const REPLIES_ON_RELOAD = 20; // the staff snapshot's last replies put back into the chat

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

const conn = new LiveConnection({ room, getToken, wsUrl: params.get("ws") || undefined });
const danmaku = new DanmakuLayer($("#danmaku"));
const publisher = new Publisher({ conn, preview: $("#preview"), onStatus: renderPublisher });
// Co-hosts' video in tiles over the preview: the console subscribes like a viewer; its own
// publication is left out (selfId), so tiles show the others who are live.
let cohosts = null; // (its constructor reports a status before the assignment)
cohosts = new ViewerMedia({
  conn,
  video: $("#cohost-main"),
  tiles: $("#tiles"),
  selfId: () => state.me?.uid,
  onlyOthers: true,
  onStatus: (st) => {
    $("#cohost-tile").hidden = !st.playing;
    $("#cohost-tile").dataset.publisher = cohosts?.mainId || ""; // not data-uid: ViewerMedia owns those tiles
    $("#cohost-name").textContent = cohosts?.publishers.get(cohosts.mainId) || "";
  },
});
const card = new UserCard({ conn, me: () => state.me, onDone: (text) => sysLine(`${text}.`) });
card.attach($("#chat-list"));
card.attach($("#viewer-list"));
// live commerce: the question board, pins (unpin, price/stock edits) and answers in the chat
const boardRoot = el("section", { class: "board", id: "board" });
document.querySelector("aside.side").prepend(boardRoot);
const board = attachBoard(conn, boardRoot);
const shop = attachShop(conn, { list: $("#chat-list"), me: () => state.me, manage: true });
pinForms(conn, document.querySelector(".console-col"));
// incoming gifts (on the stage and in the chat), top gifters; links and PK rounds with another room
const gifts = attachGifts(conn, { stage: $("#stage"), side: document.querySelector("aside.side"), feed: $("#chat-list") });
const pk = attachPk(conn, { room, stage: $("#stage"), controls: document.querySelector(".console-col"), onNote: (text) => sysLine(text) });
const schedule = attachSchedule(conn, { parent: document.querySelector(".console-col"), manage: true, onNote: (text) => sysLine(text) });
window.liveroom = { conn, publisher, state, cohosts, card, board, shop, gifts, pk, schedule };

// RTMP: a short publish key for OBS or a hardware encoder (POST /rtmp/<room>/key on the media
// port, with this console's host token; docs/PROTOCOL.md "Encoders: OBS and FFmpeg over RTMP").
$("#rtmp-key-btn").addEventListener("click", async () => {
  const note = $("#rtmp-note");
  note.textContent = "Getting a stream key…";
  try {
    const config = await fetch("/api/config", { cache: "no-store" }).then((r) => (r.ok ? r.json() : {}));
    const base = config.http_url || `${location.protocol}//${location.hostname}:8081`;
    const res = await fetch(`${base}/rtmp/${encodeURIComponent(room)}/key`, {
      method: "POST",
      headers: { Authorization: `Bearer ${await getToken()}` },
    });
    const body = await res.json();
    if (!res.ok) throw new Error(`${body.msg} (${body.code})`);
    $("#rtmp-server").value = body.server || "";
    $("#rtmp-key").value = body.stream_key;
    $("#rtmp-box").hidden = false;
    const until = new Date(body.expires * 1000).toLocaleString();
    note.textContent = body.server
      ? `OBS: Service Custom, this Server and Stream key; x264, keyframe interval 1 s, tune zerolatency (no B-frames), AAC 48 kHz. Valid until ${until}.`
      : `This node takes no RTMP (--rtmp-port is off); the key works at a node that does. Valid until ${until}.`;
    note.dataset.state = "ready";
  } catch (err) {
    note.textContent = `No stream key: ${err.message || err}`;
    note.dataset.state = "error";
  }
});

conn.on("state", (s, detail) => {
  showConnState($("#conn"), s, detail);
  document.body.dataset.conn = s;
});
conn.on("pong", (rtt) => {
  if (conn.state === "live") showConnState($("#conn"), "live", "", ` · ${Math.round(rtt)} ms`);
});

conn.on("snapshot", (snap, { resumed, recovered, since, reset }) => {
  if (reset) {
    // the room's stream restarted (docs/PROTOCOL.md, `snapshot`): its chat is the snapshot's
    document.querySelectorAll("#chat-list li.msg, #chat-list li.reply").forEach((li) => li.remove());
    sysLine("The room was refreshed.");
  }
  setIceServers(snap.ice_servers);
  state.me = snap.you;
  state.hosts = new Map((snap.hosts || []).map((h) => [h.uid, h.name]));
  $("#me").replaceChildren("Hosting as ", el("b", {}, snap.you.name), snap.you.role === "host" ? "" : ` (${snap.you.role})`);
  $("#host-avatar").textContent = initials(snap.you.name);
  $("#host-avatar").style.background = userColor(snap.you.uid);
  setLikes(snap.likes);
  setOnline(snap.online);
  if (!recovered) {
    // the chat as it was: recent danmaku and the last answers (staff snapshot `qa`), by seq
    const replies = (snap.qa || []).filter((ev) => ev.t === "reply").slice(-REPLIES_ON_RELOAD);
    for (const ev of (snap.qa || []).filter((e) => e.t === "question")) rememberNames(ev.askers, ev.names);
    const lines = [...(snap.recent || []), ...replies].filter((ev) => !(ev.seq <= since)).sort((a, b) => a.seq - b.seq);
    for (const ev of lines) (ev.t === "reply" ? shop.replyLine(ev) : chatLine(ev));
  }
  if (resumed) sysLine(recovered ? "Reconnected: caught up." : "Reconnected.");
  if (resumed || publisher.needsSend) publisher.onReconnected();
  setSlowMode(snap.slow_mode || 0);
  cohosts.onSnapshot(snap, resumed);
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
        li.querySelector(".mod")?.remove(); // the name still opens the user card
      }
    } else if (ev.t === "live") {
      sysLine(`${ev.name} ${ev.on ? "went live" : "stopped streaming"}`);
      cohosts.onEvent(ev);
    } else if (ev.t === "slow_mode") {
      setSlowMode(ev.seconds);
      sysLine(ev.seconds ? `Slow mode on: one message per ${ev.seconds} s per viewer.` : "Slow mode off.");
    } else if (ev.t === "host") {
      if (ev.live) state.hosts.set(ev.uid, ev.name);
      else state.hosts.delete(ev.uid);
    } else if (ev.t === "question") {
      rememberNames(ev.askers, ev.names);
    }
  }
});

conn.on("answer", (frame) => publisher.onAnswer(frame));
for (const t of ["offer", "subscribed"]) conn.on(t, (frame) => cohosts.onFrame(frame));
conn.on("viewers", (frame) => renderViewers(frame));
conn.on("dm_ack", (ack) => card.status(ack.delivered ? "Delivered." : "Sent; delivered when they connect."));
conn.on("mod_ack", (ack) => {
  const what = { mute: "muted", unmute: "unmuted", kick: "kicked", ban: "banned", unban: "unbanned", delete: "deleted" };
  const target = ack.action === "delete" ? `message #${ack.seq}` : nameOf(ack.uid);
  sysLine(`Done: ${target} ${what[ack.action] || ack.action}${ack.until ? ` until ${new Date(ack.until).toLocaleTimeString()}` : ""}.`);
});
conn.on("invite_ack", (ack) => {
  $("#invite-note").textContent = ack.delivered
    ? `${nameOf(ack.uid)} was invited and can go live now.`
    : `${nameOf(ack.uid)} is not connected; they will see the invitation when they join.`;
});
conn.on("error", (frame) => {
  if (typeof frame.ref === "string" && frame.ref.startsWith("m")) return cohosts.onError(frame);
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

// A line's own action is deleting it; everything about its author is on the user card (the name).
function modButtons(ev) {
  if (!state.me || ev.uid === state.me.uid || ev.seq === undefined) return null;
  const del = () => mod({ action: "delete", seq: ev.seq });
  return el("span", { class: "mod" }, el("button", { type: "button", title: "Delete this message", onclick: del, disabled: !state.modSupported }, "Delete"));
}

// People are shown by display name everywhere (the assistant's answers, the board, acks); a uid
// only where the page has not seen their name.
function rememberNames(uids = [], names = []) {
  uids.forEach((uid, i) => names[i] && state.names.set(uid, names[i]));
  while (state.names.size > 2000) state.names.delete(state.names.keys().next().value);
}

function nameOf(uid) {
  return state.names.get(uid) || uid;
}

function chatLine(ev) {
  if (ev.uid && ev.name) rememberNames([ev.uid], [ev.name]);
  const mine = state.me && ev.uid === state.me.uid;
  const li = el(
    "li",
    { class: `msg${mine ? " mine" : ""}`, dataset: { uid: ev.uid, seq: ev.seq ?? "" } },
    state.hosts.has(ev.uid) ? el("span", { class: "role" }, "HOST") : null,
    card.nameTag(ev.uid, ev.name),
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
  if (conn.send({ t: "danmaku", text, cid: `c${CID_TAG}.${++state.cid}` })) $("#chat-input").value = "";
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
  renderToggles();
  const on = s !== "off" && s !== "error";
  $("#pub-state").dataset.state = s;
  $("#pub-state").textContent = { off: "off air", starting: "starting…", negotiating: "connecting…", live: "live", error: "error" }[s] || s;
  $("#onair").hidden = s !== "live";
  $("#live-badge").hidden = s !== "live";
  $("#offline").hidden = (on || publisher.previewing) && Boolean(publisher.stream);
  document.body.dataset.preview = publisher.previewing ? "on" : "off";
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

// -- devices, preview, mute ------------------------------------------------------------------------

$("#preview-btn").addEventListener("click", async () => {
  await publisher.openPreview();
  fillDevices();
});
$("#mute-mic").addEventListener("click", () => publisher.setMuted("audio", !publisher.muted.audio));
$("#mute-cam").addEventListener("click", () => publisher.setMuted("video", !publisher.muted.video));
$("#pick-video").addEventListener("change", (e) => publisher.useDevice("video", e.target.value));
$("#pick-audio").addEventListener("change", (e) => publisher.useDevice("audio", e.target.value));

async function fillDevices() {
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices(); // labels once the camera was opened
  } catch {
    return;
  }
  for (const [kind, sel] of [["videoinput", "#pick-video"], ["audioinput", "#pick-audio"]]) {
    const select = $(sel);
    const current = select.value;
    const list = devices.filter((d) => d.kind === kind && d.deviceId);
    select.replaceChildren(
      el("option", { value: "" }, kind === "videoinput" ? "Default camera" : "Default microphone"),
      ...list.map((d, i) => el("option", { value: d.deviceId }, d.label || `${kind === "videoinput" ? "Camera" : "Microphone"} ${i + 1}`)),
    );
    select.value = list.some((d) => d.deviceId === current) ? current : "";
  }
}
navigator.mediaDevices?.addEventListener?.("devicechange", fillDevices);

function renderToggles() {
  for (const [kind, id, on, off] of [["audio", "#mute-mic", "Mic on", "Mic muted"], ["video", "#mute-cam", "Camera on", "Camera off"]]) {
    const muted = publisher.muted[kind];
    $(id).setAttribute("aria-pressed", String(!muted));
    $(id).textContent = muted ? off : on;
  }
  document.body.dataset.mic = publisher.muted.audio ? "muted" : "on";
  document.body.dataset.cam = publisher.muted.video ? "off" : "on";
}

// -- slow mode and the viewer list --------------------------------------------------------------------

function setSlowMode(seconds) {
  const select = $("#slow-mode");
  if (![...select.options].some((o) => Number(o.value) === seconds)) select.append(el("option", { value: String(seconds) }, `${seconds} s`));
  select.value = String(seconds);
  document.body.dataset.slowMode = String(seconds);
}
$("#slow-mode").addEventListener("change", (e) => {
  if (!conn.send({ t: "slow_mode", seconds: Number(e.target.value), cid: `slow${++state.cid}` })) showError("Not connected.");
});

function selectTab(tab) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === tab);
  $("#panel-chat").hidden = tab !== "chat";
  $("#panel-viewers").hidden = tab !== "viewers";
  clearInterval(state.viewerTimer);
  if (tab === "viewers") {
    const ask = () => conn.send({ t: "viewers", cid: `vl${++state.cid}` });
    ask();
    state.viewerTimer = setInterval(ask, 5000);
  }
}
for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => selectTab(b.dataset.tab));

function renderViewers(frame) {
  $("#viewer-list").replaceChildren(
    ...frame.users.map((u) =>
      el(
        "li",
        { dataset: { uid: u.uid } },
        el("span", { class: "avatar small", style: `background:${userColor(u.uid)}` }, initials(u.name)),
        card.nameTag(u.uid, u.name),
        u.role !== "viewer" ? el("span", { class: "role" }, u.role.toUpperCase()) : null,
      ),
    ),
  );
  $("#viewer-note").textContent = `${frame.count} user${frame.count === 1 ? "" : "s"} on this node (${frame.online} connections in the room). Refreshed every 5 s.`;
}

if (params.get("autostart") === "camera" || params.get("autostart") === "1") publisher.start("camera");
conn.start();
