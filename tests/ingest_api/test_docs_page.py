"""/docs renders in a real browser with no internet: its assets are served by the API itself."""

from pathlib import Path

import httpx

from tests.support.browser import find_chromium, render


def test_docs_page_renders_offline_in_chromium(api_url: str, tmp_path: Path) -> None:
    html = httpx.get(f"{api_url}/docs").text
    assert "cdn." not in html and "https://" not in html.split("<body>")[0]
    shot = tmp_path / "docs.png"
    dom = render(find_chromium(), f"{api_url}/docs", tmp_path / "profile", screenshot=shot)
    # Swagger UI builds these from /openapi.json in the browser: the raw page has none of them.
    assert 'class="swagger-ui' in dom
    assert "/api/partner/events/batch" in dom
    assert 'class="opblock-summary-method">POST<' in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
