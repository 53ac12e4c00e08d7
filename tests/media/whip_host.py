"""A WHIP publisher with one video codec (aiortc), in its own process, for the browser tests.

    python -m tests.media.whip_host <media base URL> <room> <host token> [H264|VP8] [seconds]

What an H.264-only encoder (OBS's WHIP output, a hardware box) does: POST /whip/<room> with an
offer that has only that codec (plus Opus), then stream tests.media.pattern's moving bar. Prints
`live` once its peer connection is connected (the event a test waits on), or `refused <status>
<body>` and exits 1; ends after `seconds` or on SIGTERM. Loopback candidates only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from server.deadline import within
from server.media import use_loopback_candidates
from tests.media.pattern import PatternTrack

WIDTH, HEIGHT = 320, 240


async def publish(base: str, room: str, token: str, codec: str, seconds: float) -> int:
    use_loopback_candidates()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver(PatternTrack(WIDTH, HEIGHT), direction="sendonly")
    caps = RTCRtpSender.getCapabilities("video").codecs
    video.setCodecPreferences([c for c in caps if c.name.upper() in (codec.upper(), "RTX")])
    pc.addTrack(AudioStreamTrack())
    connected, stop = asyncio.Event(), asyncio.Event()

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState == "connected":
            connected.set()
        elif pc.connectionState in ("failed", "closed"):
            stop.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/whip/{room}", data=pc.localDescription.sdp, headers=headers
            ) as resp:
                if resp.status != 201:
                    print(f"refused {resp.status} {await resp.text()}", flush=True)
                    return 1
                answer, location = await resp.text(), resp.headers["Location"]
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await within(connected.wait(), 60)
            print("live", flush=True)
            with contextlib.suppress(TimeoutError):
                await within(stop.wait(), seconds)
            with contextlib.suppress(aiohttp.ClientError):
                async with http.delete(f"{base}{location}", headers=headers):
                    pass  # the session ends: the host goes off like an encoder that stops
    finally:
        await pc.close()
    return 0


if __name__ == "__main__":
    base, room, token = sys.argv[1:4]
    codec = sys.argv[4] if len(sys.argv) > 4 else "H264"
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
    sys.exit(asyncio.run(publish(base, room, token, codec, seconds)))
