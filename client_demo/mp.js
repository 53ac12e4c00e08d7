// ES-module facade over the vendored UMD build of @msgpack/msgpack.
// vendor/msgpack.min.js is a classic script (no build step) that defines globalThis.MessagePack;
// the pages load it before their modules run (index.html inserts both in order).
function mp() {
  const MP = globalThis.MessagePack;
  if (!MP) throw new Error("vendor/msgpack.min.js must be loaded before the page modules");
  return MP;
}

export const encode = (obj) => mp().encode(obj);
export const decode = (data) => mp().decode(data instanceof Uint8Array ? data : new Uint8Array(data));
