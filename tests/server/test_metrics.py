"""GET /metrics: the Prometheus text format, parsed by prometheus-client's own parser; the
counts move with the requests sent; never a token ID or secret in a label."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import ADMIN_KEY, Served, component


def scrape(served: Served, headers: dict[str, str] | None = None) -> dict[str, list[Any]]:
    status, response_headers, body = served.request("GET", "/metrics", headers=headers)
    assert status == 200, body
    assert response_headers["Content-Type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def value(samples: list[Any], name: str | None = None, **labels: str) -> float:
    """The value of the one sample named `name` (if given) whose labels include `labels`
    (0 if there is none)."""
    found = [
        sample.value
        for sample in samples
        if (name is None or sample.name == name)
        and all(sample.labels.get(key) == wanted for key, wanted in labels.items())
    ]
    assert len(found) <= 1, found
    return float(found[0]) if found else 0.0


def test_counters_move_with_the_requests(serve: Callable[..., Served]) -> None:
    served = serve()
    before = scrape(served)
    tokens = [served.request("POST", "/app/token")[2]["token"] for _ in range(3)]
    for token in tokens:
        served.request("GET", f"/app/valid/{token}")
    served.request("GET", "/app/valid/nonsense")
    served.request("GET", "/nowhere")
    after = scrape(served)
    issued = after["tokencli_tokens_issued"]
    assert value(issued, name="tokencli_tokens_issued_total") == 3
    verdicts = after["tokencli_validations"]
    assert value(verdicts, verdict="valid") == 3
    assert value(verdicts, verdict="malformed") == 1
    requests = after["tokencli_http_requests"]
    assert value(requests, route="/app/valid/{token}", method="GET", status="200") == 4
    assert value(requests, route="/app/token", method="POST", status="200") == 3
    assert value(requests, route="unmatched", method="GET", status="404") == 1
    assert value(before["tokencli_http_requests"], route="/app/token") == 0
    durations = after["tokencli_http_request_duration_seconds"]
    assert value(durations, name="tokencli_http_request_duration_seconds_count") >= 9
    # One transaction per request that needs the store (sent one at a time here); the
    # 404 and the scrapes need none.
    batches = after["tokencli_batch_size"]
    assert value(batches, name="tokencli_batch_size_count") == 7
    assert value(after["tokencli_open_connections"]) >= 1  # the scrape's own
    assert value(after["tokencli_store_wal_bytes"]) >= 0


def test_purged_tokens_are_counted(serve: Callable[..., Served]) -> None:
    served = serve()
    for _ in range(2):
        token = served.request("POST", "/app/token", body='{"uses": 1}')[2]["token"]
        served.request("GET", f"/app/valid/{token}")  # used up
    served.request("DELETE", "/app/clear/all/tokens")
    purged = scrape(served)["tokencli_tokens_purged"]
    assert value(purged, name="tokencli_tokens_purged_total") == 2


def test_no_token_id_or_secret_in_any_label(serve: Callable[..., Served]) -> None:
    served = serve()
    token = served.request("POST", "/app/token")[2]["token"]
    token_id, secret = token.split(":")
    served.request("GET", f"/app/valid/{token}")
    served.request("GET", f"/app/tokens/{token_id}")
    served.request("GET", f"/{token}")
    served.request("BREW", f"/app/valid/{token}")  # an odd method is counted as "other"
    text = served.request("GET", "/metrics")[2].decode()
    assert token_id not in text and secret not in text
    assert 'method="BREW"' not in text and 'method="other"' in text


def test_metrics_need_the_admin_key_when_one_is_set(serve: Callable[..., Served]) -> None:
    served = serve(admin_key=ADMIN_KEY)
    assert served.request("GET", "/metrics")[0] == 401
    assert served.request("GET", "/metrics", headers={"Authorization": "Bearer nope"})[0] == 401
    scrape(served, {"Authorization": f"Bearer {ADMIN_KEY}"})


def test_metrics_can_be_turned_off(serve: Callable[..., Served]) -> None:
    served = serve(metrics=False)
    status, _, payload = served.request("GET", "/metrics")
    assert status == 404 and "off" in payload["detail"]


def test_a_known_route_asked_with_another_method_is_counted_as_that_route(
    serve: Callable[..., Served],
) -> None:
    """Issue 19 item 4: a 405 was counted as route="unmatched"; the path is a route's."""
    served = serve()
    assert served.request("PUT", "/app/token")[0] == 405
    assert served.request("PATCH", "/app/tokens/abcdefgh2345")[0] == 405
    assert served.request("BREW", "/health")[0] == 405
    assert served.request("PUT", "/nowhere")[0] == 404
    requests = scrape(served)["tokencli_http_requests"]
    assert value(requests, route="/app/token", method="PUT", status="405") == 1
    assert value(requests, route="/app/tokens/{id}", method="PATCH", status="405") == 1
    assert value(requests, route="/health", method="other", status="405") == 1
    assert value(requests, route="unmatched", method="PUT", status="404") == 1
    assert value(requests, route="unmatched", status="405") == 0


@pytest.mark.interop
def test_promtool_accepts_the_metrics_page(serve: Callable[..., Served]) -> None:
    """`promtool check metrics` (the real one) finds no problem and no lint, after
    requests of every kind have put samples in every family."""
    promtool = component("promtool", package="prometheus")
    served = serve(admin_key=ADMIN_KEY)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    token = served.request("POST", "/app/token", headers=admin)[2]["token"]
    served.request("GET", f"/app/valid/{token}")
    served.request("POST", "/app/valid", body='{"token": "nonsense"}')
    served.request("POST", "/app/token")  # 401
    served.request("POST", "/app/token", body="{", headers=admin)  # 400
    served.request("DELETE", "/app/clear/all/tokens", headers=admin)
    served.request("PUT", "/app/token")  # 405
    served.request("BREW", "/nowhere")  # 404, method "other"
    page = served.request("GET", "/metrics", headers=admin)[2]
    assert b'route="/app/token"' in page and b"tokencli_store_wal_bytes" in page
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=page, capture_output=True, timeout=60
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b"")
