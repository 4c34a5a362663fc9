"""Edge limits checked before a body is parsed: content type (415) and size (413)."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ingest_api.problems import problem_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimits:
    """Pure ASGI middleware: JSON bodies only, at most `limits[path]` bytes, for POSTs."""

    def __init__(self, app: ASGIApp, *, limits: dict[str, int]) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json" and not content_type.endswith(b"+json"):
            await problem_response(
                415,
                "Unsupported media type",
                "send the event as application/json",
                kind="unsupported-media-type",
            )(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(limit, scope, receive, send)
            return
        # Bodies are small (the limit is the cap), so read them whole: a stream without a
        # Content-Length is refused once it passes the limit, before the app sees any of it.
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._too_large(limit, scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_response(
            413, "Payload too large", f"the body exceeds {limit} bytes", kind="payload-too-large"
        )(scope, receive, send)
