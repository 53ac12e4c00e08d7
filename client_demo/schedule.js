// Scheduled lives on a room page (docs/PROTOCOL.md "Followers and scheduled lives"): the room's
// lives ahead (the snapshot's `schedules`, then `schedule` events on / off), soonest first. A
// viewer reserves one (`reserve`: told with a `live_notice` when it starts, see fans.js); with
// `manage` (the host console) a time and a title schedule a new one.
import { el } from "./ui.js";

const WHEN = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });

export function attachSchedule(conn, { parent, manage = false, onNote = () => {} }) {
  const s = { lives: new Map(), reserved: new Set(), cid: 0 }; // id -> `schedule` event; ids reserved here
  const list = el("ol", { class: "schedule-list", id: "schedule-list" });
  const root = el("section", { class: "schedule", id: "schedule", hidden: !manage }, el("h3", {}, "Upcoming lives"), list);
  if (manage) parent.append(root); // below the console's own controls
  else parent.prepend(root); // above the chat, beside the top gifters

  function render() {
    const lives = [...s.lives.values()].sort((a, b) => a.at - b.at);
    root.hidden = !manage && lives.length === 0;
    list.replaceChildren(
      ...lives.map((live) => {
        const when = new Date(live.at);
        const item = el("li", { dataset: { id: live.id, at: String(live.at) } }, el("time", { datetime: when.toISOString() }, WHEN.format(when)), el("span", { class: "schedule-title" }, live.title));
        if (!manage) {
          const done = s.reserved.has(live.id);
          const send = () => conn.send({ t: "reserve", host: live.uid, id: live.id, cid: `r${++s.cid}` });
          item.append(el("button", { type: "button", class: "chip reserve-btn", "aria-pressed": String(done), disabled: done, onclick: send }, done ? "Reserved" : "Reserve"));
        }
        return item;
      }),
    );
    if (manage && !lives.length) list.append(el("li", { class: "schedule-empty" }, "Nothing scheduled."));
  }

  conn.on("snapshot", (snap) => {
    s.lives = new Map((snap.schedules || []).map((e) => [e.id, e]));
    render();
  });
  conn.on("events", (events) => {
    let changed = false;
    for (const ev of events) {
      if (ev.t !== "schedule") continue;
      if (ev.on) s.lives.set(ev.id, ev);
      else s.lives.delete(ev.id);
      changed = true;
    }
    if (changed) render();
  });
  conn.on("reserve_ack", (ack) => {
    s.reserved.add(ack.id);
    render();
  });

  if (manage) {
    const at = el("input", { class: "field", id: "schedule-at", type: "datetime-local", "aria-label": "When the live starts", required: true });
    const title = el("input", { class: "field", id: "schedule-title", maxlength: "100", placeholder: "title of the live", "aria-label": "Title of the live", required: true });
    const submit = (e) => {
      e.preventDefault();
      const when = new Date(at.value).getTime();
      if (!Number.isFinite(when) || !title.value.trim()) return;
      conn.send({ t: "schedule", at: when, title: title.value.trim(), cid: `s${++s.cid}` });
    };
    root.append(el("form", { class: "controls", id: "schedule-form", autocomplete: "off", onsubmit: submit }, at, title, el("button", { type: "submit", class: "btn", id: "schedule-add" }, "Schedule")));
    conn.on("schedule_ack", () => {
      title.value = "";
      onNote("Live scheduled.");
    });
  }

  render();
  return { state: s, render };
}
