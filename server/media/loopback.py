"""Make aioice offer the loopback address as its only host candidate.

aioice 0.13 ``get_host_addresses()`` deliberately leaves out 127.0.0.1, so two peers on
one machine without other interfaces (or a server that must only bind to loopback)
never find a candidate pair. ``Connection.gather_candidates`` looks the function up as a
module global of ``aioice.ice`` at call time, so replacing it there is enough: nothing
else in aioice or aiortc changes, and UDP sockets are then bound to 127.0.0.1 only.
Pin-sensitive like :mod:`server.media.forward` (written against aioice 0.13.0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aioice.ice

_original_get_host_addresses = aioice.ice.get_host_addresses


def loopback_host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    """Drop-in for ``aioice.ice.get_host_addresses`` that returns only 127.0.0.1."""
    return ["127.0.0.1"] if use_ipv4 else []


def use_loopback_candidates() -> None:
    """Process-wide: gather host candidates on 127.0.0.1 only (dev server, tests)."""
    aioice.ice.get_host_addresses = loopback_host_addresses


def restore_host_candidates() -> None:
    """Undo :func:`use_loopback_candidates`."""
    aioice.ice.get_host_addresses = _original_get_host_addresses


@contextlib.contextmanager
def loopback_candidates() -> Iterator[None]:
    """Context manager form of :func:`use_loopback_candidates`, restoring on exit."""
    previous = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = loopback_host_addresses
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = previous
