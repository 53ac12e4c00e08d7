// The user card: click any name (chat line, viewer list) to act on that user. Everyone can send
// a direct message; hosts and moderators also mute, kick and ban (docs/PROTOCOL.md, `mod`).
// It works from the user id alone, so a line whose message was deleted still opens it.
import { $, el, initials, userColor } from "./ui.js";

export class UserCard {
  /**
   * @param {{conn: object, me: () => ({uid: string, role: string}|null), onDm?: (uid: string, name: string) => void,
   *          onDone?: (text: string) => void}} opts
   * onDm: open the page's own DM thread (the viewer page); without it the card has a DM field.
   */
  constructor({ conn, me, onDm, onDone }) {
    this.conn = conn;
    this.me = me;
    this.onDm = onDm || null;
    this.onDone = onDone || (() => {});
    this.seq = 0;
    this.node = el("div", { class: "user-card", id: "user-card", role: "dialog", hidden: true });
    document.body.append(this.node);
    document.addEventListener("keydown", (e) => e.key === "Escape" && this.close());
    document.addEventListener("pointerdown", (e) => {
      if (!this.node.hidden && !this.node.contains(e.target) && !e.target.closest?.("[data-card]")) this.close();
    });
  }

  /** A name element that opens the card on click. */
  nameTag(uid, name, attrs = {}) {
    return el(
      "span",
      { ...attrs, class: `who ${attrs.class || ""}`.trim(), style: `color:${userColor(uid)}`, title: `@${uid}`, dataset: { card: uid } },
      name,
    );
  }

  /** Delegate clicks on [data-card] names inside `root` to the card. */
  attach(root) {
    root.addEventListener("click", (e) => {
      const tag = e.target.closest?.("[data-card]");
      if (tag && root.contains(tag)) this.open(tag.dataset.card, tag.textContent, tag);
    });
  }

  get canModerate() {
    const me = this.me();
    return Boolean(me && (me.role === "host" || me.role === "moderator"));
  }

  open(uid, name, anchor) {
    const me = this.me();
    const self = me && me.uid === uid;
    const b = (label, cls, onclick) => el("button", { type: "button", class: `btn ${cls}`, dataset: { action: cls }, onclick }, label);
    const actions = [];
    if (!self) {
      if (this.onDm) actions.push(b("Message", "dm", () => (this.close(), this.onDm(uid, name))));
      if (this.canModerate) {
        actions.push(
          b("Mute 10 min", "mute", () => this.mod({ action: "mute", uid, duration: 600 }, `${name} muted for 10 min`)),
          b("Kick", "kick danger", () => this.mod({ action: "kick", uid }, `${name} removed`)),
          b("Ban", "ban danger", () => {
            if (confirm(`Ban ${name} (${uid}) from this room?`)) this.mod({ action: "ban", uid }, `${name} banned`);
          }),
        );
      }
    }
    const dmForm =
      !self && !this.onDm
        ? el(
            "form",
            {
              class: "card-dm",
              onsubmit: (e) => {
                e.preventDefault();
                const input = e.currentTarget.querySelector("input");
                const text = input.value.trim();
                if (text && this.conn.send({ t: "dm", to: uid, text, cid: `ucd${++this.seq}` })) {
                  input.value = "";
                  this.status(`Message sent to ${name}.`);
                }
              },
            },
            el("input", { placeholder: `Message ${name}…`, "aria-label": "Direct message", maxlength: "1000" }),
            el("button", { type: "submit", class: "btn" }, "Send"),
          )
        : null;
    this.node.replaceChildren(
      el(
        "div",
        { class: "card-head" },
        el("span", { class: "avatar small", style: `background:${userColor(uid)}` }, initials(name)),
        el("div", {}, el("b", { class: "card-name" }, name), el("div", { class: "card-uid" }, `@${uid}`)),
        el("button", { type: "button", class: "card-close", "aria-label": "Close", onclick: () => this.close() }, "×"),
      ),
      actions.length ? el("div", { class: "card-actions" }, ...actions) : null,
      dmForm,
      el("div", { class: "card-status", role: "status" }),
    );
    this.node.dataset.uid = uid;
    this.node.hidden = false;
    const r = anchor?.getBoundingClientRect?.();
    const w = 260;
    const left = r ? Math.min(window.innerWidth - w - 8, Math.max(8, r.left)) : 16;
    const top = r ? Math.min(window.innerHeight - 190, r.bottom + 6) : 16;
    Object.assign(this.node.style, { left: `${left}px`, top: `${Math.max(8, top)}px` });
  }

  mod(frame, doneText) {
    const cid = `ucm${++this.seq}`;
    if (!this.conn.send({ t: "mod", ...frame, cid })) return this.status("Not connected.");
    this.status(`${doneText}…`);
    this.onDone(doneText);
  }

  status(text) {
    const box = $(".card-status", this.node);
    if (box) box.textContent = text;
  }

  close() {
    this.node.hidden = true;
  }
}
