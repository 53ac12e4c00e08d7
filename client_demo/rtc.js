// WebRTC for the demo pages over the room's WebSocket (docs/PROTOCOL.md, media signaling):
// - viewer: {"t":"subscribe"} -> server {"t":"offer"} (now, or whenever a publisher appears)
//   -> {"t":"answer"}; the server re-offers on the same connection when tracks change;
// - host: {"t":"publish", sdp} -> server {"t":"answer"}; {"t":"unpublish"} to stop.
// All SDP is complete (no trickle ICE): we wait for ICE gathering before sending ours.

// ICE servers (STUN/TURN, with TURN credentials that expire) come with every snapshot;
// `?ice=relay` on a page forces relay-only ICE (TURN), e.g. to test a TURN server.
const ICE = { servers: [], policy: new URLSearchParams(location.search).get("ice") === "relay" ? "relay" : "all" };

/** Keep the latest ICE servers from the server's snapshot for the next peer connection. */
export function setIceServers(servers) {
  ICE.servers = Array.isArray(servers) ? servers : [];
}

function rtcConfig() {
  return { iceServers: ICE.servers, iceTransportPolicy: ICE.policy, bundlePolicy: "max-bundle", iceCandidatePoolSize: 1 };
}
const GATHER_TIMEOUT_MS = 3000;

function waitForGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, GATHER_TIMEOUT_MS); // loopback gathers fast; never hang
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function fmtRate(bps) {
  if (!Number.isFinite(bps)) return "–";
  return bps >= 1e6 ? `${(bps / 1e6).toFixed(2)} Mbps` : `${Math.round(bps / 1000)} kbps`;
}

export function isMediaError(frame) {
  return frame.code >= 4600 && frame.code < 4700;
}

const CONNECT_TIMEOUT_MS = 20000;
export const REPUBLISH_DELAY_MS = 1500; // a publication whose connection failed is offered again after this
const everConnected = new WeakSet(); // peer connections that reached "connected" once

/** Receives the room's media into a <video> and measures time to first frame. */
export class ViewerMedia {
  constructor({ conn, video, tiles, onStatus, selfId, onlyOthers, onFallback }) {
    this.conn = conn;
    this.video = video;
    this.tiles = tiles || null; // container for co-hosts' videos (picture in picture)
    this.selfId = selfId || (() => null); // our uid: our own publication is not shown back
    this.onlyOthers = Boolean(onlyOthers); // the host console: subscribe once someone else is live
    this.onStatus = onStatus || (() => {});
    // the viewer page's way out to HLS: called with a reason when this server refuses us
    // video for capacity (4611) or the peer connection cannot connect (UDP blocked)
    this.onFallback = onFallback || null;
    this.pc = null;
    this.streams = new Map(); // publisher uid -> MediaStream
    this.trackMap = {}; // mid -> {publisher_id, kind}, from the server's offers
    this.linked = {}; // publisher id -> linked room: the other room's host while a PK link lasts
    this.mainId = null;
    this.publishers = new Map();
    this.live = false;
    this.ended = false; // the stream stopped after we had pictures
    this.subscribed = false;
    this.playing = false;
    this.t0 = null; // when we started waiting for pictures
    this.firstFrameMs = null; // the first picture, from the tap (page load) or the host going live
    this.againMs = null; // after a reconnect: from the reconnect to the picture back
    this._framed = false; // a picture came on this peer connection
    this._pageLoad = true; // until the first picture: the wait counts from navigation start
    this.detail = "";
    this.stats = "";
    this.codec = null; // the room's video codec ("VP8", "H264"): snapshot `media_codec`, `live` event
    this.decoded = null; // what this browser decodes, from getStats: {codec, decoder}
    this.negotiations = 0;
    this.stopped = false;
    this._seq = 0;
    this._statsTimer = null;
    this._last = null;
    video.addEventListener("playing", () => this._maybePlaying());
    video.addEventListener("resize", () => this._maybePlaying());
    this.status();
  }

  get supported() {
    return typeof RTCPeerConnection === "function";
  }

  status() {
    this.onStatus({
      live: this.live,
      ended: this.ended,
      playing: this.playing,
      firstFrameMs: this.firstFrameMs,
      againMs: this.againMs,
      detail: this.detail,
      stats: this.stats,
      codec: this.codec,
      decoded: this.decoded,
    });
  }

  onSnapshot(snap, resumed) {
    setIceServers(snap.ice_servers);
    this.publishers = new Map((snap.publishers || []).map((p) => [p.uid, p.name]));
    this.live = Boolean(snap.live) || this.publishers.size > 0;
    this.codec = snap.media_codec || null;
    if (resumed) this._reset(true); // the old peer connection belongs to a gone WebSocket
    if (!resumed && this.conn.joinSubscribed) {
      // index.html subscribed with the join: the offer is on its way. The page's first picture
      // counts from navigation start (performance.now() is relative to performance.timeOrigin).
      this.conn.joinSubscribed = false;
      this.subscribed = true;
      this.t0 = 0;
      if (this.live) this.detail = "Negotiating video…";
    }
    if (!this.stopped && this.supported && !this.subscribed && this._wanted()) this._subscribe();
    this.status();
  }

  onEvent(ev) {
    if (ev.t === "link" && !ev.on) {
      // the link ended: the other room's host is no longer pulled into this room
      for (const id of Object.keys(this.linked)) this.streams.delete(id);
      this.linked = {};
      this._layout();
    }
    if (ev.t !== "live") return;
    if (ev.on) {
      this.publishers.set(ev.uid, ev.name);
      if (ev.codec) this.codec = ev.codec;
    } else {
      this.publishers.delete(ev.uid);
      this.streams.delete(ev.uid);
    }
    this._layout();
    const wasLive = this.live;
    this.live = this.publishers.size > 0;
    if (this.live && !wasLive) {
      this.t0 = performance.now(); // first frame counts from the moment the host went live
      this.firstFrameMs = this.againMs = null;
      this._framed = false;
      this.detail = "The host just went live.";
    }
    if (!this.live) {
      // the stream ended (it had started for us): no stale "1280×720 · 0 kbps" under it
      this.ended = this.ended || this.playing || this.firstFrameMs !== null;
      this.playing = false;
      this.detail = "";
      this.stats = "";
      this.codec = this.decoded = null;
      this._last = null;
    } else {
      this.ended = false;
    }
    if (!this.stopped && this.supported && !this.subscribed && this._wanted()) this._subscribe();
    this.status();
  }

  onFrame(frame) {
    if (this.stopped) return;
    if (frame.t === "offer") this._onOffer(frame).catch((err) => this._fail(err));
    else if (frame.t === "subscribed") {
      this.detail = frame.live ? "" : "Waiting for the host to start the stream.";
      this.status();
    }
  }

  onError(frame) {
    this.detail = `Video unavailable: ${frame.msg || frame.code}`;
    if (frame.code === 4611 && this.onFallback) {
      this.subscribed = false; // refused: nothing to unsubscribe from
      return this.onFallback("WebRTC video is full on this server");
    }
    if (frame.code === 4606 && /already subscribed/.test(frame.msg || "")) return;
    this.subscribed = false;
    this.status();
  }

  stop() {
    this.stopped = true;
    this._reset();
  }

  _wanted() {
    if (!this.onlyOthers) return true;
    const me = this.selfId();
    return [...this.publishers.keys()].some((uid) => uid !== me);
  }

  _subscribe() {
    this.subscribed = this.conn.send({ t: "subscribe", cid: `m${++this._seq}` });
    // The first subscription of a page load counts from navigation start, like the user's wait.
    if (this.subscribed && this.t0 === null) this.t0 = this._pageLoad ? 0 : performance.now();
    if (this.subscribed && this.live) this.detail = "Negotiating video…";
  }

  /** A new peer connection follows; `reconnect`: the stream is the same, so its first-frame time
   * stays (the badge must not show the reconnect's as the tap's) and the wait back is `againMs`. */
  _reset(reconnect = false) {
    if (this.pc) this.pc.close();
    this.pc = null;
    this.subscribed = false;
    this.playing = false;
    if (!reconnect) this.firstFrameMs = null;
    this.againMs = null;
    this._framed = false;
    this.t0 = null;
    this.streams.clear();
    this.trackMap = {};
    this.linked = {};
    this._layout();
    clearInterval(this._statsTimer);
    this._statsTimer = null;
    this.stats = "";
    this.decoded = null; // a new peer connection: read again from its getStats
  }

  _ensurePc() {
    if (this.pc) return this.pc;
    let pc = this.conn.bootPc; // made by index.html at navigation: its candidates are gathered
    this.conn.bootPc = null;
    // The boot connection knows no ICE servers: use it only when the snapshot brought none.
    if (pc && (ICE.servers.length || ICE.policy !== "all")) pc.close();
    if (!pc || pc.signalingState === "closed") pc = new RTCPeerConnection(rtcConfig());
    pc.ontrack = (ev) => {
      const info = this.trackMap[ev.transceiver?.mid] || {};
      const pid = info.publisher_id || this.publishers.keys().next().value || "?";
      let stream = this.streams.get(pid);
      if (!stream) this.streams.set(pid, (stream = new MediaStream()));
      // A publisher that came back brings fresh tracks of a kind we already have: replace.
      for (const old of stream.getTracks()) {
        if (old.kind === ev.track.kind && old !== ev.track) stream.removeTrack(old);
      }
      stream.addTrack(ev.track);
      this._layout();
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      if (pc.connectionState === "connected") everConnected.add(pc);
      if (pc.connectionState === "failed") {
        // never connected: UDP is blocked here, HLS over HTTP gets through (a connection that
        // worked and broke, e.g. its node died, is renegotiated as before)
        if (this.onFallback && !everConnected.has(pc)) return this.onFallback("the WebRTC connection failed");
        this._fail(new Error("the media connection failed"));
        this.conn.send({ t: "unsubscribe" });
        setTimeout(() => {
          if (!this.stopped && !this.subscribed && this.conn.state === "live") this._subscribe();
        }, 1000);
      }
    };
    // index.html's connection may have connected before this handler was set (under load its
    // modules run late): its failure later is then a broken connection, not a blocked network
    if (pc.connectionState === "connected") everConnected.add(pc);
    this.pc = pc;
    this._statsTimer = setInterval(() => this._sampleStats(), 1000);
    return pc;
  }

  /** The first publisher (the host, normally) fills the stage; co-hosts get tiles. */
  _layout() {
    const me = this.selfId();
    const ids = [...this.publishers.keys()].filter((id) => id !== me && this.streams.has(id));
    for (const id of this.streams.keys()) if (!ids.includes(id) && id !== me) ids.push(id);
    const main = ids[0] || null;
    if (main !== this.mainId || (main && this.video.srcObject !== this.streams.get(main))) {
      this.mainId = main;
      this.video.srcObject = main ? this.streams.get(main) : null;
      if (main) {
        this.video.play().catch(() => {}); // muted autoplay is allowed
        this._watchFirstFrame();
      }
    }
    if (!this.tiles) return;
    const others = ids.slice(1);
    for (const tile of [...this.tiles.querySelectorAll(".tile[data-uid]")]) {
      if (!others.includes(tile.dataset.uid)) tile.remove();
    }
    for (const id of others) {
      let tile = this.tiles.querySelector(`.tile[data-uid="${CSS.escape(id)}"]`);
      if (!tile) {
        tile = document.createElement("div");
        tile.className = "tile";
        tile.dataset.uid = id;
        const v = document.createElement("video");
        v.autoplay = v.playsInline = true;
        v.muted = this.video.muted;
        const label = document.createElement("span");
        label.className = "tile-name";
        tile.append(v, label);
        this.tiles.append(tile);
      }
      const room = this.linked[id];
      tile.classList.toggle("linked", Boolean(room)); // the linked room's host, side by side
      tile.querySelector(".tile-name").textContent = room
        ? `${id.slice(0, id.length - room.length - 1)} · room ${room}`
        : this.publishers.get(id) || id;
      const v = tile.querySelector("video");
      if (v.srcObject !== this.streams.get(id)) {
        v.srcObject = this.streams.get(id);
        v.play().catch(() => {});
      }
    }
  }

  /** Unmute the stage and every co-host tile. */
  unmute() {
    this.video.muted = false;
    this.video.play().catch(() => {});
    if (this.tiles) for (const v of this.tiles.querySelectorAll(".tile video")) v.muted = false;
  }

  async _onOffer(frame) {
    const answered = this.conn.bootAnswered;
    this.conn.bootAnswered = null;
    if (answered && answered.sdp === frame.sdp && this.conn.bootPc) return this._adoptAnswered(frame, answered);
    performance.mark("liveroom:offer");
    const pc = this._ensurePc();
    if (frame.tracks) this.trackMap = { ...this.trackMap, ...frame.tracks };
    this.linked = frame.linked || {}; // "<uid>@<room>" -> the linked room (docs/PROTOCOL.md `offer`)
    await pc.setRemoteDescription({ type: "offer", sdp: frame.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await waitForGathering(pc);
    if (pc !== this.pc) return;
    const answer = { t: "answer", sdp: pc.localDescription.sdp };
    if (frame.cid !== undefined) answer.cid = frame.cid;
    this.conn.send(answer);
    performance.mark("liveroom:answer");
    this._watchConnect(pc);
    this.negotiations += 1;
    this.detail = "Starting video…";
    this.status();
  }

  /** index.html answered the join's offer before this module ran: take its connection and tracks. */
  async _adoptAnswered(frame, answered) {
    if (frame.tracks) this.trackMap = { ...this.trackMap, ...frame.tracks };
    const pc = this._ensurePc(); // the boot connection: the snapshot named no ICE servers
    // the stream index.html put on the stage already: keep it there (a new one would reload the video)
    if (answered.stage) this.streams.set(answered.stage.pid, answered.stage.stream);
    this._stage = answered.stage || null; // and when it showed the first picture (if it has)
    for (const ev of answered.tracks.splice(0)) pc.ontrack(ev);
    await answered.done;
    if (pc !== this.pc) return;
    this._watchConnect(pc);
    this.negotiations += 1;
    this.detail = "Starting video…";
    this.status();
  }

  /** ICE that has not connected CONNECT_TIMEOUT_MS after the answer will not (UDP blocked):
   * Chromium takes ~30 s to call it "failed"; the page moves to HLS a little sooner. An answer
   * without one candidate (relay-only ICE and no TURN server gave a relay address) can never
   * connect: the page moves at once instead of waiting for a check that will not be sent. */
  _watchConnect(pc) {
    if (!this.onFallback) return;
    // gathering complete (not cut short by GATHER_TIMEOUT_MS: a slow TURN server's address may
    // still reach the node, as a peer-reflexive candidate) and not one candidate gathered
    const none = pc.iceGatheringState === "complete" && !/^a=candidate:/m.test(pc.localDescription?.sdp || "");
    if (none && !everConnected.has(pc) && pc.connectionState !== "connected") {
      if (pc === this.pc && !this.stopped) this.onFallback("no ICE candidate to connect with");
      return;
    }
    setTimeout(() => {
      if (pc.connectionState === "connected") everConnected.add(pc);
      if (pc === this.pc && !this.stopped && !everConnected.has(pc)) {
        this.onFallback("the WebRTC connection did not connect");
      }
    }, CONNECT_TIMEOUT_MS);
  }

  _watchFirstFrame() {
    const v = this.video;
    const mark = () => {
      this._markFirstFrame();
      this._maybePlaying();
    };
    if (typeof v.requestVideoFrameCallback === "function") v.requestVideoFrameCallback(mark);
    else v.addEventListener("loadeddata", mark, { once: true });
  }

  _markFirstFrame() {
    if (this._framed || this.t0 === null) return;
    this._framed = true;
    // the page-load picture may have been shown by index.html before this module ran
    const shown = this._pageLoad && this._stage?.firstFrame;
    this._stage = null;
    const ms = (shown || performance.now()) - this.t0;
    if (this.firstFrameMs === null) this.firstFrameMs = ms;
    else this.againMs = ms;
    this._pageLoad = false;
    // room analytics (docs/API.md): the server keeps the first report of each connection
    this.conn.send({ t: "stats", first_frame_ms: Math.min(600000, Math.round(ms)) });
  }

  _maybePlaying() {
    const playing = this.video.videoWidth > 0 && this.live;
    if (playing) this._markFirstFrame();
    if (playing !== this.playing) {
      this.playing = playing;
      this.status();
    } else if (playing) {
      this.status();
    }
  }

  _fail(err) {
    console.warn("media:", err);
    this.detail = `Video problem: ${err.message || err}`;
    this.subscribed = false;
    if (this.pc) this.pc.close();
    this.pc = null;
    this.status();
  }

  async _sampleStats() {
    const pc = this.pc;
    if (!pc || !this.live) return;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return;
    }
    if (!this.live) return;
    let video = null;
    let bytes = 0;
    report.forEach((s) => {
      if (s.type === "inbound-rtp") {
        bytes += s.bytesReceived || 0;
        if (s.kind === "video") video = s;
      }
    });
    const now = performance.now();
    const last = this._last;
    this._last = { now, bytes };
    if (!video || !last) return;
    const bps = ((bytes - last.bytes) * 8 * 1000) / (now - last.now);
    const codec = video.codecId && report.get(video.codecId);
    if (codec) this.decoded = { codec: codec.mimeType.replace(/^video\//, ""), decoder: video.decoderImplementation || "" };
    const parts = [];
    if (this.decoded) parts.push(this.decoded.codec);
    if (video.frameHeight) parts.push(`${video.frameWidth}×${video.frameHeight}`);
    if (video.framesPerSecond !== undefined) parts.push(`${Math.round(video.framesPerSecond)} fps`);
    parts.push(fmtRate(bps));
    if (video.packetsLost) parts.push(`${video.packetsLost} lost`);
    this.stats = parts.join(" · ");
    this.status();
  }
}

/** Publishes a local camera/microphone (or screen) stream into the room. */
export class Publisher {
  constructor({ conn, preview, onStatus }) {
    this.conn = conn;
    this.preview = preview;
    this.onStatus = onStatus || (() => {});
    this.stream = null;
    this.pc = null;
    this.state = "off"; // off | starting | negotiating | live | error
    this.detail = "";
    this.stats = {};
    this._seq = 0;
    this._cid = null;
    this._timer = null;
    this._last = null;
    this.needsSend = false; // an offer is ready but the room connection was not
    this.devices = { video: "", audio: "" }; // chosen deviceIds ("": the default)
    this.muted = { video: false, audio: false }; // tracks disabled by the host (black / silence)
    this.previewing = false; // camera open, not live
  }

  _constraints() {
    const video = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
    if (this.devices.video) video.deviceId = { exact: this.devices.video };
    return { video, audio: this.devices.audio ? { deviceId: { exact: this.devices.audio } } : true };
  }

  /** Open the camera and microphone without going live: the host checks the picture first. */
  async openPreview() {
    if (this.stream) return this.stream;
    try {
      this.stream = await navigator.mediaDevices.getUserMedia(this._constraints());
    } catch (err) {
      this.state = "error";
      this.detail = `Cannot open the camera: ${err.message || err}`;
      this.status();
      return null;
    }
    this.previewing = true;
    this._showPreview();
    this.detail = "Preview: only you see this. Go live when ready.";
    this.status();
    return this.stream;
  }

  _showPreview() {
    this.preview.srcObject = this.stream;
    this.preview.muted = true;
    this.preview.play().catch(() => {});
    for (const kind of ["audio", "video"]) this._applyMute(kind);
  }

  /** Mute the microphone or turn the camera off while live: the track keeps flowing, disabled. */
  setMuted(kind, muted) {
    this.muted[kind] = muted;
    this._applyMute(kind);
    this.status();
  }

  _applyMute(kind) {
    if (!this.stream) return;
    for (const t of this.stream.getTracks()) if (t.kind === kind) t.enabled = !this.muted[kind];
  }

  /** Use another camera or microphone; live, the sender switches tracks without renegotiating. */
  async useDevice(kind, deviceId) {
    this.devices[kind] = deviceId;
    if (!this.stream || this.stream.getVideoTracks().some((t) => t.label && /screen|window|tab/i.test(t.label))) return;
    let fresh;
    try {
      fresh = await navigator.mediaDevices.getUserMedia({ [kind]: this._constraints()[kind] });
    } catch (err) {
      this.detail = `Cannot open that device: ${err.message || err}`;
      return this.status();
    }
    const track = fresh.getTracks().find((t) => t.kind === kind);
    for (const old of this.stream.getTracks().filter((t) => t.kind === kind)) {
      this.stream.removeTrack(old);
      old.stop();
    }
    this.stream.addTrack(track);
    track.addEventListener("ended", () => this.state !== "off" && this.stop());
    const transceiver = this.pc?.getTransceivers().find((x) => x.receiver.track?.kind === kind);
    if (transceiver) await transceiver.sender.replaceTrack(track);
    this._showPreview();
    this.status();
  }

  status() {
    this.onStatus({ state: this.state, detail: this.detail, stats: this.stats, muted: this.muted, previewing: this.previewing });
  }

  async start(source = "camera") {
    if (this.state !== "off" && this.state !== "error") return;
    const previewed = source === "camera" && this.stream && this.previewing;
    this.previewing = false;
    this.state = "starting";
    this.detail = "Opening your camera…";
    this.status();
    if (previewed) return this._publish(); // the preview's stream goes live as is
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    try {
      this.stream =
        source === "screen"
          ? await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 30 }, audio: true })
          : await navigator.mediaDevices.getUserMedia(this._constraints());
    } catch (err) {
      this.state = "error";
      this.detail = `Cannot open ${source}: ${err.message || err}`;
      this.status();
      return;
    }
    this._showPreview();
    for (const track of this.stream.getTracks()) track.addEventListener("ended", () => this.stop());
    await this._publish();
  }

  /** (Re)publish the current stream on a new peer connection (also after a reconnect). */
  async _publish() {
    if (!this.stream) return;
    if (this.pc) this.pc.close();
    const pc = new RTCPeerConnection(rtcConfig());
    this.pc = pc;
    for (const track of this.stream.getTracks()) {
      const tr = pc.addTransceiver(track, { direction: "sendonly", streams: [this.stream] });
      if (track.kind === "video" && RTCRtpSender.getCapabilities) {
        // What the SFU forwards as is: VP8 first (a new room's codec), then H.264 in
        // packetization-mode 1, baseline or main (an H.264 room, e.g. one an RTMP or OBS encoder
        // started: the server answers the room's codec, not a 4608 refusal).
        const codecs = RTCRtpSender.getCapabilities("video").codecs;
        const vp8 = codecs.filter((c) => /vp8/i.test(c.mimeType));
        const h264 = codecs.filter(
          (c) => /h264/i.test(c.mimeType) && /packetization-mode=1/.test(c.sdpFmtpLine || "") && /profile-level-id=(42|4d)/i.test(c.sdpFmtpLine || ""),
        );
        const rtx = codecs.filter((c) => /rtx/i.test(c.mimeType));
        try {
          if (vp8.length) tr.setCodecPreferences([...vp8, ...h264, ...rtx]);
        } catch {}
      }
    }
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      if (pc.connectionState === "connected") {
        this.state = "live";
        this.detail = "";
        this.status();
      } else if (pc.connectionState === "failed") {
        this.state = "error";
        this.detail = "The media connection failed; retrying…";
        this.status();
        // Only if nothing published since: a reconnect within the delay has (onReconnected), and
        // a second publish would close the one viewers were just offered, and may be refused.
        setTimeout(() => pc === this.pc && this.stream && this.conn.state === "live" && this._publish(), REPUBLISH_DELAY_MS);
      }
    };
    this.state = "negotiating";
    this.detail = "Connecting to the room…";
    this.status();
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    if (pc !== this.pc) return;
    this._cid = `p${++this._seq}`;
    this.needsSend = !this.conn.send({ t: "publish", sdp: pc.localDescription.sdp, cid: this._cid });
    if (this.needsSend) {
      this.detail = "Waiting for the room connection…";
      this.status();
    }
    clearInterval(this._timer);
    this._timer = setInterval(() => this._sampleStats(), 1000);
  }

  onAnswer(frame) {
    if (!this.pc || (frame.cid !== undefined && frame.cid !== this._cid)) return;
    this.pc.setRemoteDescription({ type: "answer", sdp: frame.sdp }).catch((err) => {
      this.state = "error";
      this.detail = `Publishing failed: ${err.message}`;
      this.status();
    });
  }

  onError(frame) {
    if (frame.ref !== undefined && frame.ref !== this._cid) return;
    this.state = "error";
    this.detail = `Publishing refused: ${frame.msg} (${frame.code})`;
    if (this.pc) this.pc.close();
    this.pc = null;
    this.status();
    // 4620: the room's media is still held by a node that died (its claim runs out within
    // the claim TTL) or another node: try again by ourselves.
    if (frame.code === 4620 && this.stream) {
      setTimeout(() => this.stream && !this.pc && this.conn.state === "live" && this._publish(), 1000);
    }
  }

  /** The room connection came back: the server forgot our publication, so offer again. */
  onReconnected() {
    if (this.stream) this._publish();
  }

  stop() {
    clearInterval(this._timer);
    if (this.pc) {
      this.conn.send({ t: "unpublish" });
      this.pc.close();
    }
    this.pc = null;
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    this.previewing = false;
    this.preview.srcObject = null;
    this.state = "off";
    this.detail = "";
    this.stats = {};
    this._last = null;
    this.status();
  }

  async _sampleStats() {
    const pc = this.pc;
    if (!pc) return;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return;
    }
    let bytes = 0;
    let video = null;
    let remote = null;
    let pair = null;
    report.forEach((s) => {
      if (s.type === "outbound-rtp") {
        bytes += s.bytesSent || 0;
        if (s.kind === "video") video = s;
      } else if (s.type === "remote-inbound-rtp" && s.kind === "video") remote = s;
      else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
    const now = performance.now();
    const last = this._last;
    this._last = { now, bytes, sent: video?.packetsSent || 0, lost: remote?.packetsLost || 0 };
    if (!last) return;
    const sent = (video?.packetsSent || 0) - last.sent;
    const lost = (remote?.packetsLost || 0) - last.lost;
    const rtt = remote?.roundTripTime ?? pair?.currentRoundTripTime;
    this.stats = {
      bitrate: fmtRate(((bytes - last.bytes) * 8 * 1000) / (now - last.now)),
      fps: video?.framesPerSecond !== undefined ? Math.round(video.framesPerSecond) : "–",
      resolution: video?.frameWidth ? `${video.frameWidth}×${video.frameHeight}` : "–",
      loss: sent + lost > 0 ? `${((100 * Math.max(0, lost)) / (sent + lost)).toFixed(1)}%` : "0%",
      rtt: rtt !== undefined ? `${Math.round(rtt * 1000)} ms` : "–",
    };
    this.status();
  }
}
