"""Slow mode (one danmaku per N seconds per viewer, set by a host) and the hosts' viewer list.

Real server and WebSockets. Slow mode is set to an hour so that no test depends on timing:
the second danmaku within it is refused whatever the machine's speed.
"""

from __future__ import annotations

from server.wire.protocol import ErrorCode


def is_error(frame: dict) -> bool:
    return frame["t"] == "error"


async def test_slow_mode_set_by_host_refuses_second_danmaku(join) -> None:
    host, viewer = await join("hana", role="host"), await join("vee")
    await host.send(t="slow_mode", seconds=3600, cid="s1")
    (event,) = await viewer.events(lambda e: e["t"] == "slow_mode", 1)
    assert event["seconds"] == 3600 and event["by"] == "hana"
    late = await join("late")
    assert late.snapshot["slow_mode"] == 3600  # joiners learn it from the snapshot

    await viewer.send(t="danmaku", text="first", cid="d1")
    (first,) = await viewer.events(lambda e: e["t"] == "danmaku", 1)
    assert first["text"] == "first"
    await viewer.send(t="danmaku", text="second", cid="d2")
    error = await viewer.recv_until(is_error)
    assert error["code"] == ErrorCode.SLOW_MODE and error["ref"] == "d2"
    assert 3500 < error["retry_after"] <= 3600

    for text in ("host one", "host two"):  # hosts are exempt
        await host.send(t="danmaku", text=text)
    got = await late.events(lambda e: e["t"] == "danmaku" and e["uid"] == "hana", 2)
    assert [e["text"] for e in got] == ["host one", "host two"]

    await host.send(t="slow_mode", seconds=0)
    await viewer.events(lambda e: e["t"] == "slow_mode" and e["seconds"] == 0, 1)
    await viewer.send(t="danmaku", text="free again", cid="d3")
    (again,) = await viewer.events(lambda e: e["t"] == "danmaku" and e["uid"] == "vee", 1)
    assert again["text"] == "free again"


async def test_slow_mode_and_viewer_list_are_for_hosts_only(join) -> None:
    viewer = await join("vee")
    await viewer.send(t="slow_mode", seconds=5, cid="s")
    error = await viewer.recv_until(is_error)
    assert error["code"] == ErrorCode.FORBIDDEN and error["ref"] == "s"
    await viewer.send(t="viewers", cid="v")
    error = await viewer.recv_until(is_error)
    assert error["code"] == ErrorCode.FORBIDDEN and error["ref"] == "v"
    await viewer.send(t="slow_mode", seconds=99999, cid="big")
    error = await viewer.recv_until(is_error)
    assert error["code"] == ErrorCode.BAD_FIELD


async def test_viewer_list(join) -> None:
    host = await join("hana", role="host")
    await join("vee")
    await join("vee")  # a second connection of the same user is one entry
    await join("zed", room="other")
    await host.send(t="viewers", cid="v1")
    answer = await host.recv_until(lambda f: f["t"] == "viewers")
    assert answer["cid"] == "v1" and answer["count"] == 2
    assert [(u["uid"], u["role"]) for u in answer["users"]] == [("hana", "host"), ("vee", "viewer")]
