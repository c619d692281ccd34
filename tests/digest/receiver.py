"""A webhook receiver that keeps every delivery and checks its signature."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class Receiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.bodies: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        mac = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("x-tally-signature", ""), f"sha256={mac}"):
            self.bad_signatures += 1
            return Response(status_code=401)
        self.bodies.append(json.loads(body))
        return Response(status_code=204)

    async def wait(self, count: int) -> list[dict[str, Any]]:
        """The bodies received, once there are ``count`` (or after 10 s)."""
        deadline = time.monotonic() + 10
        while True:
            if len(self.bodies) >= count or time.monotonic() > deadline:
                return list(self.bodies)
            await asyncio.sleep(0.05)
