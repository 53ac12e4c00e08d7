"""Webhooks: room, host, viewer and moderation events POSTed (signed) to an operator's URL."""
