"""One connection's direct messages: every stored DM once, in id order, backlog first.

A user may hold several connections on one node (a phone that switched networks keeps its
dead socket until the ping timeout). Each connection gets the user's backlog when it opens,
wherever the user's other connections are, and live DMs that arrive while the backlog is read
wait behind it. A connection may only acknowledge (`dm_seen`) DMs it was actually sent, so a
new connection can never drop DMs that went only to a dead one. No I/O here.
"""

from __future__ import annotations

import msgpack

from server.broker.base import dm_id_key


class DmCursor:
    __slots__ = ("last", "pending")

    def __init__(self) -> None:
        self.last: tuple[int, int] | None = None  # newest stored DM sent on this connection
        self.pending: list[bytes] | None = []  # live frames held while the backlog is read

    def offer(self, frame: bytes) -> bytes | None:
        """A live frame: the frame to write now, or None (held, or already sent)."""
        if self.pending is not None:
            self.pending.append(frame)
            return None
        return self._admit(frame)

    def open(self, backlog: list[bytes]) -> list[bytes]:
        """The backlog has been read: the frames to write, backlog first, then the held ones."""
        held, self.pending = self.pending or [], None
        return [frame for frame in (*backlog, *held) if self._admit(frame) is not None]

    def ackable(self, dm_id: str) -> str | None:
        """The id `dm_seen` may drop up to: at most the newest DM this connection was sent."""
        if self.last is None:
            return None
        asked = dm_id_key(dm_id)
        return dm_id if asked <= self.last else f"{self.last[0]}-{self.last[1]}"

    def _admit(self, frame: bytes) -> bytes | None:
        dm_id = _stored_id(frame)
        if dm_id is None:  # a live-only frame (an invitation): no id, always written
            return frame
        key = dm_id_key(dm_id)
        if self.last is not None and key <= self.last:
            return None
        self.last = key
        return frame


def _stored_id(frame: bytes) -> str | None:
    """The id of a stored DM frame (`t` = `dm` with an `id`), else None. DMs are rare: decode."""
    try:
        obj = msgpack.unpackb(frame, raw=False)
    except (ValueError, msgpack.ExtraData):
        return None
    if isinstance(obj, dict) and obj.get("t") == "dm" and isinstance(obj.get("id"), str):
        return obj["id"]
    return None
