"""`liveroom assistant`: the assistant as a room participant over the WebSocket (the I/O edge).

Joins with an `assistant` token, feeds every frame to the pure core, and every 100 ms sends what
the core says is due (question tags, pins, at most one reply), phrased by the LLM when one is set.
Reconnects with backoff, resuming nothing: the next snapshot gives it the pins, the product edits
and the limits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from server.wire import auth
from server.wire.protocol import NO_RETRY_CODES

if TYPE_CHECKING:  # imported in run(): `liveroom serve` must not pay for bm25s and jieba
    from server.assistant.catalogue import Catalogue
    from server.assistant.core import Reply
    from server.assistant.llm import Phraser

log = logging.getLogger("liveroom.assistant")

FATAL_CODES = {int(code) for code in NO_RETRY_CODES}  # retrying cannot help
POLL = 0.1  # seconds between looks at what is due


class Fatal(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--room", required=True)
    parser.add_argument("--catalogue", required=True, help="catalogue YAML (docs/ASSISTANT.md)")
    parser.add_argument("--server", default="ws://127.0.0.1:8080", help="ws://host:port")
    parser.add_argument("--user", default="assistant", help="the assistant's user id (default assistant)")
    parser.add_argument("--name", default="小助手 Assistant", help="display name")
    parser.add_argument("--token", help="an assistant token (default: signed with LIVEROOM_SECRET)")
    parser.add_argument("--llm-url", help="OpenAI-compatible base URL (…/v1/chat/completions)")
    parser.add_argument("--llm-key", default=os.environ.get("LIVEROOM_LLM_KEY", ""), help="Bearer key")
    parser.add_argument("--llm-model", default="gpt-4o-mini")
    parser.add_argument("--llm-timeout", type=float, default=2.0, help="seconds before the template is used")
    parser.add_argument(
        "--gather", type=float, default=1.0, help="seconds to wait for more askers of a question (1.0)"
    )
    parser.add_argument("--pin", help="product id to pin on join when no product is pinned (the one on sale)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone (serve --demo)")


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    from server.config import from_env

    secret = os.environ.get("LIVEROOM_SECRET") or from_env().secret
    return auth.mint(secret, room=args.room, user=args.user, name=args.name, role="assistant")


def _url(server: str, token: str) -> str:
    base = server.rstrip("/")
    if not base.endswith("/ws"):
        base += "/ws"
    return f"{base}?token={token}"


def _entries(catalogue: Catalogue, reply: Reply) -> list[dict[str, Any]]:
    """The catalogue entries the answer came from: all the LLM is shown."""
    match = reply.match
    if match.faq is not None:
        faq = next(f for f in catalogue.faq if f.id == match.faq)
        return [{"faq": faq.questions[0], "answer": faq.answer}]
    product = catalogue.product(match.product or "")
    if product is None:
        return []
    return [{**product.card(), "shipping": product.shipping or catalogue.shipping}]


class Runner:
    def __init__(self, args: argparse.Namespace, catalogue: Catalogue, phraser: Phraser | None) -> None:
        self.args = args
        self.catalogue = catalogue
        self.phraser = phraser
        from server.assistant.core import Assistant

        self.core = Assistant(catalogue, args.user, gather=args.gather)
        self.questions: dict[int, str] = {}  # seq -> text, for the LLM prompt

    async def session(self) -> None:
        async with connect(_url(self.args.server, _token(self.args)), max_size=2**22) as ws:
            first = msgpack.unpackb(await ws.recv())
            if first.get("t") == "error":
                if first.get("code") in FATAL_CODES:
                    raise Fatal(f"{first.get('code')}: {first.get('msg')}")
                raise ConnectionError(first.get("msg"))
            self.core.on_frame(first, time.monotonic())
            product = self.catalogue.product(self.args.pin) if self.args.pin else None
            if product is not None and not self.core.pinned:
                await ws.send(msgpack.packb({"t": "pin", "product": product.card()}))
            print(f"assistant: answering in room {self.args.room!r} as {self.args.user!r}", flush=True)
            sender = asyncio.create_task(self._send_loop(ws))
            try:
                async for data in ws:
                    frame = msgpack.unpackb(data) if isinstance(data, bytes) else {}
                    if frame.get("t") == "batch":
                        for event in frame.get("events", []):
                            if event.get("t") == "danmaku" and isinstance(event.get("seq"), int):
                                self.questions[event["seq"]] = event.get("text", "")
                        if len(self.questions) > 2000:
                            for seq in sorted(self.questions)[:1000]:
                                del self.questions[seq]
                    elif frame.get("t") == "error" and frame.get("code") in FATAL_CODES:
                        raise Fatal(f"{frame.get('code')}: {frame.get('msg')}")
                    self.core.on_frame(frame, time.monotonic())
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(POLL)
            frames, reply = self.core.due(time.monotonic())
            for frame in frames:
                await ws.send(msgpack.packb(frame))
            if reply is not None:
                if self.phraser is not None:
                    question = self.questions.get(reply.frame["seqs"][0], "")
                    entries = _entries(self.catalogue, reply)
                    text = await self.phraser.phrase(question, entries, reply.answer)
                    reply.frame["text"] = ("".join(f"@{n} " for n in reply.names[:5]).strip() + ": " + text)[
                        :500
                    ]
                await ws.send(msgpack.packb(reply.frame))


async def _watch_parent(pid: int) -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            os.kill(pid, 0)
        except OSError:
            return


async def run(args: argparse.Namespace) -> int:
    from server.assistant.catalogue import CatalogueError, load
    from server.assistant.llm import LlmConfig, Phraser

    try:
        catalogue = load(args.catalogue)
    except CatalogueError as exc:
        print(f"liveroom assistant: {exc}", flush=True)
        return 2
    phraser = None
    if args.llm_url:
        phraser = Phraser(LlmConfig(args.llm_url, args.llm_key, args.llm_model, args.llm_timeout))
    runner = Runner(args, catalogue, phraser)
    delay = 0.5
    parent = asyncio.create_task(_watch_parent(args.parent_pid)) if args.parent_pid else None
    try:
        while parent is None or not parent.done():
            try:
                await runner.session()
                delay = 0.5
            except Fatal as exc:
                print(f"liveroom assistant: refused for good: {exc}", flush=True)
                return 1
            except (OSError, ConnectionError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                log.info("assistant connection lost (%s), retrying in %.1f s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(8.0, delay * 2)
    finally:
        if phraser is not None:
            await phraser.close()
        if parent is not None:
            parent.cancel()
    return 0
