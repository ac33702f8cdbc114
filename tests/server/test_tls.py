"""HTTPS: a round trip with a certificate the test makes, handshakes that never block the
loop, TLS 1.2 at least, and clear usage errors for bad files."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.server.config import TLS12_CIPHERS, Limits, tls_context

from support import Served, component, needs_executable, serve_process


class Certificates:
    """A throwaway CA, a server certificate for localhost and 127.0.0.1, and their files."""

    def __init__(self, folder: Path, key_type: trustme.KeyType = trustme.KeyType.ECDSA) -> None:
        self.ca = trustme.CA(key_type=key_type)
        issued = self.ca.issue_cert("localhost", "127.0.0.1", key_type=key_type)
        self.cert_file = folder / "cert.pem"
        self.key_file = folder / "key.pem"
        issued.cert_chain_pems[0].write_to_path(str(self.cert_file))
        issued.private_key_pem.write_to_path(str(self.key_file))
        self.client = ssl.create_default_context()
        self.ca.configure_trust(self.client)

    def server_context(self) -> ssl.SSLContext:
        return tls_context(str(self.cert_file), str(self.key_file))


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path)


def test_https_round_trip(serve: Callable[..., Served], certificates: Certificates) -> None:
    served = serve(
        tls_cert=certificates.cert_file,
        tls_key=certificates.key_file,
        tls_trust=certificates.client,
    )
    assert served.server.url.startswith("https://127.0.0.1:")
    status, _, payload = served.request("POST", "/app/token")
    assert status == 200
    token = payload["token"]
    connection = served.connection()
    try:
        for _ in range(3):  # keep-alive over TLS
            connection.request("GET", f"/app/valid/{token}")
            response = connection.getresponse()
            assert response.status == 200 and b'"status": true' in response.read()
    finally:
        connection.close()


def test_plain_http_to_an_https_server_is_dropped_not_answered_in_clear(
    serve: Callable[..., Served], certificates: Certificates
) -> None:
    served = serve(
        tls_cert=certificates.cert_file,
        tls_key=certificates.key_file,
        tls_trust=certificates.client,
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        client.settimeout(10)
        try:
            answer = client.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert b"HTTP/1.1 200" not in answer
    assert served.request("GET", "/health")[0] == 200


def test_a_stalled_handshake_delays_no_one_and_is_dropped(
    serve: Callable[..., Served], certificates: Certificates
) -> None:
    served = serve(
        tls_cert=certificates.cert_file,
        tls_key=certificates.key_file,
        tls_trust=certificates.client,
        limits=Limits(request_timeout=3.0),
    )
    stalled = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(5)]
    for client in stalled[:3]:
        client.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a ClientHello
    try:
        for _ in range(10):
            assert served.request("GET", "/health")[0] == 200
        # Answered while the five stalled handshakes were all still open: no one waited.
        assert served.server.open_connections >= 5
        deadline = time.monotonic() + 30
        while served.server.open_connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served.server.open_connections == 0  # then all five dropped after 3 s
    finally:
        for client in stalled:
            client.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused(serve: Callable[..., Served], certificates: Certificates) -> None:
    served = serve(
        tls_cert=certificates.cert_file,
        tls_key=certificates.key_file,
        tls_trust=certificates.client,
    )
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    certificates.ca.configure_trust(old)
    try:
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with (
        pytest.raises((ssl.SSLError, ConnectionResetError)),
        socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw,
        old.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass


def test_bad_certificate_files_are_usage_errors(
    runner: CliRunner, certificates: Certificates, tmp_path: Path
) -> None:
    other = trustme.CA().issue_cert("localhost")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key = str(certificates.cert_file), str(certificates.key_file)
    cases = {
        "missing": (["--tls-cert", str(tmp_path / "none.pem"), "--tls-key", key], "none.pem"),
        "mismatched": (["--tls-cert", cert, "--tls-key", str(other_key)], "cannot use"),
        "garbage": (["--tls-cert", str(garbage), "--tls-key", key], "cannot use"),
        "alone": (["--tls-cert", cert], "together"),
    }
    for name, (options, fragment) in cases.items():
        result = runner.invoke(app, ["serve", "--port", "0", *options])
        assert result.exit_code == 2, name
        assert fragment in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.output


def test_plain_http_on_a_network_address_with_a_key_warns(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENCLI_ADMIN_KEY", "k" * 20)
    # 192.0.2.1 is TEST-NET-1: never this machine's, so the bind fails after the warning
    # and nothing listens beyond loopback.
    result = runner.invoke(app, ["serve", "--host", "192.0.2.1", "--port", "0"])
    assert result.exit_code == 2 and "cannot listen on 192.0.2.1" in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "cleartext" in warnings[0]


@needs_executable
def test_the_start_line_says_https(certificates: Certificates) -> None:
    with serve_process(
        "--tls-cert", str(certificates.cert_file), "--tls-key", str(certificates.key_file)
    ) as (process, client):
        client.tls_trust = certificates.client
        assert client.request("GET", "/health")[0] == 200
        process.terminate()
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in rest


def client_hello() -> bytes:
    """A real TLS ClientHello, as the first bytes a client sends."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_half_a_client_hello_holds_no_tls_state(
    serve: Callable[..., Served], certificates: Certificates
) -> None:
    served = serve(
        tls_cert=certificates.cert_file,
        tls_key=certificates.key_file,
        tls_trust=certificates.client,
    )
    hello = client_hello()
    stalled = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(20)]
    try:
        for client in stalled:
            client.sendall(hello[: len(hello) // 2])
        deadline = time.monotonic() + 5
        while served.server.open_connections < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served.server.open_connections == 20
        assert served.server.handshakes_under_way == 0  # a buffer each, no TLS session
        assert served.request("GET", "/health")[0] == 200
    finally:
        for client in stalled:
            client.close()


def test_at_the_handshake_cap_stalled_handshakes_make_way(
    serve: Callable[..., Served], certificates: Certificates
) -> None:
    served = serve(
        tls_cert=certificates.cert_file,
        tls_key=certificates.key_file,
        tls_trust=certificates.client,
        limits=Limits(request_timeout=30.0, max_handshakes=3, idle_under_pressure=0.5),
    )
    hello = client_hello()
    stalled = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(6)]
    try:
        for client in stalled:
            client.sendall(hello)  # a whole ClientHello, then silence
        most = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            most = max(most, served.server.handshakes_under_way)
            time.sleep(0.02)
        assert most == 3  # never more than the cap hold TLS state
        # A real client gets a slot, and each stalled one makes way after 0.5 s quiet.
        # The bounds are generous: without making way, both would wait the 30 s timeout.
        started = time.monotonic()
        assert served.request("GET", "/health")[0] == 200
        assert time.monotonic() - started < 10
        for client in stalled:
            client.settimeout(20)
            while client.recv(65536):
                pass
        assert time.monotonic() - started < 20
    finally:
        for client in stalled:
            client.close()


# -- what graders see: AEAD suites only for TLS 1.2, ALPN http/1.1 (issue 19 item 4) -------

KEY_TYPES = {"rsa": trustme.KeyType.RSA, "ecdsa": trustme.KeyType.ECDSA}


def tls12_suites(openssl: str, authentication: str) -> dict[str, bool]:
    """Every suite this OpenSSL can offer in TLS 1.2 for a certificate of this kind
    (RSA, ECDSA), by name, and whether it is an AEAD suite (False: CBC or another MAC)."""
    listing = subprocess.run(
        [openssl, "ciphers", "-v", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    suites = {}
    for line in listing.splitlines():
        name, protocol, *fields = line.split()
        columns = dict(field.split("=", 1) for field in fields if "=" in field)
        if protocol == "TLSv1.3" or columns["Au"] != authentication:
            continue
        if columns["Enc"] == "None":
            continue  # no encryption at all: never offered by any profile worth testing
        suites[name] = columns["Mac"] == "AEAD"
    return suites


def handshake(openssl: str, port: int, *options: str) -> str:
    """`openssl s_client` against the server; its output (stdout) if the handshake
    completed, "" if it was refused."""
    result = subprocess.run(
        [
            openssl,
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "localhost",
            *options,
        ],
        input=b"",
        capture_output=True,
        timeout=60,
    )
    output = result.stdout.decode(errors="replace")
    completed = result.returncode == 0 and re.search(r"Cipher is (?!\(NONE\))", output)
    return output if completed else ""


@pytest.mark.interop
@pytest.mark.parametrize("kind", sorted(KEY_TYPES))
def test_tls_1_2_accepts_aead_suites_only(
    serve: Callable[..., Served], tmp_path: Path, kind: str
) -> None:
    """Every TLS 1.2 suite OpenSSL knows for this certificate, tried one at a time:
    each CBC (non-AEAD) suite is refused, and what is accepted is the AEAD allowlist."""
    openssl = component("openssl", package="openssl")
    certificates = Certificates(tmp_path, KEY_TYPES[kind])
    served = serve(
        tls_cert=certificates.cert_file,
        tls_key=certificates.key_file,
        tls_trust=certificates.client,
    )
    suites = tls12_suites(openssl, "RSA" if kind == "rsa" else "ECDSA")
    accepted = {
        suite
        for suite in suites
        if handshake(openssl, served.port, "-tls1_2", "-cipher", f"{suite}@SECLEVEL=0")
    }
    cbc = {suite for suite, aead in suites.items() if not aead}
    assert f"ECDHE-{kind.upper()}-AES128-SHA256" in cbc  # the suite testssl.sh flagged
    assert accepted & cbc == set()
    allowed = {suite for suite in TLS12_CIPHERS.split(":") if kind.upper() in suite}
    assert accepted == allowed  # ECDHE with AES-GCM or CHACHA20-POLY1305, all three
    assert served.request("GET", "/health")[0] == 200


@pytest.mark.interop
def test_alpn_announces_http_1_1(serve: Callable[..., Served], certificates: Certificates) -> None:
    openssl = component("openssl", package="openssl")
    served = serve(
        tls_cert=certificates.cert_file,
        tls_key=certificates.key_file,
        tls_trust=certificates.client,
    )
    for version in ("-tls1_2", "-tls1_3"):
        output = handshake(openssl, served.port, version, "-alpn", "h2,http/1.1")
        assert "ALPN protocol: http/1.1" in output, version
    # A client offering only h2 is not cut off: no ALPN agreed, the handshake completes.
    assert "No ALPN negotiated" in handshake(openssl, served.port, "-alpn", "h2")
    context = ssl.create_default_context()
    certificates.ca.configure_trust(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert tls.recv(65536).startswith(b"HTTP/1.1 200")


@pytest.mark.interop
@pytest.mark.parametrize("kind", sorted(KEY_TYPES))
def test_sslscan_lists_no_cbc_suite(
    serve: Callable[..., Served], tmp_path: Path, kind: str
) -> None:
    sslscan = component("sslscan", package="sslscan")
    certificates = Certificates(tmp_path, KEY_TYPES[kind])
    served = serve(
        tls_cert=certificates.cert_file,
        tls_key=certificates.key_file,
        tls_trust=certificates.client,
    )
    result = subprocess.run(
        [sslscan, "--no-colour", f"127.0.0.1:{served.port}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    offered = re.findall(
        r"^(?:Preferred|Accepted)\s+(TLSv[0-9.]+)\s+\d+ bits\s+(\S+)", result.stdout, re.M
    )
    protocols = {protocol for protocol, _ in offered}
    assert protocols == {"TLSv1.2", "TLSv1.3"}
    tls12 = {suite for protocol, suite in offered if protocol == "TLSv1.2"}
    assert tls12 == {suite for suite in TLS12_CIPHERS.split(":") if kind.upper() in suite}
    assert all("GCM" in suite or "CHACHA20" in suite for _, suite in offered)
    for old in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"):
        assert re.search(rf"^{re.escape(old)}\s+disabled", result.stdout, re.M), old


def test_closed_connections_leave_the_tls_handshake_queue_at_once(
    serve: Callable[..., Served], certificates: Certificates
) -> None:
    # Two slots, and stalled handshakes never make way during the test.
    limits = Limits(request_timeout=60.0, max_handshakes=2, idle_under_pressure=60.0)
    served = serve(tls_cert=certificates.cert_file, tls_key=certificates.key_file, limits=limits)
    hello = client_hello()
    clients = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(12)]
    try:
        for client in clients:
            client.sendall(hello)  # a whole ClientHello, then silence
        slots = served.server._handshakes
        deadline = time.monotonic() + 10
        while slots.queued < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (len(slots), slots.queued) == (2, 10)
        for client in clients[:10]:
            client.close()
        deadline = time.monotonic() + 10
        while slots.queued and time.monotonic() < deadline:
            time.sleep(0.02)
        # Ten closed, and not one of them still holds a place in the queue (or a slot
        # meanwhile: the two stalled handshakes keep theirs).
        assert slots.queued == 0 and served.server.open_connections <= 2
    finally:
        for client in clients:
            client.close()
