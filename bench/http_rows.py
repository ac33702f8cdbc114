"""The HTTP rows: `tokencli serve` under wrk against two constant-answer floors.

- floor_server.py: the standard library's ThreadingHTTPServer answering a constant.
- floor_asgi.py: a constant-answer ASGI app on uvicorn with uvloop and httptools, the
  fastest Python HTTP stack we know of; installed in bench/.venv only.

Both floors, then tokencli, run in the same minutes on the same CPU with the same wrk
script, so the ratios compare like with like.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import statistics
import time
from pathlib import Path

from common import (
    HERE,
    HOST,
    Background,
    WrkResult,
    build_database,
    free_port,
    fresh,
    record,
    validate_script,
    wrk,
)


def measure_floor(python: str, floor: str, script: Path) -> WrkResult:
    """wrk with 64 connections against one floor server (a bench/ script taking PORT)."""
    port = free_port()
    server = Background([python, str(HERE / floor), str(port)], port)
    try:
        return wrk(f"http://{HOST}:{port}", connections=64, script=script)
    finally:
        server.stop()


def bench_http(tokencli: str, python: str, work: Path) -> None:
    """Validation and issuing over HTTP, against both floors."""
    db = work / "http.db"
    known = build_database(db, live=100_000, expired=0, known=1_000)
    validate_lua = validate_script(work, known)

    floor = measure_floor(python, "floor_server.py", validate_lua)
    uvicorn = measure_floor(python, "floor_asgi.py", validate_lua)

    results: dict[str, WrkResult] = {}
    for workers in (0, 2):
        port = free_port()
        server = Background(
            [
                tokencli,
                "--db",
                str(db),
                "serve",
                "--quiet",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            port,
        )
        try:
            results[f"validate-{workers}"] = wrk(
                f"http://{HOST}:{port}", connections=64, script=validate_lua
            )
            if workers == 0:
                results["issue"] = wrk(
                    f"http://{HOST}:{port}/app/token", connections=64, script=HERE / "issue.lua"
                )
                results["validate-1000"] = wrk(
                    f"http://{HOST}:{port}", connections=1000, script=validate_lua
                )
        finally:
            server.stop()

    ours = results["validate-0"]
    ratio = ours.rps / floor.rps
    record(
        "HTTP validate, 64 connections (req/s)",
        f"{ours.rps:,.0f}/s, p99 {ours.p99_ms:.1f} ms",
        f"{floor.rps:,.0f}/s, p99 {floor.p99_ms:.1f} ms (constant answer)",
        ratio,
        ">= 0.6x, p99 < 20 ms",
        ratio >= 0.6 and ours.p99_ms < 20 and ours.non_2xx == 0,
    )
    against_uvicorn = ours.rps / uvicorn.rps
    record(
        "HTTP validate, 64 connections vs uvicorn floor",
        f"{ours.rps:,.0f}/s, p99 {ours.p99_ms:.1f} ms",
        f"{uvicorn.rps:,.0f}/s, p99 {uvicorn.p99_ms:.1f} ms (uvicorn+uvloop+httptools)",
        against_uvicorn,
        ">= 0.8x",
        against_uvicorn >= 0.8 and ours.non_2xx == 0 and uvicorn.non_2xx == 0,
    )
    pooled = results["validate-2"]
    record(
        "HTTP validate, 64 conns, --workers 2",
        f"{pooled.rps:,.0f}/s, p99 {pooled.p99_ms:.1f} ms",
        f"{floor.rps:,.0f}/s",
        pooled.rps / floor.rps,
        "(comparison only)",
        True,
    )
    issue = results["issue"]
    record(
        "HTTP issue, 64 connections (req/s)",
        f"{issue.rps:,.0f}/s, p99 {issue.p99_ms:.1f} ms",
        "-",
        None,
        ">= 5000/s, p99 < 50 ms",
        issue.rps >= 5000 and issue.p99_ms < 50 and issue.non_2xx == 0,
    )
    crowd = results["validate-1000"]
    record(
        "HTTP validate, 1000 connections",
        f"{crowd.rps:,.0f}/s, p99 {crowd.p99_ms:.0f} ms, {crowd.socket_errors} socket errors",
        "-",
        None,
        "0 errors, p99 < 1 s",
        crowd.socket_errors == 0 and crowd.p99_ms < 1000 and crowd.non_2xx == 0,
    )
    bench_http_purge(tokencli, work)
    fresh(db)


def bench_http_purge(tokencli: str, work: Path) -> None:
    """DELETE /app/clear/all/tokens on 100k expired against one raw DELETE on a copy."""
    base = work / "http-purge-base.db"
    build_database(base, live=10_000, expired=100_000)
    timings_ours: list[float] = []
    timings_floor: list[float] = []
    for _ in range(3):
        ours_db, floor_db = work / "http-purge.db", work / "http-purge-floor.db"
        for target in (ours_db, floor_db):
            fresh(target)
            shutil.copy(base, target)
        port = free_port()
        server = Background(
            [tokencli, "--db", str(ours_db), "serve", "--quiet", "--port", str(port)], port
        )
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=60)
            started = time.perf_counter()
            connection.request("DELETE", "/app/clear/all/tokens")
            body = json.loads(connection.getresponse().read())
            timings_ours.append(time.perf_counter() - started)
            connection.close()
            if body.get("purged") != 100_000:
                raise RuntimeError(f"purge answered {body}")
        finally:
            server.stop()
        raw = sqlite3.connect(floor_db, isolation_level=None)
        raw.execute("PRAGMA synchronous = NORMAL")
        started = time.perf_counter()
        raw.execute("DELETE FROM tokens WHERE ends_at <= ?", (int(time.time()),))
        timings_floor.append(time.perf_counter() - started)
        raw.close()
    ours, floor = statistics.median(timings_ours), statistics.median(timings_floor)
    ratio = ours / floor
    record(
        "HTTP purge of 100k expired",
        f"{ours * 1000:.0f} ms",
        f"{floor * 1000:.0f} ms (one DELETE)",
        ratio,
        "<= 1.2x",
        ratio <= 1.2,
    )
    fresh(base)
