"""The chat page served at ``/`` by ``kaon serve``: static files in ``static/``, no build step.

    GET /                  index.html (a strict Content-Security-Policy: same-origin scripts only)
    GET /static/<name>     app.js (UI, streaming over SSE from /v1/chat/completions),
                           markdown.js (Markdown -> DOM nodes via textContent, never innerHTML),
                           style.css

The page is same-origin with the API, so it needs no CORS; it sends the API key the user types
as ``Authorization: Bearer <key>``. Conversations and settings live in the browser's localStorage.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, Response

STATIC_DIR = Path(__file__).parent / "static"
_MEDIA_TYPES = {
    "app.js": "text/javascript",
    "markdown.js": "text/javascript",
    "style.css": "text/css",
}
# Defence in depth: even if model output reached the DOM as HTML, inline scripts and event
# handlers (onerror=...) would not run, and the page can only talk to its own origin.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def add_chat_page(app: FastAPI) -> None:
    """Add ``GET /`` and ``GET /static/{name}`` (a fixed list of files; others are 404)."""

    @app.get("/", include_in_schema=False)
    async def chat_page() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in _MEDIA_TYPES:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(STATIC_DIR / name, media_type=_MEDIA_TYPES[name], headers=_HEADERS)


def page_url(host: str, port: int) -> str:
    """The address to open in a browser: a wildcard bind address becomes ``localhost``."""
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    elif ":" in host:  # a literal IPv6 address
        host = f"[{host}]"
    return f"http://{host}:{port}/"
