"""Where the node's ICE host candidates live: a UDP port range, and an advertised public address.

Why: a node in a cloud VM sits behind 1:1 NAT (its public address is not on any interface)
and behind a firewall that opens a fixed UDP range. aioice binds each host candidate to port
0 and advertises the interface address; this module (pin-sensitive like
:mod:`server.media.forward`, written against aioice 0.13.0) makes it pick a port in the range,
and rewrites host candidates in the SDP the node sends so clients reach the public address
(the NAT forwards to the same port).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aioice.ice


def parse_range(raw: str) -> tuple[int, int] | None:
    if not raw:
        return None
    low, _, high = raw.partition("-")
    return int(low), int(high)


class _RangeLoop:
    """The running loop, except that a UDP bind to port 0 takes a free port in the range."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: tuple[int, int]) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Any, local_addr: Any = None, **kw: Any) -> Any:
        if local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(factory, local_addr=local_addr, **kw)
        low, high = self._ports
        candidates = list(range(low, high + 1))
        random.shuffle(candidates)
        for port in candidates:
            try:
                return await self._loop.create_datagram_endpoint(
                    factory, local_addr=(local_addr[0], port), **kw
                )
            except OSError:
                continue
        raise OSError(f"no free UDP port in {low}-{high}")


class _AsyncioInRange:
    """Stands in for the `asyncio` module inside aioice.ice only."""

    def __init__(self, ports: tuple[int, int]) -> None:
        self.ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> Any:
        return _RangeLoop(asyncio.get_running_loop(), self.ports)


def use_udp_port_range(ports: tuple[int, int] | None) -> None:
    """Process-wide: host candidates bind within `ports` (None: any port, aioice's default)."""
    aioice.ice.asyncio = asyncio if ports is None else _AsyncioInRange(ports)  # type: ignore[attr-defined]


def advertise_address(sdp: str, public_ip: str) -> str:
    """Host candidates (and the c= lines) of an SDP we send, with `public_ip` as their address."""
    if not public_ip:
        return sdp
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) > 7 and fields[6] == "typ" and fields[7] == "host":
                fields[4] = public_ip
                line = " ".join(fields)
        elif line.startswith("c=IN IP4 ") and ":" not in public_ip:
            line = f"c=IN IP4 {public_ip}"
        lines.append(line)
    return "\r\n".join(lines)
