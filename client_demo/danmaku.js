// Danmaku layer: comments fly right to left across the video in lanes.
// - no overlap: a comment takes a lane only if it can never catch the one ahead of it;
// - speed grows with length, so long and short comments cross in similar time;
// - capped on screen; what does not fit waits briefly in a small queue (own comments first).

const GAP = 24; // px between two comments in a lane
const MAX_ON_SCREEN = 60;
const MAX_QUEUE = 40;
const MAX_WAIT_MS = 4000; // older queued comments are dropped, not shown late

export class DanmakuLayer {
  /** @param {HTMLElement} el the overlay element (position: absolute over the video) */
  constructor(el) {
    this.el = el;
    this.lanes = []; // per lane: {start, speed, width} of its last comment
    this.queue = [];
    this.onScreen = 0;
    this.shown = 0;
    this.enabled = true;
    this._pump = null;
  }

  setEnabled(on) {
    this.enabled = on;
    this.el.classList.toggle("off", !on);
    if (!on) {
      this.queue = [];
      this.el.replaceChildren();
      this.onScreen = 0;
      this.lanes = [];
    }
  }

  /** @param {{text: string, name?: string, mine?: boolean, host?: boolean, key?: unknown}} item */
  add(item) {
    if (!this.enabled) return;
    const entry = { ...item, at: performance.now() };
    if (item.mine) this.queue.unshift(entry);
    else this.queue.push(entry);
    if (this.queue.length > MAX_QUEUE) this.queue.splice(this.queue.findLastIndex((e) => !e.mine), 1);
    this._drain();
  }

  /** Take a comment off the screen (and out of the queue), e.g. deleted by a moderator. */
  remove(key) {
    this.queue = this.queue.filter((e) => e.key !== key);
    for (const node of this.el.querySelectorAll(".dm-item")) {
      if (node.dataset.key === String(key)) node.getAnimations().forEach((a) => a.cancel());
    }
  }

  _laneCount() {
    const lh = this._laneHeight();
    return Math.max(1, Math.floor((this.el.clientHeight * 0.8) / lh));
  }

  _laneHeight() {
    return Math.max(22, Math.round(parseFloat(getComputedStyle(this.el).fontSize || "20") * 1.5));
  }

  _drain() {
    const now = performance.now();
    while (this.queue.length && this.onScreen < MAX_ON_SCREEN) {
      const entry = this.queue[0];
      if (!entry.mine && now - entry.at > MAX_WAIT_MS) {
        this.queue.shift();
        continue;
      }
      if (!this._launch(entry, now)) break;
      this.queue.shift();
    }
    if (this.queue.length && !this._pump) {
      this._pump = setTimeout(() => {
        this._pump = null;
        this._drain();
      }, 150);
    }
  }

  _launch(entry, now) {
    const width = this.el.clientWidth;
    if (width === 0) return true; // not visible: drop silently
    const node = document.createElement("div");
    node.className = "dm-item" + (entry.mine ? " mine" : "") + (entry.host ? " host" : "");
    if (entry.key !== undefined) node.dataset.key = String(entry.key);
    node.textContent = entry.text;
    node.title = entry.name || "";
    node.style.visibility = "hidden";
    this.el.append(node);
    const w = node.offsetWidth;
    const speed = 110 + Math.min(w, 900) * 0.18; // px/s: longer text moves faster
    const lane = this._freeLane(width, w, speed, now);
    if (lane < 0) {
      node.remove();
      return false;
    }
    this.lanes[lane] = { start: now, speed, width: w };
    node.style.top = `${lane * this._laneHeight() + 6}px`;
    node.style.visibility = "";
    const distance = width + w;
    const anim = node.animate(
      [{ transform: `translateX(${width}px)` }, { transform: `translateX(${-w}px)` }],
      { duration: (distance / speed) * 1000, easing: "linear" },
    );
    this.onScreen += 1;
    this.shown += 1;
    this.el.dataset.shown = String(this.shown);
    anim.onfinish = anim.oncancel = () => {
      node.remove();
      this.onScreen -= 1;
      this._drain();
    };
    return true;
  }

  /** First lane where a comment of width w at speed v never touches the one ahead. */
  _freeLane(W, w, v, now) {
    const n = this._laneCount();
    for (let i = 0; i < n; i++) {
      const last = this.lanes[i];
      if (!last) return i;
      const t0 = (now - last.start) / 1000;
      const tailNow = W - t0 * last.speed + last.width; // right edge of the previous comment
      if (tailNow + GAP > W) continue; // it has not fully entered yet
      // Gap between our left edge and its right edge is linear in time; check it when the
      // previous one leaves the screen (or when we reach the left edge, if sooner).
      const tLeave = Math.max(0, (W + last.width) / last.speed - t0);
      const t = Math.min(tLeave, W / v);
      const gapAt = W - t * v - (tailNow - t * last.speed);
      if (gapAt >= GAP) return i;
    }
    return -1;
  }
}
