"""The web page at ``/``: the files ``web/build.mjs`` built into ``app/webui/``.

They ship inside the Python package, so ``python -m app`` serves the page with no npm
step; ``tests/test_webui.py`` fails when they are stale against ``web/``'s sources.
Only the files the build lists are served (read once, at start-up), each with a
Content-Security-Policy that allows this origin alone.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)

WEBUI_DIR = Path(__file__).resolve().parent.parent / "webui"

# Same origin only; no inline script. The editor (CodeMirror) writes its styles into a
# <style> element: the page's nonce, fresh for each load of the page, admits that one.
# Inline style attributes are allowed because the editor's remote carets and
# selections are coloured with them (y-codemirror.next). The socket's ws:// to this
# host is 'self'.
NONCE_PLACEHOLDER = b"%CSP_NONCE%"


def content_security_policy(nonce: str) -> str:
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            f"style-src 'self' 'nonce-{nonce}'",
            "style-src-attr 'unsafe-inline'",
            "img-src 'self'",
            "connect-src 'self'",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    cache_control: str


def load(directory: Path = WEBUI_DIR) -> dict[str, Asset]:
    """The built files by URL path; empty (and a warning) when there is no build."""
    try:
        info = json.loads((directory / "build-info.json").read_text())
    except FileNotFoundError:
        log.warning(
            "no web page build in %s: / answers 404 (cd web && npm ci && npm run build)", directory
        )
        return {}
    assets: dict[str, Asset] = {}
    for name in info["files"]:
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name == "index.html":
            # The page names its assets by content hash: it must be asked for anew.
            assets["/"] = Asset((directory / name).read_bytes(), "text/html", "no-cache")
        else:
            assets[f"/{name}"] = Asset(
                (directory / name).read_bytes(), content_type, "public, max-age=31536000, immutable"
            )
    return assets


def install(app: web.Application, directory: Path = WEBUI_DIR) -> None:
    assets = load(directory)

    async def serve(request: web.Request) -> web.Response:
        asset = assets.get(request.path)
        if asset is None:
            raise web.HTTPNotFound()
        nonce = secrets.token_urlsafe(18)
        body = (
            asset.body.replace(NONCE_PLACEHOLDER, nonce.encode())
            if request.path == "/"
            else asset.body
        )
        response = web.Response(body=body, content_type=asset.content_type)
        if asset.content_type.startswith("text/") or asset.content_type.endswith(
            ("javascript", "svg+xml")
        ):
            response.charset = "utf-8"
        response.headers["Cache-Control"] = asset.cache_control
        response.headers.update(SECURITY_HEADERS)
        response.headers["Content-Security-Policy"] = content_security_policy(nonce)
        return response

    app.router.add_get("/", serve)
    app.router.add_get("/assets/{name}", serve)
