"""GraphiQL without internet: the page and its assets come from this package, not from a CDN.

The assets (schema/static/graphiql/, built by tools/graphiql/build.py from pinned npm packages)
are served under a path that carries a fingerprint of their contents, so they are cached as
immutable for a year and a rebuild changes every URL; the page itself is revalidated each time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = STATIC / "graphiql"
IMMUTABLE = "public, max-age=31536000, immutable"


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


ASSETS_PATH = f"/graphql/static/{_fingerprint(ASSETS)}"
_PAGE = (STATIC / "graphiql.html").read_text()


def graphiql_page(request: Request) -> HTMLResponse:
    """The GraphiQL page, its asset URLs under the app's root path (a proxy's prefix)."""
    root_path = request.scope.get("root_path", "")
    html = _PAGE.replace("__STATIC__", f"{root_path}{ASSETS_PATH}")
    return HTMLResponse(html, headers={"cache-control": "no-cache"})


class _CacheForever:
    """Marks successful answers immutable: their URL changes whenever their content does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_cache_control(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (200, 304):
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"cache-control"]
                message = {**message, "headers": [*headers, (b"cache-control", IMMUTABLE.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_cache_control)


def graphiql_assets() -> Mount:
    """The route of the assets, gzipped for browsers that ask (1.6 MB raw, a quarter gzipped)."""
    files = StaticFiles(directory=ASSETS)
    return Mount(ASSETS_PATH, app=_CacheForever(GZipMiddleware(files)), name="graphiql-assets")
