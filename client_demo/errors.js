// What the pages say for each of the server's error codes (server/wire/protocol.py ErrorCode,
// docs/PROTOCOL.md). One table: every code with its ErrorCode name, the text a person can act
// on, and, where the same code means something else for a DM, the DM's text.
// tests/test_errors_table.py checks this table against ErrorCode (same codes, same names).

export const ERRORS = {
  4000: ["BAD_FRAME", "The server could not read that message."],
  4001: ["UNKNOWN_TYPE", "The server does not understand that action."],
  4002: ["BAD_FIELD", "That message was malformed."],
  4003: ["NOT_JOINED", "Still joining the room, try again in a moment."],
  4004: ["ALREADY_JOINED", "This connection already joined a room."],
  4005: ["UNSUPPORTED_VERSION", "This page is too old for the server. Reload it."],
  4006: ["NOT_FOUND", "That address does not exist on this server."],
  4007: ["METHOD_NOT_ALLOWED", "That request method is not allowed here."],
  4008: ["BODY_TOO_LARGE", "That request was too large."],
  4009: ["BAD_CONTENT_TYPE", "That request had the wrong content type."],
  4010: ["BAD_REQUEST", "That request was malformed."],
  4011: ["BODY_TIMEOUT", "That request took too long to arrive."],
  4100: ["AUTH_REQUIRED", "A token is needed to join this room."],
  4101: ["TOKEN_INVALID", "Your token is not valid for this server."],
  4102: ["TOKEN_EXPIRED", "Your session expired."],
  4103: ["WRONG_ROOM", "Your token is for another room."],
  4104: ["AUTH_TIMEOUT", "Joining took too long."],
  4200: ["FORBIDDEN", "You are not allowed to do that."],
  4201: ["TEXT_EMPTY", "Type something first."],
  4202: ["TEXT_TOO_LONG", "That message is too long."],
  4203: ["BAD_RECIPIENT", "That user cannot receive messages."],
  4204: ["ORIGIN_FORBIDDEN", "This page's origin may not connect to the server."],
  4205: ["HOST_FORBIDDEN", "This server does not answer under that host name."],
  4300: ["RATE_LIMITED", "Slow down: you are sending too fast.", { dm: "You are messaging too fast; wait a little." }],
  4301: ["TOO_MANY_CONNECTIONS", "Too many connections from you right now."],
  4302: ["NODE_BUSY", "The room is very busy; joining again shortly."],
  4303: ["CONTENT_REJECTED", "Your message was blocked by the room's filter."],
  4304: ["CONTACT_SPAM", "Links, phone numbers and contact ids are not allowed in the chat."],
  4305: ["REPEATED", "You already said that."],
  4306: ["TOKEN_REPLAYED", "This join link was already used; getting a new one."],
  4307: ["ABUSIVE", "This connection was closed for abuse."],
  4308: ["JOIN_THROTTLED", "Too many joins in a row; waiting a moment."],
  4309: ["SLOW_MODE", "Slow mode is on: one message every few seconds."],
  4400: ["SLOW_CONSUMER", "Your connection fell behind; reconnecting."],
  4401: ["MUTED", "You are muted and cannot chat right now."],
  4402: ["KICKED", "You were removed from this room."],
  4403: ["BANNED", "You are banned from this room."],
  4404: ["MOD_TARGET", "That moderation action does not apply to this user or message."],
  4405: ["DM_BLOCKED", "This user does not accept your messages."],
  4406: ["PIN_TARGET", "That item is no longer pinned."],
  4410: ["ROOM_CLOSED", "This room was closed by the operators."],
  4500: ["SHUTTING_DOWN", "The server is restarting; reconnecting."],
  4501: ["BROKER_UNAVAILABLE", "The server is having trouble right now; try again shortly."],
  4502: ["DM_STORE_FULL", "Messages are piling up on the server; try again shortly."],
  4600: ["MEDIA_UNAVAILABLE", "Video is not available right now."],
  4601: ["MEDIA_BAD_SDP", "The browser's video offer was refused."],
  4602: ["MEDIA_UNSUPPORTED", "This browser's video format is not supported here."],
  4603: ["MEDIA_TOO_MANY_TRACKS", "Only one camera and one microphone can go live."],
  4604: ["MEDIA_FORBIDDEN", "Only the host and invited co-hosts can go live."],
  4605: ["MEDIA_ALREADY_PUBLISHING", "You are already live."],
  4606: ["MEDIA_BAD_STATE", "Video is still being set up; try again."],
  4607: ["MEDIA_NO_MEDIA", "The host is not live yet."],
  4608: ["MEDIA_CODEC_MISMATCH", "This room streams another video format than your encoder sends."],
  4609: ["MEDIA_VIEWER_CODEC", "Your browser cannot play this room's video format."],
  4610: ["MEDIA_TOO_MANY_PUBLISHERS", "Too many people are already live in this room."],
  4611: ["MEDIA_TOO_MANY_VIEWERS", "Video is full on this server; chat still works."],
  4612: ["MEDIA_TOO_MANY_SESSIONS", "You have too many video sessions open."],
  4620: ["MEDIA_WRONG_NODE", "Video for this room is on another server; reconnecting."],
  4700: ["GIFT_UNKNOWN", "That gift is not available in this room."],
  4701: ["GIFT_REFUSED", "Your gift was not accepted (check your balance)."],
  4702: ["GIFT_AUTH_UNAVAILABLE", "Gifts cannot be confirmed right now; try again in a moment."],
  4710: ["FOLLOW_TARGET", "You cannot follow or reserve that."],
  4720: ["LINK_TARGET", "A room cannot be linked to itself."],
  4721: ["LINK_BUSY", "One of the rooms is already linked or has an invitation pending."],
  4722: ["LINK_STATE", "There is no such invitation or link."],
  4999: ["INTERNAL", "Something went wrong on the server."],
};

function fmtWait(seconds) {
  if (seconds < 10) return `${seconds.toFixed(1).replace(/\.0$/, "")} s`;
  if (seconds < 120) return `${Math.ceil(seconds)} s`;
  if (seconds < 7200) return `${Math.ceil(seconds / 60)} min`;
  return `${Math.ceil(seconds / 3600)} h`;
}

/** Text for an error frame; `frame.kind` ("dm") picks a DM's wording, `limits` the snapshot's. */
export function friendlyError(frame, limits = {}) {
  const code = Number(frame.code);
  const entry = ERRORS[code];
  let text = entry ? (entry[2] && entry[2][frame.kind]) || entry[1] : frame.msg || `Error ${code}`;
  if (code === 4202) {
    const max = frame.kind === "dm" ? limits.dm_len : limits.danmaku_len;
    if (max) text = `That message is too long (at most ${max} characters).`;
  }
  if (code === 4309 && limits.slow_mode) text = `Slow mode is on: one message every ${limits.slow_mode} s.`;
  const retry = Number(frame.retry_after);
  if (retry > 0) text += ` Try again in ${fmtWait(retry)}.`;
  return text;
}

// What an error means for the connection as a whole.
export function isBan(frame) {
  return Number(frame.code) === 4403;
}

export function isKick(frame) {
  return Number(frame.code) === 4402;
}
