"""The server's group commit on each store: the in-process server over a SQLite file and
over a PostgreSQL schema (a PostgresBackend): on the event loop and on the store thread."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tokencli.domain.location import Location

from support import Served

pytestmark = pytest.mark.stores("sqlite", "postgres")


def pipelined(port: int, targets: list[str]) -> list[Any]:
    """Send GET requests all at once on one connection; their JSON answers, in order."""
    wire = "".join(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n" for target in targets)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(wire.encode())
        stream = client.makefile("rb")
        bodies = []
        for _ in targets:
            assert stream.readline().startswith(b"HTTP/1.1 200 ")
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            bodies.append(json.loads(stream.read(length)))
    return bodies


def test_a_pipelined_batch_grants_a_single_use_token_once(
    served: Served, location: Location
) -> None:
    status, _, body = served.request("POST", "/app/token", body='{"uses": 1, "label": "once"}')
    assert status == 200
    token = body["token"]
    status, _, other = served.request("POST", "/app/token")
    assert status == 200
    # Seven requests arrive together: one batch, one transaction, one commit.
    targets = [f"/app/valid/{token}"] * 5 + ["/app/valid/not-a-token"]
    targets.insert(2, f"/app/valid/{other['token']}")
    bodies = pipelined(served.port, targets)
    assert [(b["status"], b["state"]) for b in bodies] == [
        (True, "valid"),
        (False, "used_up"),
        (True, "valid"),
        (False, "used_up"),
        (False, "used_up"),
        (False, "used_up"),
        (False, "malformed"),
    ]
    assert bodies[0]["uses_left"] == 0 and bodies[1]["uses_left"] == 0
    status, _, purged = served.request("DELETE", "/app/clear/all/tokens")
    assert (status, purged["purged"]) == (200, 1)
    status, _, health = served.request("GET", "/health")
    assert status == 200, health
    assert served.request("GET", f"/app/valid/{token}")[2]["state"] == "unknown"
    assert served.request("GET", f"/app/valid/{other['token']}")[2]["status"] is True


def test_a_label_filter_holding_nul_lists_nothing_on_either_store(served: Served) -> None:
    status, _, body = served.request("POST", "/app/token", body='{"label": "a"}')
    assert status == 200
    for query in ("label=%00", "label=a%00", "label=a%00&all=true"):
        status, _, listed = served.request("GET", f"/app/tokens?{query}")
        assert (status, listed["tokens"]) == (200, []), query
    status, _, listed = served.request("GET", "/app/tokens?label=a")
    assert [item["label"] for item in listed["tokens"]] == ["a"]
