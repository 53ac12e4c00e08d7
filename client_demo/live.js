// One live-room connection: join with a token, keep the room's sequence, reconnect with
// backoff and resume from the last sequence seen (docs/PROTOCOL.md, "join" and "snapshot").
import { decode, encode } from "./mp.js";

// Close codes after which retrying with the same token cannot succeed (the server's
// protocol.NO_RETRY_CODES; tests/test_close_codes.py keeps them equal).
// 4307 abusive, 4402 kicked, 4403 banned, 4410 room closed: the page explains; a reload tries again.
const NO_RETRY = new Set([4005, 4100, 4101, 4103, 4307, 4402, 4403, 4410]);
const FRESH_TOKEN = new Set([4102, 4306]); // expired, or a one-time token already used (FRESH_TOKEN_CODES)
const PING_EVERY_MS = 10000;

export class LiveConnection {
  /**
   * `wsUrl` may list several nodes, comma-separated (`?ws=` on the pages): a reconnect tries
   * the next one, so a host whose node died republishes on another (media failover).
   * @param {{room: string, getToken: (fresh: boolean) => Promise<string>, wsUrl?: string}} opts
   */
  constructor({ room, getToken, wsUrl, boot }) {
    this.room = room;
    this.getToken = getToken;
    this.wsUrls = (wsUrl || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`)
      .split(",")
      .map((u) => u.trim())
      .filter(Boolean);
    this.wsUrl = this.wsUrls[0];
    this.ws = null;
    this.state = "idle"; // idle | connecting | live | reconnecting | failed | closed
    this.epoch = null;
    this.seq = 0;
    this.attempt = 0;
    this.connects = 0; // successful joins, so the first is 1
    this.resets = 0; // in-band snapshots: the room's stream restarted under a live connection
    this._joinedOn = null; // the socket whose join snapshot came (a later snapshot is in-band)
    this._media = null; // the last snapshot's media fields: an in-band one redoes media only if they changed
    this.rtt = null;
    this.handlers = new Map();
    this.stopReason = null; // set when the server told us not to come back
    this._timer = null;
    this._ping = null;
    this._freshToken = false;
    this._retryAfter = 0;
    this.boot = boot || null; // index.html's early socket (join in the URL), adopted by start()
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(fn);
    return this;
  }

  emit(type, ...args) {
    for (const fn of this.handlers.get(type) || []) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`handler for ${type} failed`, err);
      }
    }
  }

  setState(state, detail = "") {
    this.state = state;
    this.emit("state", state, detail);
  }

  start() {
    this.stopReason = null;
    const boot = this.boot;
    this.boot = null;
    if (!boot || !boot.ws) return this._open();
    this.setState("connecting");
    this._adopt(boot);
  }

  /** Take over the socket index.html opened (already joined through its URL): replay its frames. */
  _adopt(boot) {
    performance.mark("liveroom:adopt"); // load_tests/bench_first_frame.py reads these marks
    const ws = boot.ws;
    this.ws = ws;
    this._booting = true; // until its snapshot: a refusal of the dev join falls back to _open()
    this.joinSubscribed = Boolean(boot.subscribed); // the server offers media after the snapshot
    this.bootPc = boot.pc || null; // a peer connection already gathering, for that offer (rtc.js)
    this.bootAnswered = boot.answered || null; // index.html answered that offer already (rtc.js)
    this._attach(ws, null);
    for (const data of boot.frames.splice(0)) ws.onmessage({ data });
    if (boot.closed) ws.onclose(boot.closed);
  }

  close() {
    this.stopReason = "closed";
    clearTimeout(this._timer);
    clearInterval(this._ping);
    if (this.ws) {
      try {
        this.ws.send(encode({ t: "leave" }));
      } catch {}
      this.ws.close(1000, "bye");
    }
    this.setState("closed");
  }

  /** Stop for good (ban, bad token): no more reconnects. */
  stop(reason) {
    this.stopReason = reason;
    clearTimeout(this._timer);
    this.setState("failed", reason);
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || this.state !== "live") return false;
    this.ws.send(encode(frame));
    return true;
  }

  async _open() {
    clearTimeout(this._timer);
    this.setState(this.connects ? "reconnecting" : "connecting", this.attempt ? `attempt ${this.attempt + 1}` : "");
    let token;
    try {
      token = await this.getToken(this._freshToken);
      this._freshToken = false;
    } catch (err) {
      if (err && err.fatal) {
        this.stop(err.message);
        return;
      }
      this._retry(`token: ${err && err.message ? err.message : err}`);
      return;
    }
    const ws = new WebSocket(this.wsUrl);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this._attach(ws, token);
  }

  /** Wire a socket's events; `token`: send the join frame on open (null: joined by URL). */
  _attach(ws, token) {
    ws.onopen = () => {
      if (token === null) return;
      const join = { t: "join", v: 1, token, room: this.room };
      if (this.epoch) join.resume = { epoch: this.epoch, seq: this.seq };
      ws.send(encode(join));
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      let frame;
      try {
        frame = decode(ev.data);
      } catch (err) {
        console.warn("undecodable frame", err);
        return;
      }
      this._frame(frame);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      clearInterval(this._ping);
      this.ws = null;
      if (this._booting) {
        this._booting = false;
        this.joinSubscribed = false;
        this.bootPc?.close();
        this.bootPc = null;
        this.bootAnswered = null;
        if (ev.code === 4100) return this._open(); // no dev tokens here: the page asks for one
      }
      this.emit("closed", ev.code, ev.reason);
      if (this.stopReason) return;
      if (NO_RETRY.has(ev.code)) {
        this.stop(ev.reason || `closed (${ev.code})`);
        return;
      }
      if (FRESH_TOKEN.has(ev.code)) this._freshToken = true;
      const soon = ev.code === 1012 || ev.code === 3000;
      const wait = this._retryAfter; // the error frame before the close may say how long
      this._retryAfter = 0;
      this._retry(ev.code === 1012 ? "server restarting" : `connection lost (${ev.code})`, soon, wait);
    };
  }

  _retry(why, soon = false, minSeconds = 0) {
    if (this.stopReason) return;
    const base = soon && this.attempt === 0 ? 250 : Math.min(8000, 500 * 2 ** this.attempt);
    const delay = Math.max(minSeconds * 1000, Math.round(base * (0.6 + Math.random() * 0.4)));
    this.attempt += 1;
    if (this.wsUrls.length > 1) this.wsUrl = this.wsUrls[(this.wsUrls.indexOf(this.wsUrl) + 1) % this.wsUrls.length];
    this.setState("reconnecting", `${why}; retrying in ${(delay / 1000).toFixed(1)} s`);
    this._timer = setTimeout(() => this._open(), delay);
  }

  _frame(frame) {
    switch (frame.t) {
      case "snapshot":
        return this._snapshot(frame);
      case "batch":
        return this._batch(frame);
      case "pong":
        if (typeof frame.ts === "number") this.rtt = Math.max(0, performance.now() - frame.ts);
        return this.emit("pong", this.rtt);
      case "error":
        if (this._booting && frame.code === 4100) return; // dev join refused: _open() follows
        if (frame.retry_after && [4301, 4302, 4308].includes(frame.code)) this._retryAfter = frame.retry_after;
        return this.emit("error", frame);
      case "dropped":
        return this.resync(`the server skipped ${frame.count} batches`);
      default:
        return this.emit(frame.t, frame);
    }
  }

  /** We missed events: reconnect at once and resume from the last sequence we have. */
  resync(why) {
    if (!this.ws || this.state !== "live") return;
    console.info("resync:", why);
    this.ws.close(3000, "resync");
  }

  _snapshot(snap) {
    if (snap.reset === true && this._joinedOn === this.ws && this.ws) return this._resetSnapshot(snap);
    this._joinedOn = this.ws;
    this._media = mediaOf(snap);
    this._booting = false;
    const resumed = this.connects > 0;
    const recovered = snap.recovered === true;
    const sameEpoch = snap.epoch === this.epoch;
    this.attempt = 0;
    this.connects += 1;
    this.state = "live"; // joined: handlers of the snapshot may send (the event follows)
    if (recovered) {
      this.emit("snapshot", snap, { resumed, recovered });
      this._events(snap.missed || []);
    } else {
      const since = sameEpoch ? this.seq : 0;
      this.epoch = snap.epoch;
      this.seq = snap.seq;
      this.emit("snapshot", snap, { resumed, recovered, since });
    }
    this.seq = Math.max(this.seq, snap.seq);
    this.setState("live");
    clearInterval(this._ping);
    this._ping = setInterval(() => this.send({ t: "ping", ts: performance.now() }), PING_EVERY_MS);
    this.send({ t: "ping", ts: performance.now() });
  }

  /** The room's stream restarted under the node (docs/PROTOCOL.md, `snapshot`, `reset`): a fresh
   * snapshot on this same connection replaces the room's state, and our position is its
   * (epoch, seq). Handlers redraw from it (`reset: true`, `since: 0`); media is redone only when
   * its fields changed (`mediaChanged`). No reconnect. */
  _resetSnapshot(snap) {
    const media = mediaOf(snap);
    const mediaChanged = media !== this._media;
    this._media = media;
    this.epoch = snap.epoch;
    this.seq = snap.seq;
    this.resets += 1;
    this.emit("snapshot", snap, { resumed: false, recovered: false, since: 0, reset: true, mediaChanged });
  }

  /** A batch names its epoch: a new one on a live connection continues our stream only when its
   * first event follows the last one we have (docs/PROTOCOL.md, "batch"); otherwise resync. */
  _batch(frame) {
    const events = frame.events || [];
    if (frame.epoch && this.epoch !== null && frame.epoch !== this.epoch) {
      const first = events.find((ev) => typeof ev.seq === "number");
      if (!first || first.seq !== this.seq + 1) return this.resync(`stream ${this.epoch} -> ${frame.epoch}`);
      this.epoch = frame.epoch;
    }
    if (frame.sampled) return this._sampled(events, frame.sampled, frame.upto);
    return this._events(events);
  }

  /** A big room's frame carries a sample of its chat: `sampled` danmaku of the seqs up to `upto`
   * were left out on purpose (history has them); only a shortfall beyond that is a loss. */
  _sampled(events, sampled, upto) {
    const fresh = events.filter((ev) => typeof ev.seq !== "number" || ev.seq > this.seq);
    const numbered = fresh.filter((ev) => typeof ev.seq === "number").length;
    if (this.seq && this.state === "live" && numbered + sampled < upto - this.seq) {
      return this.resync(`sequence gap ${this.seq} -> ${upto}`);
    }
    this.seq = Math.max(this.seq, upto);
    if (fresh.length) this.emit("events", fresh);
    this.emit("sampled", sampled);
  }

  _events(events) {
    const fresh = [];
    for (const ev of events) {
      if (typeof ev.seq === "number") {
        if (ev.seq <= this.seq) continue; // already seen (overlap after a resume)
        if (this.seq && ev.seq > this.seq + 1 && this.state === "live") {
          if (fresh.length) this.emit("events", fresh);
          this.resync(`sequence gap ${this.seq} -> ${ev.seq}`);
          return;
        }
        this.seq = ev.seq;
      }
      fresh.push(ev);
    }
    if (fresh.length) this.emit("events", fresh);
  }
}

/** Where a snapshot says the room's media is: what an in-band snapshot compares. */
function mediaOf(snap) {
  return JSON.stringify([snap.media_node ?? null, snap.media_url ?? null, snap.media_codec ?? null]);
}

/** Read the room id from /room/<id>, ?room=, or fall back to "demo". */
export function roomFromLocation(loc = location) {
  const m = loc.pathname.match(/^\/room\/([A-Za-z0-9_.:-]{1,64})\/?$/);
  if (m) return m[1];
  const q = new URLSearchParams(loc.search).get("room");
  return q && /^[A-Za-z0-9_.:-]{1,64}$/.test(q) ? q : "demo";
}

export class TokenError extends Error {
  constructor(message, fatal = false) {
    super(message);
    this.fatal = fatal;
  }
}

/**
 * A token source: ?token= in the URL, a pasted one (sessionStorage), or the dev endpoint.
 * Returns null when none is available (the page then asks for one).
 */
export async function devToken({ room, user, name, role }) {
  const q = new URLSearchParams({ room, user, name: name || user, role });
  let res;
  try {
    res = await fetch(`/api/dev/token?${q}`, { cache: "no-store" });
  } catch (err) {
    throw new TokenError(`cannot reach the server (${err.message})`);
  }
  if (res.status === 404) return null; // dev tokens disabled: paste one
  if (!res.ok) throw new TokenError(`token endpoint: HTTP ${res.status}`, res.status === 400);
  return (await res.json()).token;
}

export function randomId(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(3));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Decode a JWT's claims without checking it (display only; the server checks). */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}
