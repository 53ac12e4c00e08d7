"""Errors the media layer reports to signaling, each with a stable machine-readable code."""

from __future__ import annotations


class MediaError(Exception):
    """A media request was refused; ``code`` is meant for protocol error replies.

    Codes: ``too_many_publishers``, ``too_many_viewers``, ``already_publishing``,
    ``already_subscribed``, ``unknown_publisher``, ``unknown_viewer``, ``bad_sdp``,
    ``no_media``, ``too_many_tracks``, ``codec_unsupported``, ``codec_mismatch``,
    ``viewer_codec``, ``room_closed``,
    ``bad_state``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class MediaLimitError(MediaError):
    """A configured room limit (publishers, viewers) would be exceeded."""
