"""Operator HTTP API on the aiohttp app: room stats, room admin, moderation across rooms, health."""
