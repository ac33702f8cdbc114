"""The HTTP rows: `tokencli serve` under wrk against two constant-answer floors, over
HTTPS against plain HTTP, and with metrics against without.

- floor_server.py: the standard library's ThreadingHTTPServer answering a constant.
- floor_asgi.py: a constant-answer ASGI app on uvicorn with uvloop and httptools, the
  fastest Python HTTP stack we know of; installed in bench/.venv only.

Both floors answer the bytes tokencli answers a valid token with, on the same CPU with
the same wrk script. The stdlib floor runs first, then tokencli; the uvicorn floor, the
TLS and the metrics rows run the two servers they compare side by side (the idle one
costing nothing) and take turns, three runs each, median: minutes apart, the same
server measured 10 % apart on this machine, as much as the margin of a target.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import ssl
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
    note,
    record,
    serve_command,
    tls_arguments,
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


def against_uvicorn(
    python: str, tokencli: str, db: Path, script: Path
) -> tuple[list[WrkResult], list[WrkResult]]:
    """The uvicorn floor and `tokencli serve` side by side on CPU 0, wrk taking turns."""
    floor_port = free_port()
    floor = Background([python, str(HERE / "floor_asgi.py"), str(floor_port)], floor_port)
    try:
        port = free_port()
        ours = Background(serve_command(tokencli, db, port), port)
        try:
            runs = take_turns(
                {"uvicorn": f"http://{HOST}:{floor_port}", "ours": f"http://{HOST}:{port}"},
                script,
            )
        finally:
            ours.stop()
    finally:
        floor.stop()
    return runs["uvicorn"], runs["ours"]


def bench_http(tokencli: str, python: str, work: Path) -> None:
    """Validation and issuing over HTTP, against both floors."""
    db = work / "http.db"
    known = build_database(db, live=100_000, expired=0, known=1_000)
    validate_lua = validate_script(work, known)

    floor = measure_floor(python, "floor_server.py", validate_lua)
    uvicorn_runs, ours_runs = against_uvicorn(python, tokencli, db, validate_lua)

    results: dict[str, WrkResult] = {}
    for workers in (0, 2):
        port = free_port()
        server = Background(serve_command(tokencli, db, port, "--workers", str(workers)), port)
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
    note(
        "validate vs uvicorn, runs (ours / uvicorn by turns): "
        + ", ".join(
            f"{mine.rps:,.0f} / {theirs.rps:,.0f}"
            for mine, theirs in zip(ours_runs, uvicorn_runs, strict=True)
        )
    )
    ratio_uvicorn = median_rps(ours_runs) / median_rps(uvicorn_runs)
    record(
        "HTTP validate, 64 connections vs uvicorn floor",
        f"{median_rps(ours_runs):,.0f}/s, p99 {median_p99(ours_runs):.1f} ms",
        f"{median_rps(uvicorn_runs):,.0f}/s, p99 {median_p99(uvicorn_runs):.1f} ms"
        " (uvicorn+uvloop+httptools)",
        ratio_uvicorn,
        ">= 0.8x",
        ratio_uvicorn >= 0.8 and all(run.non_2xx == 0 for run in (*ours_runs, *uvicorn_runs)),
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
        server = Background(serve_command(tokencli, ours_db, port), port)
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


def take_turns(
    urls: dict[str, str], script: Path, *, rounds: int = 3, connections: int = 64
) -> dict[str, list[WrkResult]]:
    """wrk against each server in turn (a, b, a, b, ...), `rounds` times: a slow minute on
    a shared machine then lands on both rather than on whichever ran in it."""
    results: dict[str, list[WrkResult]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            results[name].append(wrk(url, connections=connections, script=script))
    return results


def median_rps(runs: list[WrkResult]) -> float:
    return statistics.median(run.rps for run in runs)


def median_p99(runs: list[WrkResult]) -> float:
    return statistics.median(run.p99_ms for run in runs)


def side_by_side(
    tokencli: str, work: Path, name: str, variants: dict[str, list[str]]
) -> dict[str, list[WrkResult]]:
    """Start one `tokencli serve` per variant (extra options), each on its own copy of a
    database of 100,000 live tokens, and let wrk take turns between them."""
    base = work / f"{name}-base.db"
    known = build_database(base, live=100_000, expired=0, known=1_000)
    script = validate_script(work, known)
    servers: dict[str, Background] = {}
    urls: dict[str, str] = {}
    try:
        for variant, extra in variants.items():
            db = work / f"{name}-{len(servers)}.db"
            fresh(db)
            shutil.copy(base, db)
            port = free_port()
            servers[variant] = Background(serve_command(tokencli, db, port, *extra), port)
            scheme = "https" if "--tls-cert" in extra else "http"
            urls[variant] = f"{scheme}://{HOST}:{port}"
        check_answers(urls, known[0])
        return take_turns(urls, script)
    finally:
        for server in servers.values():
            server.stop()
        for index in range(len(variants)):
            fresh(work / f"{name}-{index}.db")
        fresh(base)


def check_answers(urls: dict[str, str], token: str) -> None:
    """One validation through each server before measuring: a server that answers
    something else than 200 (a TLS mistake, a bad token list) fails the row loudly."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    for variant, url in urls.items():
        scheme, _, rest = url.partition("://")
        port = int(rest.rsplit(":", 1)[1])
        connection: http.client.HTTPConnection = (
            http.client.HTTPSConnection(HOST, port, timeout=10, context=unverified)
            if scheme == "https"
            else http.client.HTTPConnection(HOST, port, timeout=10)
        )
        try:
            connection.request("GET", f"/app/valid/{token}")
            response = connection.getresponse()
            body = json.loads(response.read())
        finally:
            connection.close()
        if response.status != 200 or body.get("state") != "valid":
            raise RuntimeError(f"{variant} answered {response.status} {body}")


def bench_tls(tokencli: str, work: Path) -> None:
    """Validation over HTTPS against plain HTTP, same server, same run (no target)."""
    results = side_by_side(tokencli, work, "tls", {"http": [], "https": tls_arguments(work)})
    plain, tls = results["http"], results["https"]
    ratio = median_rps(tls) / median_rps(plain)
    failures = sum(run.non_2xx + run.socket_errors for run in plain + tls)
    record(
        "HTTPS validate, 64 connections vs plain HTTP",
        f"{median_rps(tls):,.0f}/s, p99 {median_p99(tls):.1f} ms (HTTPS)",
        f"{median_rps(plain):,.0f}/s, p99 {median_p99(plain):.1f} ms (plain HTTP)",
        ratio,
        "(reported, no target)",
        failures == 0,
        {
            "https_rps": [run.rps for run in tls],
            "http_rps": [run.rps for run in plain],
            "https_p99_ms": [run.p99_ms for run in tls],
            "http_p99_ms": [run.p99_ms for run in plain],
            "failures": failures,
        },
    )


def bench_metrics(tokencli: str, work: Path) -> None:
    """Validation throughput with metrics on (the default) against --no-metrics."""
    results = side_by_side(tokencli, work, "metrics", {"on": [], "off": ["--no-metrics"]})
    on, off = results["on"], results["off"]
    ratio = median_rps(on) / median_rps(off)
    failures = sum(run.non_2xx + run.socket_errors for run in on + off)
    note(
        "metrics runs (on, off by turns): "
        + ", ".join(f"{a.rps:,.0f} / {b.rps:,.0f}" for a, b in zip(on, off, strict=True))
    )
    record(
        "HTTP validate, metrics on vs --no-metrics",
        f"{median_rps(on):,.0f}/s, p99 {median_p99(on):.1f} ms (metrics on)",
        f"{median_rps(off):,.0f}/s, p99 {median_p99(off):.1f} ms (--no-metrics)",
        ratio,
        ">= 0.95x",
        ratio >= 0.95 and failures == 0,
        {
            "on_rps": [run.rps for run in on],
            "off_rps": [run.rps for run in off],
            "failures": failures,
        },
    )
