"""Optional LLM phrasing against a local aiohttp server speaking the chat-completions API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from server.assistant.llm import LlmConfig, Phraser, endpoint
from tests.local_http import serving
from tests.test_assistant import running_assistant


class FakeModel:
    """Answers /v1/chat/completions like an OpenAI-compatible server; records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], str | None]] = []
        self.mode = "ok"  # ok | slow | error | garbage
        self.answer = "亲，这条裙子只要¥259哦"
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((body, request.headers.get("Authorization")))
        if self.mode == "slow":
            await self.release.wait()
        if self.mode == "error":
            return web.Response(status=500, text="overloaded")
        if self.mode == "garbage":
            return web.json_response({"nope": True})
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": self.answer}}]})


@pytest.fixture
async def model() -> AsyncIterator[tuple[FakeModel, str]]:
    fake = FakeModel()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    async with serving(app) as base:
        try:
            yield fake, base
        finally:
            fake.release.set()


def test_endpoint_paths() -> None:
    assert endpoint("http://h:1") == "http://h:1/v1/chat/completions"
    assert endpoint("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert endpoint("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


async def test_phrasing_is_grounded_and_falls_back(model: tuple[FakeModel, str]) -> None:
    fake, url = model
    # a model that answers gets all the time a loaded machine needs; only the "slow" one (which
    # never answers until the test ends) meets a short timeout below
    phraser = Phraser(LlmConfig(url, key="k-123", model="tiny", timeout=60))
    entries = [{"id": "dress", "name": "碎花连衣裙", "price": 259}]
    try:
        text = await phraser.phrase("多少钱", entries, "碎花连衣裙 ¥259，S/M/L")
        assert text == fake.answer
        body, auth = fake.requests[0]
        assert auth == "Bearer k-123" and body["model"] == "tiny"
        prompt = json.dumps(body["messages"], ensure_ascii=False)
        assert "碎花连衣裙" in prompt and "多少钱" in prompt and "¥259" in prompt
        assert "牛仔裤" not in prompt  # only the retrieved entry, not the catalogue

        for mode in ("error", "garbage", "slow"):
            fake.mode = mode
            phraser.config.timeout = 0.5 if mode == "slow" else 60
            assert await phraser.phrase("多少钱", entries, "TEMPLATE") == "TEMPLATE", mode
        assert phraser.fallbacks == 3
    finally:
        await phraser.close()


async def test_real_assistant_uses_the_model(app: Any, join: Any, model: tuple[FakeModel, str]) -> None:
    fake, url = model
    llm = ("--llm-url", url, "--llm-model", "tiny", "--llm-timeout", "60")  # no race with a slow machine
    async with running_assistant(app.port, *llm) as (_, line):
        assert "answering" in line
        amy = await join("amy")
        await amy.send(t="danmaku", text="碎花裙多少钱？")
        reply = (await amy.events(lambda e: e["t"] == "reply", 1))[0]
        assert reply["text"] == f"@amy: {fake.answer}"
        body, _ = fake.requests[0]
        prompt = json.dumps(body["messages"], ensure_ascii=False)
        assert "碎花裙多少钱" in prompt and "259" in prompt and "牛仔裤" not in prompt
