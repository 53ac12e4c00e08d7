// ES-module facade over the vendored UMD build of @msgpack/msgpack.
// vendor/msgpack.min.js is loaded by a classic <script> (no build step), which runs
// before any module script, and defines globalThis.MessagePack.
const MP = globalThis.MessagePack;
if (!MP) throw new Error("vendor/msgpack.min.js must be loaded before the page modules");

export const encode = (obj) => MP.encode(obj);
export const decode = (data) => MP.decode(data instanceof Uint8Array ? data : new Uint8Array(data));
