"""Optional phrasing by an OpenAI-compatible chat-completions endpoint, grounded in the entries.

The prompt holds only the catalogue entries the answer came from and the template answer: the
model may reword, never add facts. Any failure or a slow answer (timeout) falls back to the
template, so the assistant never waits on the model for long nor stays silent because of it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from server.deadline import within

log = logging.getLogger("liveroom.assistant.llm")

SYSTEM = (
    "You are a live-commerce assistant answering viewers' questions in a live stream chat. "
    "Rephrase the template answer in one short, friendly sentence in the viewer's language. "
    "Use ONLY the facts in the catalogue entries given; never invent prices, sizes or policies. "
    "Keep every number exactly as given. Do not add @mentions."
)
MAX_CHARS = 300


@dataclass(slots=True)
class LlmConfig:
    url: str  # base URL, e.g. http://127.0.0.1:11434 (…/v1/chat/completions is appended)
    key: str = ""
    model: str = "gpt-4o-mini"
    timeout: float = 2.0


def endpoint(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def build_messages(question: str, entries: list[dict[str, Any]], template: str) -> list[dict[str, str]]:
    facts = json.dumps(entries, ensure_ascii=False)
    user = f"Catalogue entries: {facts}\nViewer question: {question}\nTemplate answer: {template}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


class Phraser:
    def __init__(self, config: LlmConfig, session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self._session = session
        self.fallbacks = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def phrase(self, question: str, entries: list[dict[str, Any]], template: str) -> str:
        """The model's wording, or the template when the model fails, is slow or answers oddly."""
        try:
            text = await within(self._ask(question, entries, template), self.config.timeout)
        except Exception as exc:  # timeouts, HTTP and JSON errors: all mean "use the template"
            self.fallbacks += 1
            log.info("llm phrasing failed (%s): template answer used", type(exc).__name__)
            return template
        text = " ".join(text.split())
        if not text or len(text) > MAX_CHARS:
            self.fallbacks += 1
            return template
        return text

    async def _ask(self, question: str, entries: list[dict[str, Any]], template: str) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        if self.config.key:
            headers["Authorization"] = f"Bearer {self.config.key}"
        body = {
            "model": self.config.model,
            "messages": build_messages(question, entries, template),
            "temperature": 0.2,
            "max_tokens": 120,
        }
        async with self._session.post(endpoint(self.config.url), json=body, headers=headers) as res:
            res.raise_for_status()
            data = await res.json()
        return str(data["choices"][0]["message"]["content"])
