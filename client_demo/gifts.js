// Gifts on a room page (docs/PROTOCOL.md "Gifts"): one button per gift of the catalogue (the
// snapshot's `gifts`), one "x N" badge per streak (`gift` events carry the streak's `combo` id and
// its `count` so far, so a badge is updated, never duplicated), and the top gifters (the
// snapshot's `board`, then `board` events, the highest `ver` kept). The host console passes no
// button bar and a `feed` list to see incoming gifts in its chat.
import { appendCapped, el, fmtCount, userColor } from "./ui.js";

document.head.append(el("link", { rel: "stylesheet", href: "/gifts.css" }));

const BADGE_MS = 4000; // a streak's badge stays this long after its last gift

export function attachGifts(conn, { stage, side, bar = null, feed = null, onError = () => {} }) {
  const tag = Math.random().toString(36).slice(2, 10); // gift cids are per user: unique per page
  let seq = 0;
  let catalogue = new Map();
  let boardVer = -1;
  const badges = new Map(); // combo id -> {node, count, timer}
  const feedLines = new Map(); // combo id -> <li> in the feed
  const layer = el("div", { class: "gift-layer", id: "gift-layer", "aria-live": "polite" });
  stage.append(layer);
  const list = el("ol", { class: "leaderboard-list", id: "leaderboard-list" });
  const board = el("section", { class: "leaderboard", id: "leaderboard" }, el("h3", {}, "Top gifters"), list);
  side.prepend(board);
  const balance = el("span", { class: "gift-balance", id: "gift-balance" });

  function renderBar() {
    if (!bar) return;
    const buttons = [...catalogue.values()].map((g) =>
      el(
        "button",
        { type: "button", class: `gift-btn tier-${g.tier}`, dataset: { gift: g.id }, title: `${g.name} · ${g.value} coins`, onclick: () => send(g.id) },
        el("span", { class: "gift-name" }, g.name),
        el("span", { class: "gift-value" }, String(g.value)),
      ),
    );
    bar.replaceChildren(...buttons, balance);
  }

  function send(giftId) {
    const cid = `g${tag}.${++seq}`;
    if (!conn.send({ t: "gift", gift: giftId, count: 1, cid })) onError({ msg: "Not connected yet: wait a moment." });
  }

  function renderBoard(top) {
    list.replaceChildren(
      ...(top || []).map((row, i) =>
        el(
          "li",
          { dataset: { uid: row.uid, score: String(row.score) } },
          el("span", { class: "rank" }, String(i + 1)),
          el("span", { class: "who", style: `color:${userColor(row.uid)}` }, row.name || row.uid),
          el("span", { class: "score" }, fmtCount(row.score)),
        ),
      ),
    );
    board.dataset.empty = String(!(top || []).length);
  }

  function label(ev) {
    return catalogue.get(ev.gift)?.name || ev.gift;
  }

  function showCombo(ev) {
    let b = badges.get(ev.combo);
    if (!b) {
      const node = el("div", { class: `gift-badge tier-${ev.tier || "small"}`, dataset: { combo: ev.combo, gift: ev.gift, uid: ev.uid } });
      b = { node, count: 0, timer: null };
      badges.set(ev.combo, b);
      layer.append(node);
    }
    b.count = Math.max(b.count, ev.count || ev.n || 1); // events of one streak may be replayed
    b.node.dataset.count = String(b.count);
    b.node.replaceChildren(el("b", {}, ev.name || ev.uid), ` sent ${label(ev)} `, el("span", { class: "combo" }, `x ${b.count}`));
    b.node.classList.remove("bump");
    void b.node.offsetWidth; // restart the bump animation
    b.node.classList.add("bump");
    clearTimeout(b.timer);
    b.timer = setTimeout(() => {
      b.node.remove();
      badges.delete(ev.combo);
    }, BADGE_MS);
    if (feed) {
      let li = feedLines.get(ev.combo);
      if (!li) {
        li = el("li", { class: "sys gift-line", dataset: { combo: ev.combo } });
        feedLines.set(ev.combo, li);
        appendCapped(feed, li);
        if (feedLines.size > 200) feedLines.delete(feedLines.keys().next().value);
      }
      li.dataset.count = String(b.count);
      li.textContent = `🎁 ${ev.name || ev.uid} sent ${label(ev)} x ${b.count} (${fmtCount((ev.value || 0) * b.count)} coins)`;
    }
  }

  conn.on("snapshot", (snap) => {
    catalogue = new Map((snap.gifts || []).map((g) => [g.id, g]));
    boardVer = -1;
    renderBar();
    renderBoard(snap.board);
  });
  conn.on("events", (events) => {
    for (const ev of events) {
      if (ev.t === "gift") showCombo(ev);
      else if (ev.t === "board" && ev.ver > boardVer) {
        boardVer = ev.ver;
        renderBoard(ev.top);
      }
    }
  });
  conn.on("gift_ack", (ack) => {
    if (typeof ack.balance === "number") balance.textContent = `${fmtCount(ack.balance)} coins left`;
  });
  return { send, catalogue: () => catalogue };
}
