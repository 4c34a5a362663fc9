"""Reference (a): the ceiling for any FastAPI ingest here, the same body model and no work.

Run like the real API: `uvicorn bench.bare_app:app --loop uvloop --http httptools --no-access-log`.
"""

from fastapi import FastAPI
from starlette.responses import Response

from shared.schemas import EventIn

app = FastAPI()

_QUEUED = b'{"status":"queued"}'


@app.post("/api/partner/events", status_code=202)
async def create_event(event: EventIn) -> Response:
    # A prebuilt Response, as the real handler returns, so neither pays response_model costs.
    return Response(_QUEUED, status_code=202, media_type="application/json")
