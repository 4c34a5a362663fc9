"""Front doors: one adapter per way events arrive (the partner API, the pixel, the beacon,
signed webhooks, Segment's HTTP Tracking API; later other SDK protocols).

An adapter authenticates its own kind of key, reads its own wire format within its own limits,
maps what it read onto `EventIn`, and hands each event to the one enqueue path
(`ingest_api.handoff`), which builds the envelope, queues it and answers. Nothing past that path
knows which door an event came through (STYLE.md §12). The partner API's door is
`ingest_api.intake` itself.

A door is a `Door`: the intake hands it the process's state (None while starting) and the
request. The one enqueue path is `ingest_api.handoff`; site keys are found through
`ingest_api.sources.site_keys`, rate limits checked through `ingest_api.rate_limit`.
"""

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ingest_api.asgi import Receive, Scope, Send

if TYPE_CHECKING:  # the state holds this package's site-key cache
    from ingest_api.state import IngestState

Door = Callable[["IngestState | None", Scope, Receive, Send], Awaitable[None]]
