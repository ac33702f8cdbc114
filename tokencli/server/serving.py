"""The life of `tokencli serve`: options in, a bound server out, then signals until stop.

`build_server(options)` is the one way a server is made, by the CLI and by the tests
alike: it checks the options (a public address needs an admin key), reads the keys,
builds the TLS context, raises the open-file limit, opens the store and binds. `run`
then does what uvicorn's `Server.run` does: the loop on a thread, SIGINT and SIGTERM
finish the requests in flight and exit 0, SIGHUP re-reads the key files, and a loop that
fails makes the exit code 1 so a supervisor restarts it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple, TextIO

from tokencli.domain.errors import InvalidRequestError, TokencliError
from tokencli.domain.location import Location
from tokencli.http.answers import ApiConfig, Keys
from tokencli.http.forwarded import parse_networks
from tokencli.http.keys import ADMIN_KEY_ENV, KeySource, key_file_is_shared, load_keys
from tokencli.http.metrics import Counters, Exposition
from tokencli.server.accesslog import AccessLogFormat
from tokencli.server.config import Limits, ServerConfig, descriptor_budget, is_loopback, tls_context
from tokencli.server.server import TokenHTTPServer
from tokencli.store.factory import open_backend


class ServeOptions(NamedTuple):
    """Everything `tokencli serve` can be told; the tests set the same fields."""

    location: Location
    host: str = "127.0.0.1"
    port: int = 8000
    admin_key_file: Path | None = None
    validate_key_file: Path | None = None
    # Where $TOKENCLI_ADMIN_KEY and $TOKENCLI_VALIDATE_KEY are read (None: os.environ).
    environ: Mapping[str, str] | None = None
    allow_unauthenticated: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    access_log: AccessLogFormat = AccessLogFormat.TEXT
    log_stream: TextIO | None = None  # None: stderr
    metrics: bool = True
    max_connections: int | None = None
    trusted_proxies: tuple[str, ...] = ()  # addresses or networks (--trusted-proxy)
    limits: Limits = Limits()
    clock: Callable[[], float] = time.time


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def build_server(
    options: ServeOptions, warn: Callable[[str], None] = lambda message: None
) -> TokenHTTPServer:
    """A server bound to its port and ready to `serve_forever`; InvalidRequestError (a
    usage error, exit 2) for options that cannot work, StorageError for the database."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise InvalidRequestError("give --tls-cert and --tls-key together")
    source = KeySource(options.admin_key_file, options.validate_key_file)
    environ = os.environ if options.environ is None else options.environ
    keys = load_keys(source, environ)
    for key_file in (options.admin_key_file, options.validate_key_file):
        if key_file is not None and key_file_is_shared(key_file):
            warn(f"key file {key_file} is readable by others; chmod 600 it")
    public = not is_loopback(options.host)
    if keys.admin is None and public and not options.allow_unauthenticated:
        raise InvalidRequestError(
            f"refusing to listen on {options.host} with no admin key: set ${ADMIN_KEY_ENV} or "
            "--admin-key-file, or pass --allow-unauthenticated"
        )
    tls = None
    if options.tls_cert is not None and options.tls_key is not None:
        try:
            tls = tls_context(str(options.tls_cert), str(options.tls_key))
        except ValueError as error:
            raise InvalidRequestError(str(error)) from None
    elif public and (keys.admin is not None or keys.validate is not None):
        warn(
            f"serving plain HTTP on {options.host}: keys and tokens cross the network in "
            "cleartext unless a proxy in front terminates TLS (--tls-cert/--tls-key)"
        )
    try:
        trusted_proxies = parse_networks(options.trusted_proxies)
    except ValueError as error:
        raise InvalidRequestError(str(error)) from None
    budget = descriptor_budget()
    wanted = options.max_connections or options.limits.max_connections or budget
    limits = options.limits._replace(max_connections=min(wanted, budget))
    logging = options.access_log is not AccessLogFormat.OFF
    config = ServerConfig(
        host=options.host,
        port=options.port,
        limits=limits,
        tls=tls,
        access_log=(options.log_stream or sys.stderr) if logging else None,
        access_log_format=options.access_log,
        metrics=options.metrics,
        key_source=source,
        trusted_proxies=trusted_proxies,
    )
    backend = open_backend(options.location)
    counters = Counters()
    exposition = Exposition(counters, backend.gauges) if options.metrics else None
    api_config = ApiConfig(
        keys, counters=counters, metrics_page=exposition.render if exposition else None
    )
    try:
        server = TokenHTTPServer(
            backend, config, api_config, clock=options.clock, counters=counters
        )
    except OSError as error:
        raise InvalidRequestError(
            f"cannot listen on {options.host}:{options.port}: {error.strerror or error}"
        ) from None
    api_config.report = server.report
    return server


def reload_keys(api_config: ApiConfig, source: KeySource, report: Callable[[str], None]) -> None:
    """Swap in the keys the files hold now; keep the old ones if a file became unusable."""
    try:
        fresh = load_keys(source, os.environ)
    except TokencliError as error:
        report(f"keys not reloaded, the old ones stay in force: {error}")
        return
    old = api_config.keys
    # A key the files no longer give (a file removed) keeps its old value; only the
    # environment can unset a key, and it does not change under a running process.
    api_config.keys = Keys(
        admin=fresh.admin if source.admin_file else old.admin,
        validate=fresh.validate if source.validate_file else old.validate,
    )
    report("keys reloaded")


def run(server: TokenHTTPServer) -> int:
    """Serve until SIGINT or SIGTERM; the process's exit code."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            server.serve_forever()
        except BaseException as error:  # the loop itself failed: exit non-zero
            failure.append(error)
        finally:
            stop.set()

    handlers = {
        signal.SIGINT: lambda *_: stop.set(),
        signal.SIGTERM: lambda *_: stop.set(),
        signal.SIGHUP: lambda *_: reload_keys(
            server.api_config, server.config.key_source, server.report
        ),
    }
    previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        thread = threading.Thread(target=loop, name="event-loop", daemon=True)
        thread.start()
        _say(f"listening on {server.url}")
        _say(f"database: {server.backend.location}")
        while not stop.wait(0.5):
            pass
        if failure:
            server.report(f"the event loop failed: {type(failure[0]).__name__}: {failure[0]}")
            return 1
        _say("stopping: finishing requests in flight")
        server.stop()
        thread.join(timeout=server.limits.request_timeout + 5)
        return 1 if failure else 0
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
