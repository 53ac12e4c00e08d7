// Cross-room links and PK rounds on a room page (docs/PROTOCOL.md "Links and PK rounds"): the
// score bar (this room on the left, the linked room on the right) with the round's countdown,
// the result when it ends, then the penalty's countdown (`pk_penalty`) if the round has one.
// Scores come from `pk` events (highest `ver` per round kept), which the server publishes
// identically into both rooms, so both rooms' pages show the same numbers.
// With `controls` (the host console) it also invites, accepts or declines, starts a round, ends.
import { el, fmtCount } from "./ui.js";

const RESULT_MS = 8000; // the result banner stays this long

export function attachPk(conn, { room, stage, controls = null, onNote = () => {} }) {
  const s = { link: null, round: null, penalty: null, scores: {}, ver: -1, invite: null, timer: null, cid: 0 };
  const mine = el("span", { class: "pk-score mine", id: "pk-mine" }, "0");
  const theirs = el("span", { class: "pk-score theirs", id: "pk-theirs" }, "0");
  const fillMine = el("div", { class: "pk-fill mine" });
  const clock = el("span", { class: "pk-clock", id: "pk-clock" });
  const other = el("span", { class: "pk-other", id: "pk-other" });
  const result = el("div", { class: "pk-result", id: "pk-result", hidden: true });
  const bar = el(
    "div",
    { class: "pk-bar", id: "pk-bar", hidden: true },
    el("div", { class: "pk-head" }, el("span", { class: "pk-tag" }, "PK"), el("span", {}, room), clock, other),
    el("div", { class: "pk-track" }, fillMine, mine, theirs),
  );
  stage.append(bar, result);

  function otherRoom() {
    return (s.link?.rooms || s.round?.rooms || []).find((r) => r !== room) || "";
  }

  function render() {
    const linked = Boolean(s.link);
    bar.hidden = !linked && !s.round && !s.penalty;
    bar.dataset.state = s.round ? "round" : s.penalty ? "penalty" : linked ? "linked" : "off";
    bar.dataset.loser = s.penalty ? s.penalty.loser || "" : "";
    other.textContent = otherRoom() ? `vs ${otherRoom()}` : "";
    const a = Number(s.scores[room] || 0);
    const b = Number(s.scores[otherRoom()] || 0);
    mine.textContent = fmtCount(a);
    theirs.textContent = fmtCount(b);
    bar.dataset.scores = JSON.stringify({ [room]: a, [otherRoom()]: b });
    bar.dataset.mine = String(a);
    bar.dataset.theirs = String(b);
    fillMine.style.width = `${a + b ? (100 * a) / (a + b) : 50}%`;
    tick();
    if (controls) renderControls();
  }

  function tick() {
    clearTimeout(s.timer);
    const phase = s.round || s.penalty;
    if (!phase) {
      clock.textContent = s.link ? "linked" : "";
      delete clock.dataset.left;
      return;
    }
    const left = Math.max(0, Math.ceil((phase.ends - Date.now()) / 1000));
    const mmss = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    clock.textContent = s.round ? mmss : `${penaltyLabel(s.penalty)} ${mmss}`;
    clock.dataset.left = String(left);
    if (left > 0) s.timer = setTimeout(tick, 250);
  }

  function penaltyLabel(p) {
    if (!p.loser) return "Penalty: both";
    return p.loser === room ? "Penalty: you" : `Penalty: ${p.loser}`;
  }

  function showResult(ev) {
    const a = Number(ev.scores?.[room] || 0);
    const rooms = Object.keys(ev.scores || {});
    const b = Number(ev.scores?.[rooms.find((r) => r !== room)] || 0);
    const verdict = ev.winner === null || ev.winner === undefined ? "Draw" : ev.winner === room ? "You win!" : `${ev.winner} wins`;
    const top = (ev.top?.[room] || []).map((t) => t.name || t.uid).join(", ");
    result.replaceChildren(el("b", {}, verdict), ` ${fmtCount(a)} : ${fmtCount(b)}`, top ? el("div", { class: "pk-top" }, `Top: ${top}`) : "");
    result.dataset.winner = ev.winner ?? "";
    result.dataset.scores = JSON.stringify(ev.scores || {});
    result.hidden = false;
    setTimeout(() => (result.hidden = true), RESULT_MS);
  }

  conn.on("snapshot", (snap) => {
    s.link = snap.link || null;
    s.round = snap.pk || null;
    s.penalty = snap.pk_penalty || null;
    s.scores = snap.pk?.scores || {};
    s.ver = snap.pk?.ver ?? -1;
    render();
  });
  conn.on("events", (events) => {
    let changed = false;
    for (const ev of events) {
      if (ev.t === "link") {
        s.link = ev.on ? ev : null;
        s.invite = null;
        if (!ev.on) s.round = s.penalty = null;
        if (controls) onNote(ev.on ? `Linked with ${otherRoom()}.` : `Link ended${ev.reason ? ` (${ev.reason})` : ""}.`);
      } else if (ev.t === "link_invite") {
        s.invite = ev;
        if (controls) onNote(ev.to === room ? `Room ${ev.from} invites you to link.` : `Invitation sent to ${ev.to}.`);
      } else if (ev.t === "pk_round") {
        s.round = ev.on ? ev : null;
        if (ev.on) {
          s.scores = {};
          s.ver = -1;
        }
      } else if (ev.t === "pk_penalty") {
        s.penalty = ev.on ? ev : null;
        if (controls && ev.on) onNote(`Penalty time: ${penaltyLabel(ev).slice(9)} (${ev.seconds} s).`);
      } else if (ev.t === "pk") {
        if (s.round && ev.id !== s.round.id) continue;
        if (ev.ver <= s.ver) continue;
        s.ver = ev.ver;
        s.scores = ev.scores || {};
      } else if (ev.t === "pk_result") {
        s.scores = ev.scores || s.scores;
        showResult(ev);
      } else continue;
      changed = true;
    }
    if (changed) render();
  });

  // -- host controls ----------------------------------------------------------------------
  let ui = null;
  function send(action, extra = {}) {
    conn.send({ t: "link", action, cid: `l${++s.cid}`, ...extra });
  }
  if (controls) {
    const target = el("input", { class: "field", id: "link-room", placeholder: "other room id", "aria-label": "Room to link" });
    const seconds = el("select", { class: "field", id: "pk-seconds", "aria-label": "PK round length" });
    for (const v of [30, 60, 180, 300]) seconds.append(el("option", { value: String(v), selected: v === 180 }, `${v / 60 >= 1 ? `${v / 60} min` : `${v} s`}`));
    const penalty = el("select", { class: "field", id: "pk-penalty", "aria-label": "Penalty after the round" });
    for (const v of [0, 15, 30, 60, 120]) penalty.append(el("option", { value: String(v), selected: v === 0 }, v ? `penalty ${v} s` : "no penalty"));
    ui = {
      invite: el("button", { type: "submit", class: "btn", id: "link-invite" }, "Invite to link"),
      accept: el("button", { type: "button", class: "btn go", id: "link-accept", onclick: () => send("accept", { room: s.invite?.from }) }, "Accept"),
      decline: el("button", { type: "button", class: "btn", id: "link-decline", onclick: () => send("decline", { room: s.invite?.from }) }, "Decline"),
      start: el("button", { type: "button", class: "btn go", id: "pk-start", onclick: () => send("pk", { seconds: Number(seconds.value), penalty: Number(penalty.value) }) }, "Start PK"),
      end: el("button", { type: "button", class: "btn stop", id: "link-end", onclick: () => send("end") }, "End link"),
      target,
      seconds,
      penalty,
    };
    controls.append(
      el(
        "form",
        {
          class: "controls",
          id: "link-form",
          autocomplete: "off",
          onsubmit: (e) => {
            e.preventDefault();
            const r = target.value.trim();
            if (/^[A-Za-z0-9_.:-]{1,64}$/.test(r)) send("invite", { room: r });
          },
        },
        target,
        ui.invite,
        ui.accept,
        ui.decline,
        seconds,
        penalty,
        ui.start,
        ui.end,
      ),
    );
    conn.on("link_ack", (ack) => onNote(`Done: ${ack.action}${ack.room ? ` (${ack.room})` : ""}.`));
  }

  function renderControls() {
    const invited = Boolean(s.invite && s.invite.to === room && !s.link);
    ui.accept.hidden = ui.decline.hidden = !invited;
    ui.invite.disabled = ui.target.disabled = Boolean(s.link);
    ui.start.disabled = !s.link || Boolean(s.round) || Boolean(s.penalty);
    ui.end.disabled = !s.link;
  }

  render();
  return { state: s, send };
}
