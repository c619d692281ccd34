"""Start-up failures that the lifespan explained itself are not repeated as a traceback.

Starlette reports an exception raised while the app starts by sending uvicorn the whole
formatted traceback (well over a hundred lines for a database error). When the lifespan
has already logged the one line that says what is wrong and how to fix it, and left it on
``app.state.startup_failure``, this middleware sends uvicorn an empty message instead:
start-up still fails (uvicorn exits with its start-up failure code), quietly.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class QuietStartupFailure:
    """Pure ASGI middleware; every scope but ``lifespan`` passes untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state

        async def send_quietly(message: Message) -> None:
            explained = getattr(state, "startup_failure", None)
            if message["type"] == "lifespan.startup.failed" and explained:
                message = {"type": message["type"], "message": ""}
            await send(message)

        await self.app(scope, receive, send_quietly)
