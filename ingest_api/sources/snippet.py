"""`GET /track.js`: the browser snippet, a file of this package served as it is.

It is loaded on every page of every site that embeds it, so it is cached: an hour fresh (the
URL has no version, and a fixed snippet must reach browsers within the day), then revalidated
with its ETag, which answers 304 without a body. Both encodings are made once, at import.
"""

import gzip
import hashlib
from importlib.resources import files

from fastapi import APIRouter, Request
from starlette.responses import Response

SNIPPET = files("ingest_api.sources").joinpath("static/track.js").read_bytes()
SNIPPET_GZIP = gzip.compress(SNIPPET, compresslevel=9, mtime=0)
ETAG = f'"{hashlib.sha256(SNIPPET).hexdigest()[:20]}"'
MAX_AGE_SECONDS = 3600

_CACHING = {
    "ETag": ETAG,
    "Cache-Control": f"public, max-age={MAX_AGE_SECONDS}",
    "Vary": "Accept-Encoding",
}
# Other sites load it: say so to browsers that isolate cross-origin resources (COEP pages).
_HEADERS = {
    **_CACHING,
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
}

router = APIRouter(tags=["browser sources"])


def _matches(if_none_match: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison, any of a list, or `*`."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return ETAG in tags or "*" in tags


def _accepts_gzip(accept_encoding: str) -> bool:
    for coding in accept_encoding.split(","):
        name, _, params = coding.partition(";")
        if name.strip().lower() == "gzip":
            quality = params.strip().removeprefix("q=").strip() or "1"
            return quality not in {"0", "0.0", "0.00", "0.000"}
    return False


@router.get(
    "/track.js",
    summary="The tracking snippet",
    description=(
        'Embed with `<script src="https://HOST/track.js" data-key="SITE_KEY" async>'
        "</script>`; it posts to `/beacon` on the host it was loaded from. Cacheable:"
        f" `max-age={MAX_AGE_SECONDS}` and an ETag (`If-None-Match` answers 304)."
    ),
    response_class=Response,
    responses={
        200: {"description": "The snippet", "content": {"text/javascript": {}}},
        304: {"description": "Not modified: the cached copy is current"},
    },
)
async def track_js(request: Request) -> Response:
    # Headers read directly, not as declared parameters: nothing here can answer 422.
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _matches(if_none_match):
        return Response(status_code=304, headers=_CACHING)
    if _accepts_gzip(request.headers.get("accept-encoding", "")):
        return Response(
            SNIPPET_GZIP,
            media_type="text/javascript; charset=utf-8",
            headers={**_HEADERS, "Content-Encoding": "gzip"},
        )
    return Response(SNIPPET, media_type="text/javascript; charset=utf-8", headers=_HEADERS)
