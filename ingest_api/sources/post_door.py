"""What a POST-only door does around its own work: not ready, wrong method, a client gone,
its problems answered, a bug logged and answered 500."""

from collections.abc import Awaitable, Callable

import structlog

from ingest_api.asgi import Receive, Scope, Send
from ingest_api.http_body import DisconnectedError
from ingest_api.problems import (
    ProblemError,
    not_ready,
    problem_error_response,
    problem_response,
)
from ingest_api.sources import Door
from ingest_api.state import IngestState

log = structlog.get_logger(__name__)

Handler = Callable[[IngestState, Scope, Receive, Send], Awaitable[None]]


def post_door(name: str, handle: Handler) -> Door:
    """A door serving POST with `handle`; its unexpected errors are logged as `<name>.error`."""

    async def serve(state: IngestState | None, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if state is None:
                raise not_ready()
            if scope["method"] != "POST":
                raise ProblemError(405, "Method not allowed", "use POST", headers={"Allow": "POST"})
            await handle(state, scope, receive, send)
        except DisconnectedError:
            return
        except ProblemError as exc:
            await problem_error_response(exc)(scope, receive, send)
        except Exception:
            log.exception(f"{name}.error")
            await problem_response(500, "Internal server error", kind="internal")(
                scope, receive, send
            )

    return serve
