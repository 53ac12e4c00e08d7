"""The Python demo viewer follows the stream identity rules of docs/PROTOCOL.md (`batch`)."""

from __future__ import annotations

import argparse

from client_demo.viewer import ViewerBot


def _bot() -> ViewerBot:
    bot = ViewerBot(argparse.Namespace(user="v", count=0))
    bot.out = lambda text: None  # type: ignore[method-assign]
    bot.epoch, bot.seq = "e1", 5
    return bot


def _batch(epoch: str, first: int) -> dict:
    return {
        "t": "batch",
        "room": "r",
        "epoch": epoch,
        "events": [{"t": "likes", "seq": first, "total": 1, "delta": 1}],
    }


def test_a_new_epoch_that_continues_the_stream_is_adopted() -> None:
    bot = _bot()
    assert bot.frame(_batch("local-1", 6)) is None
    assert (bot.epoch, bot.seq) == ("local-1", 6)


def test_a_new_epoch_that_does_not_continue_asks_for_a_resync() -> None:
    bot = _bot()
    assert bot.frame(_batch("e2", 1)) == "resync"
    assert (bot.epoch, bot.seq) == ("e1", 5)  # the resume goes out with the old position
