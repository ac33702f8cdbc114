"""Behind a real nginx (issue 19 item 4): with `--trusted-proxy`, the access log names the
client nginx saw, whatever that client forged; a client talking to tokencli directly is
logged as itself, whatever it forged.

All on loopback, told apart by source address: the test's client reaches nginx from
127.0.0.3, nginx reaches tokencli from 127.0.0.2 (`proxy_bind`), the only trusted proxy,
and a direct client comes from 127.0.0.1.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import NamedTuple

import pytest

from support import component, needs_executable, serve_process

PROXY = "127.0.0.2"
BEHIND = "127.0.0.3"

pytestmark = [pytest.mark.interop, needs_executable]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


NGINX_CONF = """
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream tokencli {{
        server 127.0.0.1:{upstream};
        keepalive 4;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://tokencli;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_bind {proxy};
            # As the README says: append to X-Forwarded-For, and drop a Forwarded header a
            # client sent (nginx would pass it through, and tokencli believes neither
            # header when the two disagree).
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Forwarded "";
        }}
    }}
}}
"""


class Setup(NamedTuple):
    nginx_port: int
    tokencli_port: int
    entries: queue.Queue[dict[str, object]]  # the access log's JSON lines as they come


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[Setup]:
    """`tokencli serve --trusted-proxy 127.0.0.2` with a real nginx proxying to it."""
    nginx = component("nginx", package="nginx")
    with serve_process("--trusted-proxy", PROXY, "--access-log", "json") as (process, client):
        entries: queue.Queue[dict[str, object]] = queue.Queue()
        stream = process.stderr
        assert stream is not None

        def pump() -> None:
            with stream:
                for line in stream:
                    if line.startswith("{"):
                        entries.put(json.loads(line))

        threading.Thread(target=pump, daemon=True).start()
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(prefix=prefix, upstream=client.port, port=port, proxy=PROXY)
        )
        proxy = subprocess.Popen(
            [
                nginx,
                "-p",
                str(prefix),
                "-c",
                str(conf),
                "-e",
                str(prefix / "error.log"),
                "-g",
                f"daemon off; pid {prefix / 'nginx.pid'}; error_log {prefix / 'error.log'};",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_listener(port, proxy, prefix / "error.log")
            yield Setup(port, client.port, entries)
            assert client.request("GET", "/health")[0] == 200  # tokencli still fine
        finally:
            proxy.terminate()
            proxy.communicate(timeout=30)
            process.terminate()
            process.wait(timeout=30)


def wait_for_listener(port: int, proxy: subprocess.Popen[bytes], error_log: Path) -> None:
    """Until nginx accepts connections (a bound on a hang, not a timing)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            log = error_log.read_text() if error_log.exists() else ""
            pytest.fail(f"nginx exited {proxy.returncode}: {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("nginx did not start listening within 30 s")


def get(port: int, source: str, request_id: str, headers: dict[str, str]) -> int:
    """GET /health from `source` to 127.0.0.1:port; the status."""
    connection = HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", "/health", headers={"X-Request-Id": request_id, **headers})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def logged_client(entries: queue.Queue[dict[str, object]], request_id: str) -> object:
    while True:
        entry = entries.get(timeout=30)  # a bound on a hang, not a timing
        if entry["request_id"] == request_id:
            return entry["client"]


FORGERIES = {
    "nothing": {},
    "x-forwarded-for": {"X-Forwarded-For": "198.51.100.66"},
    "chain": {"X-Forwarded-For": "198.51.100.66, 127.0.0.2"},
    "forwarded": {"Forwarded": "for=198.51.100.66"},
    "both": {"X-Forwarded-For": "198.51.100.66", "Forwarded": 'for="198.51.100.66"'},
    "garbage": {"X-Forwarded-For": '"\\x00, ]', "Forwarded": 'for="'},
}


@pytest.mark.parametrize("forged", sorted(FORGERIES))
def test_behind_nginx_the_log_names_the_client_nginx_saw(
    nginx_in_front: Setup, forged: str
) -> None:
    assert get(nginx_in_front.nginx_port, BEHIND, f"via-{forged}", FORGERIES[forged]) == 200
    assert logged_client(nginx_in_front.entries, f"via-{forged}") == BEHIND


@pytest.mark.parametrize("forged", sorted(FORGERIES))
def test_a_direct_client_is_logged_as_itself_whatever_it_forged(
    nginx_in_front: Setup, forged: str
) -> None:
    port = nginx_in_front.tokencli_port
    assert get(port, "127.0.0.1", f"direct-{forged}", FORGERIES[forged]) == 200
    assert logged_client(nginx_in_front.entries, f"direct-{forged}") == "127.0.0.1"


def test_nginx_itself_sending_no_header_is_logged_as_the_proxy(nginx_in_front: Setup) -> None:
    """A trusted peer with no forwarding header is the client (nothing else to go by)."""
    port = nginx_in_front.tokencli_port
    assert get(port, PROXY, "from-the-proxy", {}) == 200
    assert logged_client(nginx_in_front.entries, "from-the-proxy") == PROXY
