"""Python viewer bot: joins a room, prints its danmaku, likes and presence, optionally chats.

    python -m client_demo.viewer --room demo --server ws://127.0.0.1:8080 [--say "hi" --every 5]

Reconnects with backoff and resumes from the last sequence it saw (join `resume`), so a
server restart costs it nothing it could have recovered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import secrets
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from client_demo.common import DEFAULT_SERVER, Backoff, get_token, pack, unpack, ws_url

NO_RETRY = {4005, 4100, 4101, 4103, 4307, 4402, 4403}


class Fatal(Exception):
    pass


class ViewerBot:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.epoch: str | None = None
        self.seq = 0
        self.me = args.user
        self.seen = 0  # danmaku printed
        self.sent = 0
        self.tag = secrets.token_hex(4)  # cids are remembered per user for 10 min: unique per run
        self.unconfirmed: dict[str, str] = {}  # cid -> text of own danmaku not seen in a batch yet
        self.done = asyncio.Event()

    def out(self, text: str) -> None:
        print(time.strftime("%H:%M:%S ") + text, flush=True)

    async def run(self) -> int:
        backoff = Backoff()
        while not self.done.is_set():
            try:
                await self.session(backoff)
                why = "connection closed"
            except Fatal as exc:
                self.out(f"giving up: {exc}")
                return 2
            except (OSError, ConnectionError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if self.done.is_set():
                break
            delay = backoff.next()
            self.out(f"{why}; reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)
        return 0

    async def session(self, backoff: Backoff) -> None:
        a = self.args
        token = await asyncio.to_thread(get_token, a.server, a.room, a.user, a.name, "viewer", a.token)
        async with connect(ws_url(a.server), open_timeout=15, compression=None) as ws:
            join: dict[str, Any] = {"t": "join", "v": 1, "token": token, "room": a.room}
            if self.epoch is not None:
                join["resume"] = {"epoch": self.epoch, "seq": self.seq}
            await ws.send(pack(join))
            chatter = asyncio.create_task(self.chat(ws)) if a.say else None
            try:
                async for data in ws:
                    if self.frame(unpack(data)) == "resync":
                        await ws.close(3000, "resync")  # reconnect at once and resume
                        return
                    if self.done.is_set():
                        await ws.close(1000, "bye")
                        return
                    if self.epoch is not None:
                        backoff.reset()
            finally:
                if chatter is not None:
                    chatter.cancel()
            if ws.close_code in NO_RETRY:
                raise Fatal(f"closed with {ws.close_code}: {ws.close_reason}")

    def frame(self, frame: dict[str, Any]) -> str | None:
        """Show one frame; "resync" when the stream cannot be followed from here."""
        kind = frame.get("t")
        if kind == "snapshot":
            resumed = self.epoch is not None
            self.me = frame["you"]["uid"]
            if frame.get("recovered"):
                self.out(f"resumed: {len(frame.get('missed', []))} missed events replayed")
                self.events(frame.get("missed", []))
            else:
                self.epoch, self.seq = frame["epoch"], frame["seq"]
                hosts = ", ".join(h["name"] for h in frame.get("hosts", [])) or "nobody"
                self.out(
                    f"{'re' if resumed else ''}joined {frame['room']}: online {frame['online']}, "
                    f"likes {frame['likes']}, host {hosts}, live {frame.get('live')}"
                )
                if not resumed:
                    for event in frame.get("recent", [])[-5:]:
                        self.out(f"  (earlier) {event['name']}: {event['text']}")
            self.seq = max(self.seq, frame["seq"])
        elif kind == "batch":
            epoch = frame.get("epoch")
            if epoch and self.epoch is not None and epoch != self.epoch:
                # numbering restarted (docs/PROTOCOL.md, `batch`): it continues our stream only
                # when its first event follows the last one we have
                seqs = [e["seq"] for e in frame["events"] if isinstance(e.get("seq"), int)]
                if not seqs or seqs[0] != self.seq + 1:
                    return "resync"
                self.epoch = epoch
            self.events(frame["events"])
        elif kind == "dm":
            self.out(f"✉ DM from {frame['name']}: {frame['text']}")
        elif kind == "error":
            extra = f" (retry in {frame['retry_after']} s)" if frame.get("retry_after") else ""
            self.out(f"error {frame.get('code')}: {frame.get('msg')}{extra}")
        elif kind == "notice":
            self.out(f"notice: {frame.get('action')}")
        return None

    def events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("seq", 0) <= self.seq and self.epoch is not None and event.get("seq"):
                continue
            self.seq = max(self.seq, event.get("seq", 0))
            kind = event["t"]
            if kind == "danmaku":
                mine = " (me)" if event["uid"] == self.me else ""
                if mine:
                    self.unconfirmed.pop(str(event.get("cid")), None)
                self.out(f"💬 {event['name']}{mine}: {event['text']}")
                self.seen += 1
                if self.args.count and self.seen >= self.args.count:
                    self.done.set()
            elif kind == "likes":
                self.out(f"♥ +{event['delta']} = {event['total']}")
            elif kind == "presence":
                self.out(f"👁 online {event['online']}")
            elif kind == "reply":
                self.out(f"↪ {event['name']} ({event.get('from', 'host')}): {event['text']}")
            elif kind == "pin":
                self.out(f"📌 {event['name']} pinned {event.get('kind', 'message')} {event.get('id', '')}")
            elif kind == "live":
                self.out(f"📺 {event['name']} {'is live' if event['on'] else 'stopped streaming'}")
            elif kind == "host":
                self.out(f"host {event['name']} {'arrived' if event['live'] else 'left'}")
            elif kind == "delete":
                self.out(f"🗑 message #{event.get('target')} removed by {event['name']}")

    async def chat(self, ws: ClientConnection) -> None:
        a = self.args
        # sent before a reset and not seen since: again with the same cid, so the server drops
        # the ones it already has (docs/PROTOCOL.md, "Retrying after a reset")
        for cid, text in list(self.unconfirmed.items()):
            await ws.send(pack({"t": "danmaku", "text": text, "cid": cid}))
        for n in itertools.count(1):
            if a.say_times and self.sent >= a.say_times:
                return
            await asyncio.sleep(a.every * random.uniform(0.8, 1.2) if n > 1 else 0.5)
            text = a.say if a.say_times == 1 else f"{a.say} #{self.sent + 1}"
            cid = f"bot{self.tag}.{self.sent}"
            self.unconfirmed[cid] = text
            await ws.send(pack({"t": "danmaku", "text": text, "cid": cid}))
            if a.likes:
                await ws.send(pack({"t": "like", "count": a.likes}))
            self.sent += 1
            if a.say_times and self.sent >= a.say_times:
                return


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m client_demo.viewer", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default=DEFAULT_SERVER, help=f"WebSocket URL of the server ({DEFAULT_SERVER})")
    p.add_argument("--room", default="demo")
    p.add_argument("--user", default=f"bot-{random.randrange(16**4):04x}", help="viewer user id")
    p.add_argument("--name", help="display name (default: the user id)")
    p.add_argument(
        "--token", help="a viewer token (default: the dev endpoint, or signed with LIVEROOM_SECRET)"
    )
    p.add_argument("--say", help="chat this text")
    p.add_argument("--every", type=float, default=5.0, help="seconds between messages (default 5)")
    p.add_argument("--say-times", type=int, default=0, help="stop chatting after this many (0: never)")
    p.add_argument("--likes", type=int, default=0, help="likes to send with each message")
    p.add_argument("--count", type=int, default=0, help="exit after printing this many danmaku")
    args = p.parse_args(argv)
    args.name = args.name or args.user
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(ViewerBot(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
