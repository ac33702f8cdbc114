"""The HTTP rows: `tokencli serve` on CPU 0 under wrk on CPU 1 against two constant-answer
floors (bench/floors.py), over HTTPS against plain HTTP, and with metrics against without.
Servers compared run side by side (an idle one costs nothing) and take turns under wrk,
three runs each, medians: minutes apart, one server measured 10 % apart on this machine."""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from pathlib import Path

from harness import (
    HERE,
    Bench,
    Server,
    WrkResult,
    build_database,
    client,
    copy_database,
    free_port,
    fresh,
    get,
    median_p99,
    median_rps,
    note,
    take_turns,
    tls_arguments,
    validate_script,
    wrk,
)


def check_answers(
    servers: dict[str, Server], token: str, tls: frozenset[str] = frozenset()
) -> None:
    """One validation through each server first: one that answers anything but a valid
    verdict (a TLS mistake, a wrong token list) fails its rows loudly, not quietly."""
    for name, server in servers.items():
        status, body = get(server.port, f"/app/valid/{token}", tls=name in tls)
        if status != 200 or json.loads(body).get("state") != "valid":
            raise RuntimeError(f"{name} answered {status} {body[:200]!r}")


def failures(*runs: list[WrkResult]) -> int:
    """Error answers and broken connections over all the runs."""
    return sum(run.failures for group in runs for run in group)


def http(bench: Bench) -> None:
    """Validation against both floors (all three taking turns), issuing, 1000
    connections, and the HTTP purge."""
    db = bench.work / "http.db"
    known = build_database(db, live=100_000, known=1_000)
    script = validate_script(bench.work, known)
    floors = str(HERE / "floors.py")
    ports = {name: free_port() for name in ("stdlib", "uvicorn", "ours")}
    servers: dict[str, Server] = {}
    try:
        for name, command in (
            ("stdlib", [bench.python, floors, "http", str(ports["stdlib"])]),
            ("uvicorn", [bench.python, floors, "asgi", str(ports["uvicorn"])]),
            ("ours", bench.serve(db, ports["ours"])),
        ):
            servers[name] = Server(command, ports[name])
        check_answers({"ours": servers["ours"]}, known[0])
        urls = {name: server.url() for name, server in servers.items()}
        runs = take_turns(urls, script, bench.wrk_seconds)
        ours = servers["ours"].url()
        issue = wrk(
            f"{ours}/app/token",
            connections=64,
            script=HERE / "issue.lua",
            seconds=bench.wrk_seconds,
        )
        crowd = wrk(ours, connections=1000, script=script, seconds=bench.wrk_seconds)
    finally:
        for server in servers.values():
            server.stop()
    fresh(db)
    turns = zip(runs["ours"], runs["stdlib"], runs["uvicorn"], strict=True)
    shown = "; ".join(", ".join(f"{run.rps:,.0f}" for run in turn) for turn in turns)
    note(f"validation by turns (ours, stdlib, uvicorn): {shown}")
    rps = {name: median_rps(each) for name, each in runs.items()}
    p99 = {name: median_p99(each) for name, each in runs.items()}
    ratio = rps["ours"] / rps["stdlib"]
    bench.table.record(
        "HTTP validate, 64 connections (req/s)",
        f"{rps['ours']:,.0f}/s, p99 {p99['ours']:.1f} ms",
        f"{rps['stdlib']:,.0f}/s, p99 {p99['stdlib']:.1f} ms (stdlib, constant answer)",
        ratio,
        ">= 0.6x, p99 < 20 ms",
        ratio >= 0.6 and p99["ours"] < 20 and failures(runs["ours"]) == 0,
    )
    ratio = rps["ours"] / rps["uvicorn"]
    bench.table.record(
        "HTTP validate, 64 connections vs uvicorn floor",
        f"{rps['ours']:,.0f}/s, p99 {p99['ours']:.1f} ms",
        f"{rps['uvicorn']:,.0f}/s, p99 {p99['uvicorn']:.1f} ms (uvicorn+uvloop+httptools)",
        ratio,
        ">= 0.8x",
        ratio >= 0.8 and failures(runs["ours"], runs["uvicorn"]) == 0,
    )
    bench.table.record(
        "HTTP issue, 64 connections (req/s)",
        f"{issue.rps:,.0f}/s, p99 {issue.p99_ms:.1f} ms",
        "-",
        None,
        ">= 5000/s, p99 < 50 ms",
        issue.rps >= 5000 and issue.p99_ms < 50 and issue.failures == 0,
    )
    bench.table.record(
        "HTTP validate, 1000 connections",
        f"{crowd.rps:,.0f}/s, p99 {crowd.p99_ms:.0f} ms, {crowd.failures} failed",
        "-",
        None,
        "0 failed, p99 < 1 s",
        crowd.failures == 0 and crowd.p99_ms < 1000,
    )
    http_purge(bench)


def http_purge(bench: Bench) -> None:
    """DELETE /app/clear/all/tokens of 100k expired against one raw DELETE on a copy."""
    base = bench.work / "http-purge-base.db"
    build_database(base, live=10_000, expired=100_000)
    ours: list[float] = []
    floor: list[float] = []
    for _ in range(3):
        db = copy_database(base, bench.work / "http-purge.db")
        port = free_port()
        server = Server(bench.serve(db, port), port)
        try:
            connection = client(port, timeout=60)
            started = time.perf_counter()
            connection.request("DELETE", "/app/clear/all/tokens")
            body = json.loads(connection.getresponse().read())
            ours.append(time.perf_counter() - started)
            connection.close()
        finally:
            server.stop()
        if body.get("purged") != 100_000:
            raise RuntimeError(f"purge answered {body}")
        raw = sqlite3.connect(copy_database(base, db), isolation_level=None)
        raw.execute("PRAGMA synchronous = NORMAL")
        started = time.perf_counter()
        raw.execute("DELETE FROM tokens WHERE ends_at <= ?", (int(time.time()),))
        floor.append(time.perf_counter() - started)
        raw.close()
    ratio = statistics.median(ours) / statistics.median(floor)
    bench.table.record(
        "HTTP purge of 100k expired",
        f"{statistics.median(ours) * 1000:.0f} ms",
        f"{statistics.median(floor) * 1000:.0f} ms (one DELETE)",
        ratio,
        "<= 1.2x",
        ratio <= 1.2,
    )
    fresh(base, bench.work / "http-purge.db")


def side_by_side(bench: Bench, variants: dict[str, list[str]]) -> dict[str, list[WrkResult]]:
    """One `tokencli serve` per variant (its extra options), each on its own copy of a
    database of 100,000 live tokens, wrk taking turns between them."""
    base = bench.work / "side-base.db"
    known = build_database(base, live=100_000, known=1_000)
    script = validate_script(bench.work, known)
    copies: list[Path] = []
    servers: dict[str, Server] = {}
    tls = frozenset(name for name, extra in variants.items() if "--tls-cert" in extra)
    try:
        for name, extra in variants.items():
            copies.append(copy_database(base, bench.work / f"side-{len(copies)}.db"))
            port = free_port()
            servers[name] = Server(bench.serve(copies[-1], port, *extra), port)
        check_answers(servers, known[0], tls)
        urls = {n: s.url("https" if n in tls else "http") for n, s in servers.items()}
        return take_turns(urls, script, bench.wrk_seconds)
    finally:
        for server in servers.values():
            server.stop()
        fresh(base, *copies)


def https(bench: Bench) -> None:
    """Validation over HTTPS against plain HTTP, the same server (reported, no target)."""
    runs = side_by_side(bench, {"http": [], "https": tls_arguments(bench.work)})
    plain, tls = runs["http"], runs["https"]
    bench.table.record(
        "HTTPS validate, 64 connections vs plain HTTP",
        f"{median_rps(tls):,.0f}/s, p99 {median_p99(tls):.1f} ms (HTTPS)",
        f"{median_rps(plain):,.0f}/s, p99 {median_p99(plain):.1f} ms (plain HTTP)",
        median_rps(tls) / median_rps(plain),
        "(reported) 0 failed",
        failures(plain, tls) == 0,
        {"https_rps": [run.rps for run in tls], "http_rps": [run.rps for run in plain]},
    )


def metrics(bench: Bench) -> None:
    """Validation with metrics on (the default) against --no-metrics."""
    runs = side_by_side(bench, {"on": [], "off": ["--no-metrics"]})
    on, off = runs["on"], runs["off"]
    ratio = median_rps(on) / median_rps(off)
    bench.table.record(
        "HTTP validate, metrics on vs --no-metrics",
        f"{median_rps(on):,.0f}/s, p99 {median_p99(on):.1f} ms (metrics on)",
        f"{median_rps(off):,.0f}/s, p99 {median_p99(off):.1f} ms (--no-metrics)",
        ratio,
        ">= 0.95x",
        ratio >= 0.95 and failures(on, off) == 0,
        {"on_rps": [run.rps for run in on], "off_rps": [run.rps for run in off]},
    )
