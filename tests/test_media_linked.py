"""Cross-room video: a viewer of room A receives room B's host while the rooms are linked, and
not after (real aiortc peers on 127.0.0.1, the pull a real WHEP session; server/media/linked.py)."""

from __future__ import annotations

from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from server.app import App
from server.media.linked import linked_id, other_room
from tests.test_media_signaling import (  # noqa: F401 (fixtures)
    HEIGHT,
    WIDTH,
    Conn,
    config,
    decoded,
    ended,
    is_live,
    loopback,
    member,
)


def test_other_room_of_a_link_event() -> None:
    assert other_room({"rooms": ["ra", "rb"], "on": True}, "ra") == "rb"
    assert other_room({"rooms": ["ra", "rb"]}, "rc") is None
    assert other_room(None, "ra") is None and other_room({"rooms": "ra"}, "ra") is None
    assert linked_id("hb", "rb") == "hb@rb"


def track_of(viewer: Conn, offer: dict[str, Any], publisher: str, kind: str) -> MediaStreamTrack:
    mids = [mid for mid, t in offer["tracks"].items() if (t["publisher_id"], t["kind"]) == (publisher, kind)]
    assert len(mids) == 1, offer["tracks"]
    for transceiver in viewer.pcs[-1].getTransceivers():
        if transceiver.mid == mids[0]:
            return transceiver.receiver.track
    raise AssertionError(f"no transceiver for mid {mids[0]}")


async def link_ack(host: Conn, **frame: Any) -> None:
    await host.send(t="link", **frame)
    ack = await host.next("link_ack")
    assert ack["action"] == frame["action"]


async def test_viewer_sees_the_linked_host_while_linked_and_not_after(app: App, member) -> None:  # noqa: F811
    ha = await member("ha", role="host", room="ra")
    hb = await member("hb", role="host", room="rb")
    await ha.publish(audio=False)
    await hb.publish(audio=False)
    va = await member("va", room="ra")
    await va.send(t="subscribe", cid=1)
    first = await va.accept_offer()
    assert "linked" not in first and {t["publisher_id"] for t in first["tracks"].values()} == {"ha"}
    await decoded(track_of(va, first, "ha", "video"))

    await link_ack(ha, action="invite", room="rb")
    await link_ack(hb, action="accept", room="ra")
    await va.event(lambda e: e["t"] == "link" and e["on"] is True)
    offer = await va.accept_offer()  # renegotiated: room B's host beside ours
    pid = linked_id("hb", "rb")
    assert offer["linked"] == {pid: "rb"}
    assert {t["publisher_id"] for t in offer["tracks"].values()} == {"ha", pid}
    frame = await decoded(track_of(va, offer, pid, "video"))
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    assert app.media.rooms["ra"].publications[pid].ready
    assert not any(e["t"] == "live" and e["uid"] == pid for e in va.events)  # not room A's own live

    await link_ack(hb, action="end")
    await va.event(lambda e: e["t"] == "link" and e["on"] is False)
    await ended(track_of(va, offer, pid, "video"))  # no frame of room B's host after the link
    assert pid not in app.media.rooms["ra"].publications and not app.media.site.linked.get("ra")
    await decoded(track_of(va, offer, "ha", "video"))  # our own host plays on
