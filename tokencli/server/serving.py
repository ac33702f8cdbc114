"""The life of `tokencli serve`: open, bind, signals, the loop's thread, reload, stop.

As uvicorn's `Server.run` does for it: the CLI only parses options and calls `run`.
SIGINT and SIGTERM finish the requests in flight and exit 0; SIGHUP re-reads the key
files; if the event loop itself fails, `run` returns 1 so a supervisor restarts it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from tokencli.domain.errors import InvalidRequestError, TokencliError
from tokencli.domain.location import Location
from tokencli.http.api import ApiConfig, Keys
from tokencli.http.keys import KeySource, load_keys
from tokencli.http.metrics import Counters, Exposition
from tokencli.server.config import ServerConfig
from tokencli.server.server import TokenHTTPServer
from tokencli.store.factory import open_backend


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def reload_keys(api_config: ApiConfig, source: KeySource, report: Callable[[str], None]) -> None:
    """Swap in the keys the files hold now; keep the old ones if a file became unusable."""
    try:
        fresh = load_keys(source)
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


def run(location: Location, config: ServerConfig, keys: Keys, source: KeySource) -> int:
    """Serve until SIGINT or SIGTERM; the process's exit code."""
    backend = open_backend(location)
    counters = Counters()
    exposition = Exposition(counters, backend.gauges) if config.metrics else None
    api_config = ApiConfig(
        keys,
        counters=counters,
        metrics_page=exposition.render if exposition is not None else None,
        report=lambda message: _say(f"tokencli serve: {message}"),
    )
    try:
        server = TokenHTTPServer(backend, config, api_config, counters=counters)
    except OSError as error:
        raise InvalidRequestError(
            f"cannot listen on {config.host}:{config.port}: {error.strerror or error}"
        ) from None
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
        signal.SIGHUP: lambda *_: reload_keys(api_config, source, server.report),
    }
    previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        thread = threading.Thread(target=loop, name="event-loop", daemon=True)
        thread.start()
        _say(f"listening on {server.url}")
        _say(f"database: {backend.location}")
        while not stop.wait(0.5):
            pass
        if failure:
            server.report(f"the event loop failed: {type(failure[0]).__name__}: {failure[0]}")
            return 1
        _say("stopping: finishing requests in flight")
        server.stop()
        thread.join(timeout=config.limits.request_timeout + 5)
        return 1 if failure else 0
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
