"""The /docs and /redoc pages (issue 18 item 15): every file they load is shipped in the
package, pinned by digest and served by tokencli itself, nothing comes from another
origin, the pages carry a strict Content-Security-Policy, and the files are handed out
from a budget so that anonymous clients cannot make the server hold them by the hundred."""

from __future__ import annotations

import gzip
import hashlib
import re
from http import HTTPStatus

import pytest

from tokencli.http import viewers
from tokencli.http.answers import ApiConfig
from tokencli.http.http11 import Request
from tokencli.http.viewers import ASSETS, ASSETS_BY_PATH, AssetBudget

from support import Clock, answer_one

PAGES = {"/docs": viewers.SWAGGER_PAGE, "/redoc": viewers.REDOC_PAGE}


def test_the_shipped_files_are_the_pinned_releases() -> None:
    for asset in ASSETS:
        if asset.sha256 is not None:
            assert viewers.content_digest(asset) == asset.sha256, asset.file
    readme = (viewers.resources.files("tokencli.http") / "assets" / "README.md").read_text()
    for asset in ASSETS:
        if asset.sha256 is not None:
            assert asset.sha256 in readme and asset.file in readme
    assert viewers.SWAGGER_UI_VERSION in readme and viewers.REDOC_VERSION in readme


def test_the_licences_ship_beside_the_files() -> None:
    folder = viewers.resources.files("tokencli.http") / "assets"
    assert "Apache License" in (folder / "LICENSE.swagger-ui").read_text()
    assert "SmartBear" in (folder / "NOTICE.swagger-ui").read_text()
    assert "MIT License" in (folder / "LICENSE.redoc").read_text()
    for notices in ("swagger-ui-bundle.js.LICENSE.txt", "redoc.standalone.js.LICENSE.txt"):
        assert (folder / notices).read_text().strip()


@pytest.mark.parametrize("page", sorted(PAGES))
def test_pages_load_only_files_this_server_serves(page: str) -> None:
    html = PAGES[page]
    loaded = re.findall(r'(?:src|href|spec-url|data-spec-url)="([^"]*)"', html)
    assert loaded and "/openapi.json" in loaded
    for url in loaded:
        assert url.startswith("/") and not url.startswith("//"), url  # same origin only
        assert url == "/openapi.json" or url in ASSETS_BY_PATH, url
    assert "<script>" not in html  # no inline script: the policy allows none
    assert "http://" not in html and "https://" not in html


def test_the_swagger_init_script_asks_nothing_of_another_origin() -> None:
    script = viewers.decompressed("swagger-init.js").decode()
    assert "validatorUrl: null" in script  # no badge from validator.swagger.io
    assert "http" not in script.replace("data-spec-url", "")


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),  # an explicit refusal wins over the wildcard
        ("identity", False),
        ("deflate, *;q=0", False),
        ("gzip;q=nonsense", False),
    ],
)
def test_accept_encoding(header: str | None, gzip_ok: bool) -> None:
    assert viewers.accepts_gzip(header) is gzip_ok


def test_the_budget_refuses_past_its_burst_and_refills_with_time() -> None:
    clock = Clock(100.0)
    budget = AssetBudget(rate=1000, burst=3000, clock=clock)
    assert budget.take(2000) and budget.take(1000)
    assert not budget.take(1)
    clock.advance(0.5)
    assert budget.take(500) and not budget.take(1)
    clock.advance(3600)
    assert budget.take(3000) and not budget.take(1)  # never more than the burst saved up


def asset_request(path: str, accept_encoding: str | None = "gzip") -> Request:
    headers = {} if accept_encoding is None else {"accept-encoding": accept_encoding}
    return Request("GET", path, "HTTP/1.1", headers)


def test_files_past_the_budget_are_503_with_retry_after() -> None:
    clock = Clock(0.0)
    largest = max(len(viewers.decompressed(asset.file)) for asset in ASSETS)
    config = ApiConfig(asset_budget=AssetBudget(rate=largest, burst=largest, clock=clock))
    path = "/docs/swagger-ui-bundle.js"
    first = answer_one(None, asset_request(path, None), config)
    assert first.status == HTTPStatus.OK and first.route == path
    refused = answer_one(None, asset_request(path, None), config)
    assert refused.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert refused.headers == {"Retry-After": "1"}
    # The rest of the API does not share the budget.
    assert answer_one(None, asset_request("/openapi.json"), config).status == HTTPStatus.OK
    clock.advance(1.0)
    assert answer_one(None, asset_request(path, None), config).status == HTTPStatus.OK


def test_a_file_sent_compressed_is_the_pinned_file() -> None:
    config = ApiConfig()
    for asset in ASSETS:
        answer = answer_one(None, asset_request(asset.path), config)
        assert answer.content_type == asset.content_type
        assert answer.headers is not None
        body = answer.body
        if asset.file.endswith(".gz"):
            assert answer.headers["Content-Encoding"] == "gzip"
            assert answer.headers["Vary"] == "Accept-Encoding"
            body = gzip.decompress(body)
        if asset.sha256 is not None:
            assert hashlib.sha256(body).hexdigest() == asset.sha256
