"""The /docs (Swagger UI) and /redoc (Redoc) pages, and the files they load: shipped in the
package (tokencli/http/assets/) and served by `serve` itself, never from a CDN.

Why shipped rather than pinned on a CDN with Subresource Integrity (docs/design.md): the
pages work with no internet access (a token service often has none), a reader's browser
contacts no third party, and the Content-Security-Policy can be `'self'` only. The cost
is about 0.8 MB in the wheel (the three files gzip-compressed) and one place to update
(tokencli/http/assets/README.md).

The files are large next to any API answer (0.5 MB gzip-compressed for Swagger UI, 1.7 MB
plain), anyone may fetch them, and each answer is copied into its connection's buffer:
500 clients pipelining four requests for them and never reading took `serve` to 434 MB
(904 MB uncompressed) and stalled /health for seconds. So they are handed out from a
budget (`AssetBudget`, a token bucket: 4 MiB/s, bursts of 8 MiB, a dozen page loads a
second); past it they are 503 with Retry-After, and what they can hold is bounded by
what the budget lets out while unread answers wait to be dropped.

Each asset is stored gzip-compressed and sent as it is to clients that accept gzip (every
browser), with `Content-Encoding: gzip`; a client that does not is sent the file
decompressed (made once, then kept). The digest of each file as published is pinned
here; a test checks the shipped files against it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import NamedTuple

from tokencli.http.http11 import HttpError

SWAGGER_UI_VERSION = "5.35.0"
REDOC_VERSION = "2.5.4"
JAVASCRIPT = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"

# Scripts and styles from this server only; the pages fetch /openapi.json (and Swagger
# UI's "Try it out" the API) from it too. Inline styles are allowed (both viewers set
# them), inline scripts are not. Redoc runs its search in a worker it makes from a blob.
_COMMON_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_POLICY = _COMMON_POLICY
REDOC_POLICY = _COMMON_POLICY + "; worker-src 'self' blob:"
PAGE_HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class Asset(NamedTuple):
    """A file a viewer loads: where it is served, its file in the package, its type, and
    the SHA-256 of its content as published (None for our own)."""

    path: str
    file: str
    content_type: str
    sha256: str | None


ASSETS = (
    Asset(
        "/docs/swagger-ui-bundle.js",
        "swagger-ui-bundle.js.gz",
        JAVASCRIPT,
        "e6a898692f2d768e807c3ba4626068a69a2c5dd960dd6c76f3e4d3a3de180af2",
    ),
    Asset(
        "/docs/swagger-ui.css",
        "swagger-ui.css.gz",
        CSS,
        "5ed08757e53da3e026d6cbecc61fe5d43585c9560b302d534ad56692519a273d",
    ),
    Asset("/docs/swagger-init.js", "swagger-init.js", JAVASCRIPT, None),
    Asset(
        "/redoc/redoc.standalone.js",
        "redoc.standalone.js.gz",
        JAVASCRIPT,
        "dcaf76612bc4a3fbcc923a8966dee2f6146a5f32e5ce1b6f02dd60cbbf89500b",
    ),
)
ASSETS_BY_PATH = {asset.path: asset for asset in ASSETS}

SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tokencli API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head><body><div id="swagger-ui" data-spec-url="/openapi.json"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-init.js"></script>
</body></html>
"""

REDOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tokencli API</title></head><body>
<redoc spec-url="/openapi.json"></redoc>
<script src="/redoc/redoc.standalone.js"></script>
</body></html>
"""


@functools.cache
def stored(file: str) -> bytes:
    """An asset's bytes as shipped (gzip-compressed for the .gz ones), read once."""
    return resources.files("tokencli.http").joinpath("assets", file).read_bytes()


@functools.cache
def decompressed(file: str) -> bytes:
    """An asset's content, for the rare client that does not take gzip."""
    raw = stored(file)
    return gzip.decompress(raw) if file.endswith(".gz") else raw


def content_digest(asset: Asset) -> str:
    """SHA-256 of an asset's content (what the pinned digest is compared with)."""
    return hashlib.sha256(decompressed(asset.file)).hexdigest()


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip. Absent means identity only here (as
    nginx's gzip_static does), so `curl URL` gets readable text."""
    if not accept_encoding:
        return False
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, parameters = item.partition(";")
        quality = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities[coding.strip().lower()] = quality
    # An explicit gzip (or x-gzip) entry decides; otherwise a wildcard does.
    quality = qualities.get("gzip", qualities.get("x-gzip", qualities.get("*", 0.0)))
    return quality > 0


def asset_body(
    asset: Asset, accept_encoding: str | None, budget: AssetBudget
) -> tuple[bytes, dict[str, str]]:
    """What to send for an asset: its bytes and the headers that go with them; 503 when
    the budget cannot spare them now."""
    headers = {"Cross-Origin-Resource-Policy": "same-origin"}
    if not asset.file.endswith(".gz"):
        body = stored(asset.file)
    else:
        headers["Vary"] = "Accept-Encoding"
        if accepts_gzip(accept_encoding):
            headers["Content-Encoding"] = "gzip"
            body = stored(asset.file)
        else:
            body = decompressed(asset.file)
    if not budget.take(len(body)):
        raise HttpError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "the API viewers' files are in demand; retry in a second",
            {"Retry-After": "1"},
        )
    return body, headers


class AssetBudget:
    """How many bytes of viewer files may be handed out: a token bucket shared by all
    connections (and worker threads), refilled at `rate` bytes a second up to `burst`."""

    def __init__(
        self,
        rate: float = 4 * 1024 * 1024,
        burst: float = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._level = burst
        self._at = clock()
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Spend `size` bytes if the budget has them now; False (spend nothing) if not."""
        with self._lock:
            now = self._clock()
            self._level = min(self._burst, self._level + (now - self._at) * self._rate)
            self._at = now
            if size > self._level:
                return False
            self._level -= size
            return True
