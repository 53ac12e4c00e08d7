"""liveroom: a real-time live-room backend (danmaku, likes, DMs, presence, WebRTC relay)."""

__version__ = "0.1.0"
