// LL-HLS playback of the room's main host for the viewer page (docs/PROTOCOL.md "LL-HLS"):
// with ?mode=hls, or when WebRTC is refused for capacity (4611) or cannot connect. hls.js
// (vendored, loaded on first use) plays /hls/<room>/<url token>/index.m3u8 from the media
// node (the snapshot's media_url) or from ?hls=<base> (a CDN or cache in front of the nodes).
// The live latency is the wall clock minus the PROGRAM-DATE-TIME of the frame on screen:
// the page holds each danmaku that long so comments appear with the picture they refer to.
// The node dates each frame by when it came in from the host (within a frame of its capture),
// and the page measures at each presented frame (requestVideoFrameCallback's mediaTime):
// hls.js's playingDate is the date at currentTime, which can be a frame off the picture
// (docs/BENCHMARKS.md, "Where the PDT gap went").

const HLS_SCRIPT = "/vendor/hls.light.min.js";
const RETRY_MS = [1000, 2000, 4000, 8000]; // then every 8 s while the host is live
const SAMPLE_MS = 500;
// hls.js holds PART-HOLD-BACK behind the live edge; after a stall it plays on further back, and
// by default (rate 1) never catches up: up to 1.5x, it returns to the target (pitch kept).
const HLS_CONFIG = { lowLatencyMode: true, backBufferLength: 30, maxLiveSyncPlaybackRate: 1.5 };

let loading = null;
/** hls.js, loaded once on first use (the replay page uses it too). */
export function loadHls() {
  if (globalThis.Hls) return Promise.resolve(globalThis.Hls);
  loading ||= new Promise((resolve, reject) => {
    const s = Object.assign(document.createElement("script"), { src: HLS_SCRIPT, async: true });
    s.onload = () => resolve(globalThis.Hls);
    s.onerror = () => reject(new Error("could not load the HLS player"));
    document.head.append(s);
  });
  return loading;
}

export class HlsPlayer {
  /**
   * room: the room id; video: the stage <video>; base: a fixed base URL (?hls=) or null to use
   * the media node's; getToken(): the viewer's room token; onStatus: as ViewerMedia's.
   */
  constructor({ room, video, base, getToken, onStatus }) {
    this.room = room;
    this.video = video;
    this.fixedBase = base || null;
    this.mediaUrl = null;
    this.getToken = getToken;
    this.onStatus = onStatus || (() => {});
    this.active = false;
    this.publishers = new Set(); // uids publishing in the room: HLS shows the main host's stream
    this.ended = false;
    this.playing = false;
    this.hls = null;
    this.latencyMs = null; // wall clock - PROGRAM-DATE-TIME of the frame shown; null: unknown
    this.firstFrameMs = null;
    this.detail = "";
    this.failures = 0;
    this._t0 = null;
    this._retry = null;
    this._sampler = null;
    this._perFrame = false; // latency measured at each presented frame (requestVideoFrameCallback)
    this._run = 0; // bumped by every (re)start: callbacks of an older run do nothing
    video.addEventListener("playing", () => this._frame());
  }

  get live() {
    return this.publishers.size > 0;
  }

  get base() {
    return this.fixedBase || this.mediaUrl;
  }

  onSnapshot(snap) {
    this.publishers = new Set((snap.publishers || []).map((p) => p.uid));
    this.mediaUrl = snap.media_url || this.mediaUrl;
    this._maybeStart();
  }

  onEvent(ev) {
    if (ev.t !== "live") return;
    if (ev.on) {
      this.publishers.add(ev.uid);
      this.ended = false;
      this.mediaUrl = ev.url || this.mediaUrl;
      this._maybeStart();
    } else {
      this.publishers.delete(ev.uid); // the player itself ends with the playlist's ENDLIST
    }
    this.status();
  }

  /** Play HLS from now on (the page left WebRTC or was asked for HLS). */
  activate(reason) {
    if (this.active) return;
    this.active = true;
    this.detail = reason || "";
    this._t0 = performance.now();
    this._maybeStart();
    this.status();
  }

  /** For good (banned, kicked). */
  stop() {
    this.active = false;
    clearTimeout(this._retry);
    this._retry = null;
    this._stopPlayer();
  }

  status() {
    if (!this.active) return;
    const latency = this.latencyMs === null ? "" : ` · ${(this.latencyMs / 1000).toFixed(1)} s behind live`;
    this.onStatus({
      live: this.live,
      ended: this.ended,
      playing: this.playing,
      firstFrameMs: this.firstFrameMs,
      detail: this.detail || (this.live ? "Loading the HLS stream…" : ""),
      stats: this.playing ? `HLS ${this.video.videoWidth}×${this.video.videoHeight}${latency}` : "",
    });
  }

  _maybeStart() {
    if (!this.active || !this.live || this.hls || this._retry || !this.base) return;
    const run = ++this._run;
    this._start(run).catch((err) => this._failed(run, err.message || String(err)));
  }

  async _start(run) {
    const Hls = await loadHls();
    const token = await this.getToken();
    if (run !== this._run) return;
    const base = this.base.replace(/\/+$/, "");
    const res = await fetch(`${base}/hls/${encodeURIComponent(this.room)}/token`, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.msg || `HLS token: HTTP ${res.status}`);
    if (run !== this._run) return;
    if (!Hls.isSupported()) throw new Error("this browser cannot play HLS with Media Source Extensions");
    const hls = (this.hls = new Hls(HLS_CONFIG));
    hls.on(Hls.Events.MANIFEST_PARSED, () => this.video.play().catch(() => {}));
    hls.on(Hls.Events.ERROR, (_, data) => {
      if (data.fatal) this._failed(run, `HLS ${data.type}: ${data.details}`);
    });
    hls.on(Hls.Events.BUFFER_EOS, () => this._ended(run)); // EXT-X-ENDLIST: the host stopped
    this.video.srcObject = null;
    hls.loadSource(base + body.url);
    hls.attachMedia(this.video);
    this.detail = "";
    this._sampler = setInterval(() => this._sample(), SAMPLE_MS);
    this._watchFrames(run);
    this.status();
  }

  _watchFrames(run) {
    const v = this.video;
    if (typeof v.requestVideoFrameCallback !== "function") return;
    this._perFrame = true;
    const tick = (_now, meta) => {
      if (run !== this._run) return;
      this._frame();
      this._measure(meta.mediaTime);
      v.requestVideoFrameCallback(tick);
    };
    v.requestVideoFrameCallback(tick);
  }

  _frame() {
    if (!this.hls || this.video.videoWidth === 0) return;
    if (this.firstFrameMs === null && this._t0 !== null) this.firstFrameMs = performance.now() - this._t0;
    this.failures = 0;
    if (!this.playing) {
      this.playing = true;
      this.status();
    }
  }

  _sample() {
    if (!this._perFrame) this._measure(this.video.currentTime);
    if (this.latencyMs !== null) this.status();
  }

  /** Now minus the date of the frame at `mediaTime`: hls.js dates currentTime, so step from
   * there by how far currentTime is past (or short of) that frame. */
  _measure(mediaTime) {
    const date = this.hls && this.hls.playingDate;
    if (!date) return;
    const ahead = this.video.currentTime - mediaTime;
    this.latencyMs = Math.max(0, Math.round(Date.now() - date.getTime() + ahead * 1000));
  }

  _stopPlayer() {
    this._run++;
    clearInterval(this._sampler);
    this._sampler = null;
    if (this.hls) this.hls.destroy();
    this.hls = null;
    this.playing = false;
    this.latencyMs = null;
  }

  _ended(run) {
    if (run !== this._run) return;
    this._stopPlayer();
    this.ended = true;
    this.status();
  }

  _failed(run, why) {
    if (run !== this._run) return;
    this._stopPlayer();
    this.detail = `HLS unavailable: ${why}`;
    this.status();
    const wait = RETRY_MS[Math.min(this.failures++, RETRY_MS.length - 1)];
    this._retry = setTimeout(() => {
      this._retry = null;
      this._maybeStart();
    }, wait);
  }
}
