// The host's question board: what viewers are asking in the last 5 minutes, grouped by what
// they ask (the assistant's `question` tags), how many asked, answered or not and by whom.
// "Answer" sends a reply to every open asker and pins it; "Done" hides the group here.
// The board is part of the room: a staff snapshot carries its last questions and replies
// (`qa`, docs/PROTOCOL.md), so a reload or a late join redraws it as it was.
import { el } from "./ui.js";

const WINDOW_MS = 5 * 60 * 1000;

export class QuestionBoard {
  constructor() {
    this.groups = new Map(); // key -> {key, label, asks: Map(seq -> {uid, name, ts}), first, last}
    this.answered = new Map(); // seq -> "assistant" | "host"
    this.done = new Set(); // keys the host marked done
  }

  onEvent(ev) {
    if (ev.t === "question") {
      let g = this.groups.get(ev.key);
      if (!g) this.groups.set(ev.key, (g = { key: ev.key, label: ev.label, asks: new Map(), first: ev.ts, last: ev.ts }));
      const askers = ev.askers || [];
      const names = ev.names || [];
      ev.seqs.forEach((seq, i) => {
        const at = askers[i] !== undefined ? i : 0;
        g.asks.set(seq, { uid: askers[at], name: names[at] || askers[at], ts: ev.ts });
      });
      g.last = Math.max(g.last, ev.ts);
      this.done.delete(ev.key); // asked again: back on the board
      return true;
    }
    if (ev.t === "reply") {
      for (const seq of ev.seqs || []) this.answered.set(seq, ev.from);
      return true;
    }
    return false;
  }

  /** Start over from a snapshot's `qa` (the room's last questions and replies). */
  load(events) {
    this.groups.clear();
    this.answered.clear();
    for (const ev of events) this.onEvent(ev);
  }

  rows(now = Date.now()) {
    const out = [];
    for (const [key, g] of this.groups) {
      if (now - g.last > WINDOW_MS) {
        this.groups.delete(key);
        continue;
      }
      if (this.done.has(key)) continue;
      const recent = [...g.asks].filter(([, a]) => now - a.ts <= WINDOW_MS);
      const open = recent.filter(([seq]) => !this.answered.has(seq));
      const by = new Set(recent.map(([seq]) => this.answered.get(seq)).filter(Boolean));
      const who = [...new Set(recent.map(([, a]) => a.name).filter(Boolean))];
      out.push({ key, label: g.label, count: recent.length, open: open.map(([seq, a]) => ({ seq, uid: a.uid, name: a.name })), by: [...by], who, last: g.last });
    }
    return out.sort((a, b) => b.open.length - a.open.length || b.count - a.count || b.last - a.last);
  }
}

export function attachBoard(conn, root) {
  const board = new QuestionBoard();
  const list = el("ol", { class: "board-list", id: "board-list" });
  const empty = el("div", { class: "note", id: "board-empty" }, "No questions in the last 5 minutes.");
  root.append(el("h3", { class: "board-title" }, "Questions (last 5 min)"), empty, list);

  function render() {
    const rows = board.rows();
    empty.hidden = rows.length > 0;
    list.replaceChildren(...rows.map(row));
  }

  function row(r) {
    const status = r.open.length === 0 ? `answered by ${r.by.join(" & ")}` : r.by.length ? `${r.open.length} open · answered by ${r.by.join(" & ")}` : "open";
    const input = el("input", { class: "field", placeholder: "Your answer…", "aria-label": `Answer: ${r.label}` });
    const answer = el("form", { class: "board-answer", hidden: true, onsubmit: (e) => {
      e.preventDefault();
      const text = input.value.trim();
      const targets = r.open.length ? r.open : [];
      if (!text || !targets.length) return;
      // people are addressed by display name, as the assistant does; `askers` are their uids
      const names = [...new Set(targets.map((t) => t.name || t.uid))];
      const uids = [...new Set(targets.filter((t) => t.uid).map((t) => t.uid))];
      const mention = names.slice(0, 5).map((n) => `@${n}`).join(" ");
      conn.send({ t: "reply", text: `${mention}: ${text}`, seqs: targets.slice(0, 20).map((t) => t.seq), askers: uids.slice(0, 20), pin: true });
    } }, input, el("button", { type: "submit", class: "btn go" }, "Send & pin"));
    return el(
      "li",
      { class: `board-row${r.open.length ? " open" : ""}`, dataset: { key: r.key } },
      el("div", { class: "board-head" }, el("b", { class: "board-label" }, r.label), el("span", { class: "board-count" }, `×${r.count}`)),
      el("div", { class: "board-status" }, status),
      r.who.length ? el("div", { class: "board-who" }, `asked by ${r.who.slice(0, 5).join(", ")}${r.who.length > 5 ? ` +${r.who.length - 5}` : ""}`) : null,
      el(
        "div",
        { class: "board-actions" },
        el("button", { type: "button", class: "btn", disabled: !r.open.length, onclick: () => { answer.hidden = !answer.hidden; input.focus(); } }, "Answer"),
        el("button", { type: "button", class: "btn", onclick: () => { board.done.add(r.key); render(); } }, "Done"),
      ),
      answer,
    );
  }

  conn.on("snapshot", (snap, { recovered }) => {
    if (recovered || !snap.qa) return; // recovered: the missed events follow as events
    board.load(snap.qa);
    render();
  });
  conn.on("events", (events) => {
    let changed = false;
    for (const ev of events) changed = board.onEvent(ev) || changed;
    if (changed) render();
  });
  setInterval(render, 10_000); // groups age out of the 5-minute window
  render();
  return board;
}
