"""What the server's components need from one client connection, without importing the I/O.

`server.edge.client.Client` is the implementation; the hub, the node, the guard, moderation and
the media gateway only see this interface, so none of them imports the connection code
(and the connection code may import all of them without a cycle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from server.wire.auth import Identity
    from server.wire.protocol import ProtocolError


class Peer(Protocol):
    """One client connection as seen from inside the node."""

    remote_ip: str  # the peer's address, set when it connected ("?" when unknown)
    # what the edge's fan-out Writer writes frames to (the socket): opaque outside server/edge/
    sink: Any
    identity: Identity | None
    room_id: str | None
    # the guard's per-connection state (server.abuse.connstate.ConnState), set by Guard.connect;
    # typed loosely so delivery does not import the policy layer above it
    abuse: Any
    dropped: int  # consecutive batches skipped because the socket was full

    def send(self, frame: bytes) -> None:
        """Queue a frame without waiting."""

    def buffered(self) -> int:
        """Bytes waiting in the socket's write buffer."""

    def reject(self, error: ProtocolError) -> None:
        """Refuse something: error frame, and a close when the code is fatal."""

    @property
    def closing(self) -> bool:
        """close() was called: nothing more is fanned out to it."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (once)."""

    async def close_and_wait(self, code: int, reason: str) -> None:
        """Close and wait for the closing handshake (a peer that stops reading never ends it)."""

    def abort(self) -> None:
        """Cut the connection at once, without a closing handshake."""
