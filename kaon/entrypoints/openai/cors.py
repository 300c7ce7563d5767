"""Browsers as clients: CORS (vLLM's ``--allowed-origins`` family of flags), ``HEAD`` on every
``GET`` route, and the ``Allow`` header on 405 responses (RFC 9110, sections 9.3.2 and 15.5.6).

Default: no cross-origin access. kaon usually listens on 127.0.0.1, and a page on any web site
the user visits could otherwise drive the local model (vLLM defaults to ``["*"]``). The chat page
at ``/`` is same-origin and needs no CORS. ``--allowed-origins '["*"]'`` restores vLLM's default.

    client --> [HTTP metrics] --> [CORS] --> [API key] --> routes
                                    |  preflight OPTIONS answered here: 200, or 400 for an
                                    |  origin/method/header that is not allowed (no Authorization
                                    |  is needed; browsers never send it on a preflight)
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware

_ORIGIN = re.compile(r"^https?://[^/\s]+$")  # scheme://host[:port], no path
# Response headers a cross-origin page may read beyond the CORS-safelisted ones.
_EXPOSED_HEADERS = ["Retry-After", "x-request-id"]


@dataclass
class CORSOptions:
    """Which cross-origin browser requests the server answers (Starlette's CORSMiddleware)."""

    allowed_origins: list[str] = field(default_factory=list)  # "*" or scheme://host[:port]
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])  # for preflights
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])  # for preflights
    allow_credentials: bool = False  # Access-Control-Allow-Credentials: true

    def __post_init__(self) -> None:
        for origin in self.allowed_origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"allowed_origins: {origin!r} is not '*' or an origin like "
                    "'http://localhost:3000' (scheme, host and optional port; no path)"
                )
        for method in self.allowed_methods:
            if method != "*" and not method.isalpha():
                raise ValueError(f"allowed_methods: {method!r} is not an HTTP method or '*'")
        self.allowed_methods = [m if m == "*" else m.upper() for m in self.allowed_methods]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CORSOptions:
        """The options of ``kaon serve``'s flags (see add_cors_args).

        Raises:
            ValueError: naming the flag whose value is not a valid list or origin.
        """
        return cls(
            allowed_origins=parse_list(args.allowed_origins, "allowed_origins"),
            allowed_methods=parse_list(args.allowed_methods, "allowed_methods"),
            allowed_headers=parse_list(args.allowed_headers, "allowed_headers"),
            allow_credentials=args.allow_credentials,
        )


def parse_list(value: str | list[str], name: str) -> list[str]:
    """A flag's list: a JSON list of strings (vLLM's form, ``'["a", "b"]'``) or ``a,b``.

    Raises:
        ValueError: naming ``name`` for JSON that is not a list of strings.
    """
    if isinstance(value, list):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name}: not a JSON list: {error}") from None
        if not all(isinstance(item, str) for item in items):
            raise ValueError(f"{name}: the JSON list must hold strings")
        return [item.strip() for item in items]
    return [item.strip() for item in text.split(",") if item.strip()]


def add_cors_args(parser: argparse.ArgumentParser) -> None:
    """``--allowed-origins``, ``--allowed-methods``, ``--allowed-headers``,
    ``--allow-credentials`` (vLLM's names); lists are JSON or comma separated."""
    group = parser.add_argument_group("CORS (browser pages on other origins)")
    group.add_argument(
        "--allowed-origins", default="[]",
        help="origins whose pages may call the API, e.g. 'http://localhost:3000' or '[\"*\"]' "
        "(default: none; the page at / is same-origin and always works)",
    )  # fmt: skip
    group.add_argument(
        "--allowed-methods", default='["*"]', help="methods allowed cross-origin (default: all)"
    )
    group.add_argument(
        "--allowed-headers", default='["*"]', help="request headers allowed (default: all)"
    )
    group.add_argument(
        "--allow-credentials", action="store_true",
        help="let cross-origin pages send cookies / HTTP auth (Access-Control-Allow-Credentials)",
    )  # fmt: skip


def add_browser_support(app: FastAPI, cors: CORSOptions) -> None:
    """Answer ``HEAD`` on every GET route and wrap ``app`` in CORS. Call after the routes and
    the API-key middleware are added, so that CORS sits outside the key check (a 401 then still
    carries the CORS headers and the page can show it)."""
    for route in app.routes:
        if isinstance(route, APIRoute) and "GET" in route.methods:
            # Starlette's plain Route adds HEAD to GET itself; FastAPI's APIRoute does not.
            # uvicorn drops the body of a response to HEAD.
            route.methods.add("HEAD")
    app.add_middleware(
        CORSMiddleware,
        allow_origins=cors.allowed_origins,
        allow_methods=cors.allowed_methods,
        allow_headers=cors.allowed_headers,
        allow_credentials=cors.allow_credentials,
        expose_headers=_EXPOSED_HEADERS,
    )
