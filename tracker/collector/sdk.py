"""The browser SDK file, served by the collector at ``GET /sdk.js``.

Read and compressed once at start-up; answers carry an ``ETag`` so browsers revalidate cheaply
once the (short) cache lifetime has passed: the URL is not versioned, so an update must reach
pages within the hour.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static")
SDK_PATH = STATIC / "sdk.js"
CACHE_CONTROL = "public, max-age=3600"


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header admits gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.lower().split(","):
        name, _, params = item.strip().partition(";")
        if name.strip() not in ("gzip", "*"):
            continue
        quality = params.strip().removeprefix("q=")
        try:
            return not params or float(quality) > 0
        except ValueError:
            return False
    return False


class StaticScript:
    """One JavaScript file, plain and gzipped, with its validator."""

    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.gzipped = gzip.compress(self.body, compresslevel=9, mtime=0)
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    async def handle(self, request: web.Request) -> web.Response:
        headers = {
            "Cache-Control": CACHE_CONTROL,
            "ETag": self.etag,
            "Vary": "Accept-Encoding",
            # Pages that isolate themselves (COEP) may still load the script from here.
            "Cross-Origin-Resource-Policy": "cross-origin",
        }
        if self.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        body = self.body
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = self.gzipped
            headers["Content-Encoding"] = "gzip"
        return web.Response(
            body=body, content_type="application/javascript", charset="utf-8", headers=headers
        )
