"""The room media claim (in-process variant; the Redis one runs in tests/test_media_failover.py)."""

from __future__ import annotations

from server.media.claim import MediaClaims, claim_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_claim_is_exclusive_renewable_and_expires() -> None:
    clock = Clock()
    claims = MediaClaims(clock=clock)
    assert await claims.claim("r1", "a", ttl=3) == "a"
    assert await claims.claim("r1", "b", ttl=3) == "a"  # held: b is told who holds it
    clock.now += 2
    assert await claims.claim("r1", "a", ttl=3) == "a"  # renewal pushes the deadline
    clock.now += 2
    assert await claims.holders(["r1", "r2"]) == {"r1": "a", "r2": None}
    clock.now += 1.5  # a stopped renewing 3.5 s ago: expired
    assert await claims.holders(["r1"]) == {"r1": None}
    assert await claims.claim("r1", "b", ttl=3) == "b"
    await claims.release("r1", "a")  # not a's any more: nothing happens
    assert await claims.holders(["r1"]) == {"r1": "b"}
    await claims.release("r1", "b")
    assert await claims.holders(["r1"]) == {"r1": None}


def test_claim_key_shares_the_room_hash_tag() -> None:
    assert claim_key("r1") == "lr:{r:r1}:media"
