"""placeholder"""

from __future__ import annotations


class Links:
    async def handle(self, client: object, message: object) -> None: ...
