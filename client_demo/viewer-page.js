// The viewer page: join a room, watch the host, chat (danmaku), like, and DM.
import { DanmakuLayer } from "./danmaku.js";
import { friendlyError, isBan, isKick } from "./errors.js";
import { attachFans } from "./fans.js";
import { attachGifts } from "./gifts.js";
import { HlsPlayer } from "./hls-player.js";
import { LiveConnection, TokenError, devToken, randomId, roomFromLocation, tokenClaims } from "./live.js";
import { attachPk } from "./pk.js";
import { ReplayPlayer } from "./replay-player.js";
import { attachSchedule } from "./schedule.js";
import { Publisher, ViewerMedia, isMediaError } from "./rtc.js";
import { attachShop } from "./shop.js";
import { $, appendCapped, el, fmtCount, heartBurst, initials, reconnectMessage, showConnState, userColor } from "./ui.js";
import { UserCard } from "./usercard.js";

const params = new URLSearchParams(location.search);
const room = roomFromLocation();
const state = {
  me: null, // {uid, name, role}
  limits: {},
  likes: 0,
  online: 0,
  hosts: new Map(),
  pending: new Map(), // cid -> chat <li> of an own danmaku not yet echoed
  cidSeq: 0,
  cidTag: Math.random().toString(36).slice(2, 10), // cids are remembered 10 min per user: unique per page
  likeQueue: 0,
  likeTimer: null,
  convs: new Map(), // uid -> {uid, name, items: [], unread}
  openConv: null,
  tab: "chat",
  // "webrtc", or "hls": ?mode=hls, or after WebRTC was refused for capacity or could not connect;
  // "replay": ?replay=<recording id>, a recording with its danmaku (the room's chat stays live)
  mode: params.get("replay") ? "replay" : params.get("mode") === "hls" ? "hls" : "webrtc",
  held: new Map(), // seq -> timer of a danmaku held until the HLS picture catches up
};

document.title = `${room} · liveroom`;
$("#room-title").textContent = room;

// -- identity and token -------------------------------------------------------------

function wantedUser() {
  const fromUrl = params.get("user");
  if (fromUrl) return fromUrl;
  let uid = localStorage.getItem("liveroom.user");
  if (!uid) {
    uid = randomId("guest-");
    localStorage.setItem("liveroom.user", uid);
  }
  return uid;
}

async function getToken(fresh) {
  // A token from the URL or pasted is reused; the dev endpoint mints one per connection
  // (so servers that accept each token once, --join-nonce, still let us reconnect).
  const urlToken = params.get("token");
  if (urlToken && !fresh) return urlToken;
  const pasted = sessionStorage.getItem(`liveroom.token.${room}`);
  if (pasted && !fresh) return pasted;
  const user = wantedUser();
  const token = await devToken({ room, user, name: params.get("name") || user, role: "viewer" });
  if (token) return token;
  return askForToken();
}

function askForToken() {
  const dialog = $("#token-dialog");
  return new Promise((resolve, reject) => {
    dialog.addEventListener(
      "close",
      () => {
        const token = $("#token-input").value.trim();
        const claims = tokenClaims(token);
        if (!claims) return reject(new TokenError("that is not a token", true));
        sessionStorage.setItem(`liveroom.token.${room}`, token);
        resolve(token);
      },
      { once: true },
    );
    dialog.showModal();
  });
}

// -- connection ------------------------------------------------------------------------

const conn = new LiveConnection({ room, getToken, boot: window.__liveroomBoot, wsUrl: params.get("ws") || undefined });
const danmaku = new DanmakuLayer($("#danmaku"));
const media = new ViewerMedia({
  conn,
  video: $("#video"),
  tiles: $("#tiles"),
  selfId: () => state.me?.uid,
  onStatus: (s) => state.mode === "webrtc" && renderMedia(s),
  onFallback: (why) => useHls(why),
});
const hls = new HlsPlayer({
  room,
  video: $("#video"),
  base: params.get("hls"), // a CDN or cache in front of the media nodes; default: the media node
  getToken: () => getToken(false),
  onStatus: (s) => state.mode === "hls" && renderMedia(s),
});
const cohost = new Publisher({ conn, preview: $("#self-video"), onStatus: renderCohost });
const card = new UserCard({ conn, me: () => state.me, onDm: (uid, name) => openConv(uid, name) });
card.attach($("#chat-list"));
const shop = attachShop(conn, { list: $("#chat-list"), me: () => state.me }); // pins above the chat, answers in it
// gifts (buttons, combos, top gifters), the PK score bar, follow and the going-live toast
const gifts = attachGifts(conn, { stage: $("#stage"), side: $("aside.side"), bar: $("#gift-bar"), onError: (f) => showError("chat", f) });
const pk = attachPk(conn, { room, stage: $("#stage") });
const fans = attachFans(conn, {
  button: $("#follow"),
  toastParent: $("#stage"),
  host: () => state.hosts.keys().next().value,
  me: () => state.me,
});
const replay = params.get("replay")
  ? new ReplayPlayer({
      room,
      id: params.get("replay"),
      video: $("#video"),
      base: params.get("hls"),
      getToken: () => getToken(false),
      onStatus: (s) => renderMedia(s),
      onDanmaku: (d) => danmaku.add({ text: d.text, name: d.name, mine: false, host: d.role === "host", key: `r${d.seq}` }),
    })
  : null;
const schedule = attachSchedule(conn, { parent: $("aside.side") }); // the host's lives ahead, to reserve
window.liveroom = { conn, danmaku, media, hls, replay, cohost, state, card, shop, gifts, pk, fans, schedule }; // for the console and the tests
if (replay) {
  media.stop(); // the picture is the recording: no WebRTC, no live HLS
  replay.start();
} else if (state.mode === "hls") useHls("");
else if (!media.supported) useHls("this browser has no WebRTC");
renderMode();

conn.on("state", (s, detail) => {
  showConnState($("#conn"), s, detail);
  document.body.dataset.conn = s;
  $("#chat-send").disabled = s !== "live";
  // Disconnected: say so over the (frozen) picture, LIVE off, no stale online count.
  const lost = conn.connects > 0 && s !== "live";
  const covering = lost && s !== "failed" && s !== "closed";
  $("#reconnecting").hidden = !covering;
  $("#offline").classList.toggle("covered", covering); // one message over the stage, not two
  $("#reconnecting-sub").textContent = reconnectMessage(detail);
  if (lost) {
    $("#online").textContent = "–";
    $("#online").dataset.count = "";
  }
  renderLiveBadge();
  if (s === "reconnecting" && conn.connects === 1 && !document.querySelector("#chat-list li.reconnect-note")) {
    sysLine("Connection lost, reconnecting…", "warn reconnect-note");
  }
});

conn.on("snapshot", (snap, { resumed, recovered, since, reset, mediaChanged }) => {
  if (reset) {
    // the room's stream restarted (docs/PROTOCOL.md, `snapshot`): its chat is the snapshot's
    document.querySelectorAll("#chat-list li.msg:not(.pending)").forEach((li) => li.remove());
    sysLine("The room was refreshed.", "reset-note");
    document.body.dataset.resets = String(conn.resets);
  }
  state.me = snap.you;
  state.limits = { ...(snap.limits || {}), slow_mode: snap.slow_mode || 0 };
  renderSlowMode();
  $("#me").replaceChildren("Watching as ", el("b", {}, snap.you.name));
  if (state.limits.danmaku_len) $("#chat-input").maxLength = state.limits.danmaku_len;
  if (state.limits.dm_len) $("#dm-input").maxLength = state.limits.dm_len;
  setLikes(snap.likes);
  setOnline(snap.online);
  state.hosts = new Map((snap.hosts || []).map((h) => [h.uid, h.name]));
  renderHost();
  if (resumed) {
    document.querySelectorAll("#chat-list li.reconnect-note").forEach((n) => n.remove());
    sysLine(recovered ? "Reconnected: caught up on what you missed." : "Reconnected.");
    document.body.dataset.reconnects = String(conn.connects - 1);
  }
  if (!recovered) {
    for (const ev of snap.recent || []) if (!(ev.seq <= since)) chatLine(ev);
  }
  // Re-send danmaku that never made it before the connection dropped (after the replayed
  // events, which follow this handler, have confirmed the ones that did). An in-band reset
  // dropped nothing: what is in flight on this connection still gets its echo.
  if (!reset) setTimeout(() => {
    for (const [cid, li] of state.pending) conn.send({ t: "danmaku", text: li.dataset.text, cid });
    // DMs not acknowledged before the drop: the same cid, so one already stored is not stored twice
    for (const c of state.convs.values()) for (const i of c.items) if (i.mine && i.status === "sending") sendDm(c.uid, i);
  }, 0);
  media.onSnapshot(snap, resumed || Boolean(reset && mediaChanged)); // media kept unless it moved
  hls.onSnapshot(snap);
  if (resumed && cohost.stream) cohost.onReconnected();
});

conn.on("events", (events) => {
  for (const ev of events) {
    switch (ev.t) {
      case "danmaku":
        onDanmaku(ev);
        break;
      case "likes":
        setLikes(ev.total);
        if (ev.delta && !(state.likeEcho > 0 && ev.delta <= state.likeEcho)) heartBurst($("#hearts"), Math.min(4, ev.delta));
        state.likeEcho = Math.max(0, (state.likeEcho || 0) - ev.delta);
        break;
      case "presence":
        setOnline(ev.online);
        break;
      case "host":
        if (ev.live) state.hosts.set(ev.uid, ev.name);
        else state.hosts.delete(ev.uid);
        renderHost();
        sysLine(ev.live ? `${ev.name} joined the room` : `${ev.name} left the room`);
        break;
      case "delete":
        markDeleted(ev);
        break;
      case "slow_mode":
        state.limits.slow_mode = ev.seconds;
        renderSlowMode();
        sysLine(ev.seconds ? `Slow mode: one message every ${ev.seconds} s.` : "Slow mode is off.");
        break;
      default:
        media.onEvent(ev);
        hls.onEvent(ev);
    }
  }
});

conn.on("error", (frame) => onServerError(frame));
conn.on("dm", onDm);
conn.on("dm_ack", onDmAck);
conn.on("closed", (code) => {
  if (code === 4403) block("You are banned from this room", "The host or a moderator banned you.");
  else if (code === 4402) block("You were removed from this room", "You can come back in a little while.", false);
});
conn.on("pong", (rtt) => {
  if (conn.state === "live") showConnState($("#conn"), "live", "", ` · ${Math.round(rtt)} ms`);
});
for (const t of ["offer", "subscribed"]) conn.on(t, (frame) => media.onFrame(frame));
conn.on("answer", (frame) => cohost.onAnswer(frame));
conn.on("invited", (frame) => {
  if (frame.room !== room) return;
  $("#invite-from").textContent = frame.name || frame.uid;
  $("#invite-toast").hidden = false;
});
conn.on("notice", (frame) => onNotice(frame));

// -- room state ----------------------------------------------------------------------------

function setLikes(total) {
  state.likes = total;
  $("#like-total").textContent = fmtCount(total);
  $("#likes-top").textContent = fmtCount(total);
  $("#like-total").dataset.total = String(total);
}

function setOnline(n) {
  state.online = n;
  $("#online").textContent = fmtCount(n);
  $("#online").dataset.count = String(n);
}

function renderHost() {
  const [uid, name] = state.hosts.entries().next().value || [];
  $("#host-name").textContent = name ? name : "Waiting for the host";
  $("#host-avatar").textContent = initials(name || room);
  if (uid) $("#host-avatar").style.background = userColor(uid);
  renderLiveBadge();
  fans.render();
  media.status(); // the offline card names the host
}

function renderLiveBadge() {
  $("#live-badge").hidden = !state.mediaLive || conn.state !== "live";
}

function renderSlowMode() {
  const secs = state.limits.slow_mode || 0;
  $("#slow-note").hidden = !secs;
  $("#slow-note").textContent = secs ? `Slow mode: one message every ${secs} s.` : "";
  document.body.dataset.slowMode = String(secs);
}

/** Leave WebRTC for HLS (for good on this page: the mass audience's way in). */
function useHls(why) {
  if (state.mode === "replay" || (state.mode === "hls" && hls.active)) return;
  state.mode = "hls";
  document.body.dataset.fallback = why || ""; // why the page left WebRTC (none: ?mode=hls)
  if (media.subscribed) conn.send({ t: "unsubscribe" });
  media.stop();
  hls.activate(why ? `${why}: switching to HLS.` : "");
  renderMode();
}

function renderMode() {
  const badge = $("#mode");
  document.body.dataset.mode = state.mode;
  if (state.mode === "replay") {
    badge.textContent = "Replay";
    badge.title = "A recording of this room: its danmaku fly at the moment they were sent";
    return;
  }
  const latency = state.mode === "hls" ? hls.latencyMs : null;
  badge.textContent = state.mode === "hls" ? (latency === null ? "HLS" : `HLS · ${(latency / 1000).toFixed(1)} s latency`) : "WebRTC";
  badge.title = state.mode === "hls" ? "Low-latency HLS over HTTP: danmaku are held to match the picture" : "WebRTC: sub-second video";
  document.body.dataset.mode = state.mode;
  document.body.dataset.latencyMs = latency === null ? "" : String(Math.round(latency));
}

function renderMedia(status) {
  renderMode();
  state.mediaLive = status.live && state.mode !== "replay"; // a recording is never LIVE
  renderLiveBadge();
  $("#offline").hidden = status.playing;
  $("#offline").classList.toggle("ended", !status.live && status.ended);
  document.body.dataset.stream = status.live ? (status.playing ? "playing" : "starting") : status.ended ? "ended" : "offline";
  const hostName = state.hosts.values().next().value;
  $("#offline-title").textContent = status.live
    ? "Connecting to the stream…"
    : status.ended
      ? "The stream has ended"
      : hostName
        ? `${hostName} is here but not streaming yet`
        : "The host is offline";
  $("#offline-sub").textContent = status.live
    ? status.detail || "Negotiating video."
    : status.ended
      ? `${hostName ? `${hostName} is still in the room. ` : ""}Stay here: the stream starts again by itself if the host goes live.`
      : "Stay here: the stream starts by itself when the host goes live.";
  $("#unmute").hidden = !status.playing || !$("#video").muted;
  const ff = $("#first-frame");
  if (status.firstFrameMs !== null && status.firstFrameMs !== undefined) {
    ff.hidden = false;
    // the first picture since the tap; after a reconnect, how long the picture took to come back
    const again = status.againMs !== null && status.againMs !== undefined;
    ff.textContent = `first frame in ${Math.round(status.firstFrameMs)} ms${again ? ` · back ${Math.round(status.againMs)} ms after reconnecting` : ""}`;
    ff.dataset.ms = String(Math.round(status.firstFrameMs));
    ff.dataset.againMs = again ? String(Math.round(status.againMs)) : "";
  }
  $("#video-stats").textContent = status.stats || "";
  // the room's codec (what its host sends) and what this browser decodes (getStats), for people and tests
  document.body.dataset.codec = status.codec || "";
  document.body.dataset.decodedCodec = status.decoded ? status.decoded.codec : "";
  document.body.dataset.decoder = status.decoded ? status.decoded.decoder : "";
}

$("#unmute").addEventListener("click", () => {
  media.unmute();
  $("#unmute").hidden = true;
});

// -- co-hosting (after the host's invitation) -------------------------------------------------

$("#cohost-go").addEventListener("click", () => {
  $("#invite-toast").hidden = true;
  cohost.start("camera");
});
$("#cohost-dismiss").addEventListener("click", () => ($("#invite-toast").hidden = true));
$("#cohost-stop").addEventListener("click", () => cohost.stop());

function renderCohost({ state: s, detail }) {
  const on = s !== "off" && s !== "error";
  $("#self-tile").hidden = !on;
  $("#cohost-stop").hidden = !on;
  document.body.dataset.cohost = s;
  if (s === "error" && detail) showError("chat", { msg: detail });
}

// -- chat and danmaku ------------------------------------------------------------------------

function roleTag(ev) {
  if (state.hosts.has(ev.uid) || ev.role === "host") return el("span", { class: "role" }, "HOST");
  if (ev.role === "moderator") return el("span", { class: "role mod" }, "MOD");
  return null;
}

function chatLine(ev, extraClass = "") {
  const mine = state.me && ev.uid === state.me.uid;
  const who = card.nameTag(ev.uid, ev.name);
  const li = el(
    "li",
    { class: `msg${mine ? " mine" : ""}${extraClass ? ` ${extraClass}` : ""}`, dataset: { uid: ev.uid, seq: ev.seq ?? "" } },
    roleTag(ev),
    who,
    el("span", { class: "text" }, ev.text),
  );
  appendCapped($("#chat-list"), li);
  return li;
}

function sysLine(text, cls = "") {
  appendCapped($("#chat-list"), el("li", { class: `sys ${cls}` }, text));
}

function onDanmaku(ev) {
  const mine = state.me && ev.uid === state.me.uid;
  const pending = mine && ev.cid !== undefined ? state.pending.get(ev.cid) : null;
  if (pending) {
    state.pending.delete(ev.cid);
    pending.classList.remove("pending");
    pending.dataset.seq = String(ev.seq);
  } else {
    chatLine(ev);
  }
  if (state.mode === "replay") return; // the picture is the past: live danmaku stay in the chat
  const show = () => {
    state.held.delete(ev.seq);
    danmaku.add({ text: ev.text, name: ev.name, mine, host: state.hosts.has(ev.uid), key: ev.seq });
  };
  // over HLS the picture is `latency` behind the room: a comment waits for the moment it refers to
  const hold = state.mode === "hls" && !mine ? hls.latencyMs || 0 : 0;
  state.lastHoldMs = hold; // for the tests
  if (hold > 0) state.held.set(ev.seq, setTimeout(show, Math.min(hold, 30000)));
  else show();
}

function markDeleted(ev) {
  const seq = ev.target;
  clearTimeout(state.held.get(seq));
  state.held.delete(seq);
  danmaku.remove(seq);
  const li = document.querySelector(`#chat-list li[data-seq="${seq}"]`);
  if (li) {
    li.classList.add("deleted");
    li.querySelector(".text").textContent = "message removed by a moderator";
  }
}

$("#chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text) return showError("chat", { code: 4201 });
  const cid = `c${state.cidTag}.${++state.cidSeq}`;
  if (!conn.send({ t: "danmaku", text, cid })) return showError("chat", { msg: "Not connected yet: wait a moment." });
  input.value = "";
  hideError("chat");
  const li = chatLine({ uid: state.me.uid, name: state.me.name, text }, "pending");
  li.dataset.text = text;
  state.pending.set(cid, li);
});

$("#danmaku-toggle").addEventListener("click", (e) => {
  const on = e.currentTarget.getAttribute("aria-pressed") !== "true";
  e.currentTarget.setAttribute("aria-pressed", String(on));
  e.currentTarget.textContent = on ? "Danmaku on" : "Danmaku off";
  danmaku.setEnabled(on);
});

// -- likes ------------------------------------------------------------------------------------

$("#like").addEventListener("click", () => {
  heartBurst($("#hearts"), 3);
  setLikes(state.likes + 1); // optimistic; the next likes event carries the real total
  state.likeQueue += 1;
  if (!state.likeTimer) {
    state.likeTimer = setTimeout(flushLikes, 120); // taps within a moment travel as one frame
  }
});

function flushLikes() {
  state.likeTimer = null;
  const count = Math.min(state.likeQueue, 100);
  if (!count) return;
  if (conn.send({ t: "like", count })) {
    state.likeQueue -= count;
    state.likeEcho = (state.likeEcho || 0) + count;
  }
  if (state.likeQueue) state.likeTimer = setTimeout(flushLikes, 500);
}

// -- errors ---------------------------------------------------------------------------------------

let errorTimers = {};
function showError(where, frame) {
  const box = $(`#${where}-error`);
  box.textContent = frame.code ? friendlyError(frame, state.limits) : frame.msg;
  box.dataset.code = String(frame.code || "");
  box.hidden = false;
  clearTimeout(errorTimers[where]);
  const retry = Number(frame.retry_after) || 0;
  errorTimers[where] = setTimeout(() => hideError(where), Math.max(6000, retry * 1000 + 1500));
}

function hideError(where) {
  $(`#${where}-error`).hidden = true;
}

function onServerError(frame) {
  if (isBan(frame)) return block("You are banned from this room", "The host or a moderator banned you.");
  if (isKick(frame)) return block("You were removed from this room", kickText(frame), false);
  const ref = frame.ref;
  if (typeof ref === "string" && ref.startsWith("p")) return cohost.onError(frame);
  if (isMediaError(frame) || (typeof ref === "string" && ref.startsWith("m"))) return media.onError(frame);
  if (ref !== undefined && state.pending.has(ref)) {
    const li = state.pending.get(ref);
    state.pending.delete(ref);
    li.remove();
    if (!$("#chat-input").value) $("#chat-input").value = li.dataset.text;
    return showError("chat", frame);
  }
  if (ref !== undefined && String(ref).startsWith("d")) {
    if (frame.code === 4501) return retryDm(ref, frame.retry_after); // not stored: send it again
    failDm(ref);
    return showError("dm", { ...frame, kind: "dm" });
  }
  if ([4100, 4101, 4103].includes(frame.code)) {
    sessionStorage.removeItem(`liveroom.token.${room}`); // a pasted token that cannot work
    return block("You can't join this room", friendlyError(frame), false);
  }
  if (frame.code >= 4100 && frame.code < 4200) return; // expired, slow join: we retry by ourselves
  showError(state.tab === "dm" && state.openConv ? "dm" : "chat", frame);
}

function kickText(frame) {
  const secs = Number(frame.retry_after) || 0;
  return secs ? `You can come back in ${Math.ceil(secs)} s.` : "You can come back in a little while.";
}

function block(title, text, final = true) {
  $("#blocked-title").textContent = title;
  $("#blocked-text").textContent = text || "";
  $("#blocked").hidden = false;
  $("#blocked-retry").hidden = final;
  document.body.dataset.blocked = final ? "ban" : "kick";
  conn.stop(title);
  media.stop();
  hls.stop();
}

function onNotice(frame) {
  // Moderation notices addressed to this viewer ({"t":"notice","action":"mute"|"unmute",...}).
  if (frame.action === "mute") {
    const secs = frame.until ? Math.max(0, (frame.until - Date.now()) / 1000) : 0;
    showError("chat", { code: 4401, retry_after: secs || undefined });
    sysLine("A moderator muted you.", "warn");
  } else if (frame.action === "unmute") {
    hideError("chat");
    sysLine("You can chat again.");
  }
}

// -- direct messages ------------------------------------------------------------------------------

function conv(uid, name) {
  let c = state.convs.get(uid);
  if (!c) {
    c = { uid, name: name || uid, items: [], unread: 0 };
    state.convs.set(uid, c);
  } else if (name) {
    c.name = name;
  }
  return c;
}

function renderConvs() {
  const list = $("#dm-convs");
  const convs = [...state.convs.values()].sort((a, b) => (b.items.at(-1)?.ts || 0) - (a.items.at(-1)?.ts || 0));
  list.replaceChildren(
    ...convs.map((c) =>
      el(
        "li",
        { dataset: { uid: c.uid }, onclick: () => openConv(c.uid) },
        el("span", { class: "avatar small", style: `background:${userColor(c.uid)}` }, initials(c.name)),
        el(
          "div",
          { class: "conv-main" },
          el("div", { class: "conv-name" }, c.name),
          el("div", { class: "conv-last" }, c.items.at(-1)?.text || ""),
        ),
        c.unread ? el("span", { class: "badge" }, String(c.unread)) : null,
      ),
    ),
  );
  $("#dm-empty").hidden = convs.length > 0;
  const unread = convs.reduce((n, c) => n + c.unread, 0);
  $("#dm-badge").hidden = unread === 0;
  $("#dm-badge").textContent = String(unread);
  // Everything received has been read: the server may stop re-sending it on connect.
  if (unread === 0 && state.newestDm && state.newestDm !== state.seenSent) {
    if (conn.send({ t: "dm_seen", id: state.newestDm })) state.seenSent = state.newestDm;
  }
}

function tickFor(item) {
  if (!item.mine) return null;
  if (item.status === "failed") return el("span", { class: "tick failed" }, "not sent");
  if (item.status === "delivered") return el("span", { class: "tick delivered", title: "Delivered" }, "✓✓");
  if (item.status === "kept") return el("span", { class: "tick sent", title: "Sent; delivered when they connect" }, "✓");
  return el("span", { class: "tick pending", title: "Sending" }, "…");
}

function renderThread() {
  const c = state.convs.get(state.openConv);
  if (!c) return;
  $("#dm-peer").textContent = c.name;
  $("#dm-avatar").textContent = initials(c.name);
  $("#dm-avatar").style.background = userColor(c.uid);
  const list = $("#dm-messages");
  list.replaceChildren(
    ...c.items.map((item) =>
      el(
        "li",
        { class: item.mine ? "mine" : "", dataset: { id: item.id || "", status: item.status || "" } },
        el("span", { class: "text" }, item.text),
        tickFor(item),
      ),
    ),
  );
  list.scrollTop = list.scrollHeight;
}

function openConv(uid, name) {
  if (state.me && uid === state.me.uid) return;
  const c = conv(uid, name);
  c.unread = 0;
  state.openConv = uid;
  selectTab("dm");
  $("#dm-home").hidden = true;
  $("#dm-thread").hidden = false;
  renderThread();
  renderConvs();
  $("#dm-input").focus();
}

$("#dm-back").addEventListener("click", () => {
  state.openConv = null;
  $("#dm-thread").hidden = true;
  $("#dm-home").hidden = false;
  renderConvs();
});

$("#dm-new").addEventListener("submit", (e) => {
  e.preventDefault();
  const uid = $("#dm-to").value.trim();
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(uid)) return;
  $("#dm-to").value = "";
  openConv(uid);
});

$("#dm-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("#dm-input");
  const text = input.value.trim();
  if (!text || !state.openConv) return;
  const cid = `d${state.cidTag}.${++state.cidSeq}`;
  const item = { cid, mine: true, text, ts: Date.now(), status: "sending" };
  if (!sendDm(state.openConv, item)) {
    return showError("dm", { msg: "Not connected yet: wait a moment." });
  }
  input.value = "";
  hideError("dm");
  conv(state.openConv).items.push(item);
  renderThread();
  renderConvs();
});

/** Send (or re-send, with the same cid: docs/PROTOCOL.md "Retrying after a reset") one DM. */
function sendDm(to, item) {
  return conn.send({ t: "dm", to, text: item.text, cid: item.cid });
}

function retryDm(cid, after) {
  setTimeout(() => {
    for (const c of state.convs.values()) {
      const item = c.items.find((i) => i.cid === cid && i.status === "sending");
      if (item) sendDm(c.uid, item);
    }
  }, Math.max(0.25, after || 1) * 1000);
}

function findByCid(cid) {
  for (const c of state.convs.values()) {
    const item = c.items.find((i) => i.cid === cid);
    if (item) return item;
  }
  return null;
}

function onDmAck(ack) {
  const item = findByCid(ack.cid);
  if (!item) return;
  item.id = ack.id;
  item.status = ack.delivered ? "delivered" : "kept";
  renderThread();
}

function failDm(cid) {
  const item = findByCid(cid);
  if (item) item.status = "failed";
  renderThread();
}

/** DM ids are "<ms hex or dec>-<n>", ordered per recipient. */
function dmIdAfter(a, b) {
  const [am, an] = String(a).split("-");
  const [bm, bn] = String(b).split("-");
  const num = (x) => (/^[0-9]+$/.test(x) ? Number(x) : parseInt(x, 16));
  return num(am) !== num(bm) ? num(am) > num(bm) : num(an) > num(bn);
}

function onDm(dm) {
  if (state.me && dm.from === state.me.uid) return; // our own, echoed to another tab
  const c = conv(dm.from, dm.name);
  if (c.items.some((i) => i.id === dm.id)) return;
  c.items.push({ id: dm.id, mine: false, text: dm.text, ts: dm.ts });
  if (!state.newestDm || dmIdAfter(dm.id, state.newestDm)) state.newestDm = dm.id;
  if (state.tab !== "dm" || state.openConv !== dm.from) c.unread += 1;
  renderConvs();
  if (state.openConv === dm.from) renderThread();
}

// -- tabs --------------------------------------------------------------------------------------------

function selectTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === tab);
  $("#panel-chat").hidden = tab !== "chat";
  $("#panel-dm").hidden = tab !== "dm";
  if (tab === "dm" && state.openConv) {
    conv(state.openConv).unread = 0;
    renderConvs();
  }
}
for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => selectTab(b.dataset.tab));

$("#blocked-retry").addEventListener("click", () => location.reload());

$("#room-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("#room-input").value.trim();
  if (/^[A-Za-z0-9_.:-]{1,64}$/.test(id)) location.href = `/room/${id}${location.search}`;
});

// -- go ----------------------------------------------------------------------------------------------

renderConvs();
conn.start();
