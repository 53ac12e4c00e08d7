// Error codes (docs/PROTOCOL.md) mapped to text a viewer can act on.

const TEXT = {
  4000: "The server could not read that message.",
  4001: "The server does not understand that action.",
  4002: "That message was malformed.",
  4003: "Still joining the room, try again in a moment.",
  4005: "This page is too old for the server. Reload it.",
  4100: "A token is needed to join this room.",
  4101: "Your token is not valid for this server.",
  4102: "Your session expired.",
  4103: "Your token is for another room.",
  4104: "Joining took too long.",
  4200: "You are not allowed to do that.",
  4201: "Type something first.",
  4202: "That message is too long.",
  4203: "That user cannot receive messages.",
  4300: "Slow down: you are sending too fast.",
  4301: "Too many connections from you right now.",
  4302: "The room is very busy; joining again shortly.",
  4303: "Your message was blocked by the room's filter.",
  4304: "You are messaging too many people; wait a little.",
  4305: "You already said that.",
  4306: "This join link was already used; getting a new one.",
  4307: "This connection was closed for abuse.",
  4308: "Too many joins in a row; waiting a moment.",
  4400: "Your connection fell behind; reconnecting.",
  4401: "You are muted and cannot chat right now.",
  4402: "You were removed from this room.",
  4403: "You are banned from this room.",
  4404: "That moderation action does not apply to this user or message.",
  4405: "This user does not accept your messages.",
  4600: "Video is not available right now.",
  4604: "Only the host and invited co-hosts can go live.",
  4605: "You are already live.",
  4607: "The host is not live yet.",
  4610: "Too many people are already live in this room.",
  4611: "Video is full on this server; chat still works.",
  4500: "The server is restarting; reconnecting.",
  4501: "The server is having trouble right now; try again shortly.",
  4999: "Something went wrong on the server.",
};

// Words in the server's message or code name that identify the abuse module's refusals,
// whatever numbers it settles on (43xx: limits, 44xx: moderation).
const KEYWORDS = [
  [/ban/i, "You are banned from this room."],
  [/kick/i, "You were removed from this room."],
  [/mute/i, "You are muted and cannot chat right now."],
  [/filter|blocked|not allowed word|spam/i, "Your message was blocked by the room's filter."],
  [/duplicate|repeat/i, "You already sent that."],
  [/rate|too (fast|many)|slow down/i, "Slow down: you are sending too fast."],
];

function fmtWait(seconds) {
  if (seconds < 10) return `${seconds.toFixed(1).replace(/\.0$/, "")} s`;
  if (seconds < 120) return `${Math.ceil(seconds)} s`;
  if (seconds < 7200) return `${Math.ceil(seconds / 60)} min`;
  return `${Math.ceil(seconds / 3600)} h`;
}

export function friendlyError(frame, limits = {}) {
  const code = Number(frame.code);
  let text = TEXT[code];
  if (code === 4202) {
    const max = frame.kind === "dm" ? limits.dm_len : limits.danmaku_len;
    if (max) text = `That message is too long (at most ${max} characters).`;
  }
  if (!text) {
    const msg = String(frame.msg || frame.name || "");
    const hit = KEYWORDS.find(([re]) => re.test(msg));
    text = hit ? hit[1] : msg || `Error ${code}`;
  }
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
