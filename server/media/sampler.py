"""Media stats for /metrics: publisher bitrate, fps and loss, viewer bitrate, RTT and loss.

Why a module of its own: sampling turns the core's counters and aiortc's RTCP stats into
rates on a timer of its own; it only reads what the site holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from server import metrics
from server.media.site import MediaSite

log = logging.getLogger("liveroom.media")


@dataclass(eq=False)
class _Sample:
    """Counters at the previous stats sample, to turn totals into rates."""

    at: float
    values: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


class MediaStats:
    """Samples the site's rooms every `interval` seconds."""

    def __init__(self, site: MediaSite, interval: float, prune: Callable[[], None]) -> None:
        self.site = site
        self.interval = interval
        self.prune = prune  # sessions whose connection the core closed go before a sample
        self.last = _Sample(at=time.monotonic())

    async def forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sample()
            except Exception:
                log.exception("media: stats sample failed")

    async def sample(self) -> None:
        """One stats sample: rates from the core's counters, loss and RTT from aiortc's RTCP stats."""
        now = time.monotonic()
        elapsed = max(now - self.last.at, 1e-3)
        previous, current = self.last.values, {}
        self.prune()
        for room in list(self.site.rooms.values()):
            for pub in list(room.publications.values()):
                for kind, fanout in pub.fanouts.items():
                    key = (f"p:{room.room_id}:{pub.publisher_id}", kind)
                    current[key] = (fanout.stats.bytes_in, fanout.stats.frames_in)
                    drops_key = (f"d:{room.room_id}:{pub.publisher_id}", kind)
                    current[drops_key] = (fanout.stats.viewer_drops, 0)
                    new_drops = fanout.stats.viewer_drops - previous.get(drops_key, (0, 0))[0]
                    if new_drops > 0:
                        metrics.media_viewer_drops.inc(new_drops)
                    if key in previous:
                        b0, f0 = previous[key]
                        metrics.media_publisher_bitrate.labels(kind=kind).observe(
                            8 * (fanout.stats.bytes_in - b0) / elapsed
                        )
                        if kind == "video":
                            metrics.media_publisher_fps.observe((fanout.stats.frames_in - f0) / elapsed)
                for kind, transceiver in pub.transceivers.items():
                    for stat in (await transceiver.receiver.getStats()).values():
                        if getattr(stat, "type", "") == "inbound-rtp":
                            key = (f"l:{room.room_id}:{pub.publisher_id}", kind)
                            current[key] = (stat.packetsLost, stat.packetsReceived)
                            if key in previous:
                                lost = stat.packetsLost - previous[key][0]
                                got = stat.packetsReceived - previous[key][1]
                                if lost + got > 0:
                                    metrics.media_publisher_loss.observe(max(0, lost) / (lost + got))
            for sub in list(room.subscriptions.values()):
                for t in sub.tracks:
                    if not t.active:
                        continue
                    key = (f"v:{room.room_id}:{sub.viewer_id}:{t.publisher_id}", t.kind)
                    current[key] = (t.track.stats.bytes_forwarded, 0)
                    if key in previous:
                        rate = 8 * (t.track.stats.bytes_forwarded - previous[key][0]) / elapsed
                        metrics.media_viewer_bitrate.labels(kind=t.kind).observe(rate)
                    for stat in (await t.transceiver.sender.getStats()).values():
                        # before the viewer's first receiver report aiortc has no RTT yet (None)
                        if getattr(stat, "type", "") == "remote-inbound-rtp":
                            if stat.roundTripTime is not None:
                                metrics.media_viewer_rtt.observe(stat.roundTripTime)
                            if stat.fractionLost is not None:
                                metrics.media_viewer_loss.observe(stat.fractionLost / 256)
        self.last = _Sample(at=now, values=current)
        self.site.update_gauges()
