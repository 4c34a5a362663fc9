"""References (a) and (a2): the ceilings for an ingest route here, the same body model and no
work, as a FastAPI route (`app`, the issue's reference) and as plain ASGI (`asgi_app`, how
`ingest_api.intake` serves it).

Run like the real API: `uvicorn bench.bare_app:app --loop uvloop --http
ingest_api.server:GuardedHttpToolsProtocol --no-access-log` (`ops.processes.api_argv`).
"""

from fastapi import FastAPI
from starlette.responses import Response

from ingest_api.asgi import Receive, Scope, Send
from shared.contract.events import EventIn

app = FastAPI()

_QUEUED = b'{"status":"queued"}'


@app.post("/api/partner/events", status_code=202)
async def create_event(event: EventIn) -> Response:
    # A prebuilt Response, as the real handler returns, so neither pays response_model costs.
    return Response(_QUEUED, status_code=202, media_type="application/json")


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the body, validate it with `EventIn`, answer 202: nothing else (no lifespan)."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    EventIn.model_validate_json(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"19")]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": _QUEUED})
