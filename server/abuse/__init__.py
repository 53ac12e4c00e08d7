"""Abuse resistance: rate limits, admission control, content filtering, moderation, token hardening.

`server.abuse.guard.Guard` is the entry point the node and the connection code
call; each concern lives in its own module (ratelimit, admission, content,
moderation, tokens). See docs/ARCHITECTURE.md ("Abuse checks") for the order
in which checks run and docs/PROTOCOL.md for the error codes (43xx, 44xx).
"""
