// A room's recording in the viewer page (?replay=<recording id>; docs/API.md "Recordings"):
// the VOD playlist with the vendored hls.js, and the room's danmaku replayed at their moments.
// Each recorded danmaku carries the room's clock (`ts`, ms) and every segment its
// PROGRAM-DATE-TIME, so a danmaku flies when the picture on screen reaches the moment it was
// sent: hls.js's `playingDate` (the date of the frame shown) is compared with `ts`, also after
// a seek. Files come from the media node (/api/config) or from ?hls=<base> (a CDN or cache),
// with the viewer's HLS URL token (GET /hls/<room>/token: the same access rules as live HLS).

import { loadHls } from "./hls-player.js";

const SAMPLE_MS = 100;

export class ReplayPlayer {
  /**
   * room, id: the room and recording; video: the stage <video>; base: ?hls= or null;
   * getToken(): the viewer's room token; onStatus(status): as HlsPlayer's;
   * onDanmaku(d): a recorded danmaku ({seq, ts, uid, name, text}) whose moment has come.
   */
  constructor({ room, id, video, base, getToken, onStatus, onDanmaku }) {
    Object.assign(this, { room, id, video, fixedBase: base || null, getToken, onStatus, onDanmaku });
    this.hls = null;
    this.danmaku = []; // sorted by ts
    this.next = 0; // index of the next danmaku to show
    this.playing = false;
    this.ended = false;
    this.detail = "Loading the recording…";
    this.shown = 0; // danmaku shown so far (the tests read it)
    this.lastShownAt = null;
    this._sampler = null;
    video.addEventListener("playing", () => this._frame());
    video.addEventListener("seeked", () => this._rewind());
    video.addEventListener("ended", () => {
      this.ended = true;
      this.status();
    });
  }

  async start() {
    try {
      await this._start();
    } catch (err) {
      this.detail = `Replay unavailable: ${err.message || err}`;
      this.status();
    }
  }

  stop() {
    clearInterval(this._sampler);
    if (this.hls) this.hls.destroy();
    this.hls = null;
  }

  status() {
    const date = this.hls && this.hls.playingDate;
    this.onStatus({
      live: !this.ended,
      ended: this.ended,
      playing: this.playing,
      firstFrameMs: null,
      detail: this.detail,
      stats: this.playing ? `Replay ${this.video.videoWidth}×${this.video.videoHeight}${date ? ` · ${date.toLocaleString()}` : ""}` : "",
    });
  }

  async _start() {
    const Hls = await loadHls();
    if (!Hls.isSupported()) throw new Error("this browser cannot play HLS with Media Source Extensions");
    const base = (this.fixedBase || (await mediaUrl())).replace(/\/+$/, "");
    const res = await fetch(`${base}/hls/${encodeURIComponent(this.room)}/token`, {
      headers: { Authorization: `Bearer ${await this.getToken()}` },
      cache: "no-store",
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.msg || `HLS token: HTTP ${res.status}`);
    const dir = `${base}/replay/${encodeURIComponent(this.room)}/${body.hls_token}/${encodeURIComponent(this.id)}`;
    const danmaku = await fetch(`${dir}/danmaku.json`);
    const recorded = await danmaku.json().catch(() => ({}));
    if (!danmaku.ok) throw new Error(recorded.msg || `recording: HTTP ${danmaku.status}`);
    this.danmaku = (recorded.danmaku || []).slice().sort((a, b) => a.ts - b.ts);
    const hls = (this.hls = new Hls({ backBufferLength: 60 }));
    hls.on(Hls.Events.MANIFEST_PARSED, () => this.video.play().catch(() => {}));
    hls.on(Hls.Events.ERROR, (_, data) => {
      if (!data.fatal) return;
      this.stop();
      this.playing = false;
      this.detail = `Replay unavailable: HLS ${data.type}: ${data.details}`;
      this.status();
    });
    this.video.srcObject = null;
    hls.loadSource(`${dir}/index.m3u8`);
    hls.attachMedia(this.video);
    this._sampler = setInterval(() => this._sample(), SAMPLE_MS);
  }

  _frame() {
    if (!this.hls || this.video.videoWidth === 0) return;
    this.ended = false;
    this.detail = "";
    if (!this.playing) {
      this.playing = true;
      this.status();
    }
  }

  /** Every danmaku whose moment the picture has reached, in order. */
  _sample() {
    const date = this.hls && this.hls.playingDate;
    if (!date) return;
    const now = date.getTime();
    while (this.next < this.danmaku.length && this.danmaku[this.next].ts <= now) {
      this.shown++;
      this.lastShownAt = now; // the picture's date when the last one flew (the tests read it)
      this.onDanmaku(this.danmaku[this.next++]);
    }
  }

  /** After a seek: the next danmaku is the first at or after the new picture's moment. */
  _rewind() {
    const date = this.hls && this.hls.playingDate;
    if (!date) return;
    const now = date.getTime();
    let lo = 0;
    let hi = this.danmaku.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.danmaku[mid].ts < now) lo = mid + 1;
      else hi = mid;
    }
    this.next = lo;
  }
}

/** The media port's base URL, as the server says (/api/config); same origin if it does not. */
async function mediaUrl() {
  const res = await fetch("/api/config", { cache: "no-store" });
  const body = await res.json().catch(() => ({}));
  return body.http_url || location.origin;
}
