"""placeholder"""

from __future__ import annotations


class Fans:
    async def handle(self, client: object, message: object) -> None: ...
