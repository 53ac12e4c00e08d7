// Live-commerce additions to a room page: pinned items above the chat and the answers
// (`reply` events) in it. Attached to a LiveConnection with one call, so the viewer page and
// the host console only hook it in; with `manage` (host console) pins get unpin and edit controls.
import { appendCapped, el, userColor } from "./ui.js";

const css = el("link", { rel: "stylesheet", href: "/shop.css" });
document.head.append(css);

export function money(price) {
  return typeof price === "number" ? `¥${Number.isInteger(price) ? price : price.toFixed(2)}` : "";
}

export function attachShop(conn, { list, me = () => null, manage = false }) {
  const pins = el("div", { class: "pins", id: "pins", "aria-live": "polite" });
  list.parentElement.insertBefore(pins, list);
  const shown = new Map(); // pin id -> pin event

  function render() {
    pins.replaceChildren(...[...shown.values()].reverse().map(pinCard));
    pins.hidden = shown.size === 0;
  }

  function pinCard(pin) {
    const card = el("div", { class: `pin ${pin.kind}`, dataset: { id: pin.id, uid: pin.uid } });
    if (pin.kind === "product" && pin.product) {
      const p = pin.product;
      const stock = p.stock === 0 ? el("span", { class: "sold-out" }, "sold out") : typeof p.stock === "number" ? el("span", { class: "stock" }, `${p.stock} left`) : "";
      card.append(
        el("div", { class: "pin-head" }, el("span", { class: "pin-tag" }, "PINNED"), el("b", { class: "pin-name" }, p.name)),
        el("div", { class: "pin-line" }, el("span", { class: "price" }, money(p.price)), " ", stock),
        p.sizes?.length ? el("div", { class: "pin-meta" }, `Sizes ${p.sizes.join(" / ")}`) : "",
        p.colours?.length ? el("div", { class: "pin-meta" }, `Colours ${p.colours.join(" / ")}`) : "",
        p.link ? el("div", { class: "pin-meta link" }, p.link) : "",
      );
      if (manage) card.append(editForm(p));
    } else {
      card.append(el("div", { class: "pin-head" }, el("span", { class: "pin-tag" }, "PINNED"), el("span", { class: "pin-text" }, pin.text)));
    }
    if (manage) card.append(el("button", { type: "button", class: "pin-unpin", onclick: () => conn.send({ t: "unpin", id: pin.id }) }, "Unpin"));
    return card;
  }

  function editForm(p) {
    const price = el("input", { class: "field", type: "number", min: "0", step: "1", value: p.price ?? "", "aria-label": "Price" });
    const stock = el("input", { class: "field", type: "number", min: "0", step: "1", value: p.stock ?? "", "aria-label": "Stock" });
    return el(
      "form",
      {
        class: "pin-edit",
        onsubmit: (e) => {
          e.preventDefault();
          const frame = { t: "product", id: p.id };
          if (price.value !== "") frame.price = Number(price.value);
          if (stock.value !== "") frame.stock = Number.parseInt(stock.value, 10);
          conn.send(frame);
        },
      },
      "¥",
      price,
      " stock ",
      stock,
      el("button", { type: "submit", class: "btn" }, "Save"),
    );
  }

  function replyLine(ev) {
    const mine = me() && (ev.askers || []).includes(me().uid);
    const badge = ev.from === "assistant" ? "Assistant" : "Host";
    const li = el(
      "li",
      { class: `reply from-${ev.from}${mine ? " to-me" : ""}`, dataset: { seq: ev.seq, uid: ev.uid } },
      el("span", { class: `role ${ev.from}` }, badge),
      el("span", { class: "who", style: `color:${userColor(ev.uid)}` }, ev.name),
      el("span", { class: "text" }, ev.text),
    );
    appendCapped(list, li, 300);
  }

  conn.on("snapshot", (snap) => {
    shown.clear();
    for (const pin of snap.pins || []) shown.set(pin.id, pin);
    render();
  });
  conn.on("events", (events) => {
    let changed = false;
    for (const ev of events) {
      if (ev.t === "pin") {
        shown.delete(ev.id);
        shown.set(ev.id, ev);
        while (shown.size > 3) shown.delete(shown.keys().next().value);
        changed = true;
      } else if (ev.t === "unpin") {
        changed = shown.delete(ev.id) || changed;
      } else if (ev.t === "product") {
        // the pinned card takes the new figures in place, as the server's view does
        const pin = shown.get(`product:${ev.id}`);
        if (pin?.product) {
          const edited = Object.fromEntries(["price", "stock"].filter((k) => k in ev).map((k) => [k, ev[k]]));
          shown.set(pin.id, { ...pin, product: { ...pin.product, ...edited } });
          changed = true;
        }
      } else if (ev.t === "reply") {
        replyLine(ev);
      }
    }
    if (changed) render();
  });
  render();
  return { pins, shown, replyLine };
}

export function pinForms(conn, root) {
  // The host's own pins: a message, or a product card typed in by hand.
  const text = el("input", { class: "field", id: "pin-text", placeholder: "Pin a message…", "aria-label": "Message to pin" });
  const msg = el("form", { class: "controls", id: "pin-form", autocomplete: "off", onsubmit: (e) => {
    e.preventDefault();
    if (text.value.trim() && conn.send({ t: "pin", text: text.value.trim() })) text.value = "";
  } }, text, el("button", { type: "submit", class: "btn" }, "Pin"));
  const pid = el("input", { class: "field short", id: "pin-pid", placeholder: "product id", "aria-label": "Product id" });
  const pname = el("input", { class: "field", id: "pin-pname", placeholder: "name", "aria-label": "Product name" });
  const pprice = el("input", { class: "field short", id: "pin-pprice", type: "number", min: "0", placeholder: "¥", "aria-label": "Price" });
  const product = el("form", { class: "controls", id: "pin-product-form", autocomplete: "off", onsubmit: (e) => {
    e.preventDefault();
    if (!pid.value.trim() || !pname.value.trim()) return;
    const card = { id: pid.value.trim(), name: pname.value.trim() };
    if (pprice.value !== "") card.price = Number(pprice.value);
    conn.send({ t: "pin", product: card });
  } }, pid, pname, pprice, el("button", { type: "submit", class: "btn" }, "Pin product"));
  const eid = el("input", { class: "field short", id: "edit-pid", placeholder: "product id", "aria-label": "Product id to edit" });
  const eprice = el("input", { class: "field short", id: "edit-price", type: "number", min: "0", placeholder: "new ¥", "aria-label": "New price" });
  const estock = el("input", { class: "field short", id: "edit-stock", type: "number", min: "0", placeholder: "stock", "aria-label": "New stock" });
  const edit = el("form", { class: "controls", id: "product-edit-form", autocomplete: "off", onsubmit: (e) => {
    e.preventDefault();
    const frame = { t: "product", id: eid.value.trim() };
    if (eprice.value !== "") frame.price = Number(eprice.value);
    if (estock.value !== "") frame.stock = Number.parseInt(estock.value, 10);
    if (frame.id && (frame.price !== undefined || frame.stock !== undefined)) conn.send(frame);
  } }, eid, eprice, estock, el("button", { type: "submit", class: "btn" }, "Update product"));
  root.append(msg, product, edit);
}

