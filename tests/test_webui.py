"""The web page's build shipped in app/webui/: fresh against web/'s sources, and served
at / with its assets under a same-origin Content-Security-Policy."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.api.webui import WEBUI_DIR

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
# web/build.mjs's SOURCES: the files whose content decides the build.
SOURCES = [
    ".npmrc",
    "build.mjs",
    "index.html",
    "package.json",
    "package-lock.json",
    "tsconfig.json",
    "src",
]


@pytest.fixture
def backend() -> str:
    """Serving files needs no second database: SQLite only."""
    return "sqlite"


def source_hash() -> str:
    """The hash build.mjs records: sha256 over "path\\0sha256(content)\\n", paths sorted."""
    files: list[Path] = []
    for name in SOURCES:
        path = WEB / name
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    outer = hashlib.sha256()
    for relative in sorted(path.relative_to(WEB).as_posix() for path in files):
        inner = hashlib.sha256((WEB / relative).read_bytes()).hexdigest()
        outer.update(f"{relative}\0{inner}\n".encode())
    return outer.hexdigest()


def build_info() -> dict[str, object]:
    info: dict[str, object] = json.loads((WEBUI_DIR / "build-info.json").read_text())
    return info


def test_the_shipped_build_is_fresh_against_the_sources() -> None:
    assert build_info()["sources_sha256"] == source_hash(), (
        "app/webui/ is stale: rebuild it with `cd web && npm ci && npm run build` "
        "and commit app/webui/"
    )


def test_the_shipped_build_holds_the_files_it_lists_and_no_others() -> None:
    files = build_info()["files"]
    assert isinstance(files, list)
    listed = set(files)
    present = {
        path.relative_to(WEBUI_DIR).as_posix()
        for path in WEBUI_DIR.rglob("*")
        if path.is_file() and path.name != "build-info.json"
    }
    assert listed == present


async def test_the_page_is_served_at_the_root_with_a_same_origin_policy(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r'<meta name="csp-nonce" content="([^"]+)">', page)
    assert nonce is not None, page
    assert f"'nonce-{nonce[1]}'" in policy
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "http" not in policy and "*" not in policy  # no other origin, no wildcard
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"

    again = await client.get("/")
    assert again.headers["Content-Security-Policy"] != policy  # a nonce per load

    for asset in re.findall(r'(?:src|href)="(/assets/[^"]+)"', page):
        served = await client.get(asset)
        assert served.status == 200, asset
        assert served.headers["Cache-Control"].endswith("immutable")
        assert (await served.read()) == (WEBUI_DIR / asset.removeprefix("/")).read_bytes()
        assert served.headers["X-Content-Type-Options"] == "nosniff"


async def test_no_other_file_is_served_and_the_api_keeps_its_errors(
    client: TestClient[web.Request, web.Application],
) -> None:
    for path in ["/assets/nope.js", "/assets/..%2Fbuild-info.json", "/build-info.json", "/x"]:
        response = await client.get(path)
        assert response.status == 404, path
        body = await response.json()
        assert body["error"]["code"] == "not_found"
    response = await client.post("/")
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
