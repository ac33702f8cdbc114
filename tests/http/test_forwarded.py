"""Who the client is behind a proxy (tokencli.http.forwarded), Hypothesis over chains of
proxies and whatever a client may put in front: the client named is the rightmost
untrusted hop that trusted proxies wrote, never an address the client chose, and a
malformed header never names anyone."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.http.forwarded import MAX_HOPS, client_address, parse_networks

TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8", "127.0.0.1"])

TRUSTED_HOPS = st.one_of(
    st.ip_addresses(network="10.0.0.0/8"),
    st.ip_addresses(network="fd00::/8"),
    st.just(ipaddress.ip_address("127.0.0.1")),
)
UNTRUSTED_HOPS = st.one_of(
    st.ip_addresses(network="198.51.100.0/24"),
    st.ip_addresses(network="2001:db8::/32"),
)
ANY_HOPS = st.one_of(st.ip_addresses(), TRUSTED_HOPS)


def trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address in network for network in TRUSTED)


def xff_node(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None) -> str:
    """A node as proxies write X-Forwarded-For: bare, or with a port (IPv6 in brackets)."""
    if port is None:
        return str(address)
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def forwarded_element(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int | None,
    extra: list[tuple[str, str]],
    spelling: str,
) -> str:
    """An RFC 7239 element: `for=` with the node quoted when it must be (IPv6, a port) or
    when the writer likes to, and other parameters around it."""
    node = str(address) if address.version == 4 else f"[{address}]"
    if port is not None:
        node += f":{port}"
    quoted = f'"{node}"' if address.version == 6 or port is not None or extra else node
    pairs = [f"{spelling}={quoted}", *(f"{name}={value}" for name, value in extra)]
    return ";".join(pairs)


def quoted_string(text: str) -> str:
    """Text inside an RFC 7230 quoted-string: backslash and quote escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


PORTS = st.none() | st.integers(1, 65535)
EXTRA = st.lists(
    st.tuples(st.sampled_from(["proto", "by", "host"]), st.sampled_from(["https", '"a;b,c"'])),
    max_size=2,
    unique_by=lambda pair: pair[0],
)


@settings(max_examples=300, deadline=None)
@given(
    forged=st.lists(st.one_of(ANY_HOPS.map(str), st.text(max_size=12)), max_size=4),
    client=UNTRUSTED_HOPS,
    proxies=st.lists(TRUSTED_HOPS, min_size=1, max_size=4),
    ports=st.lists(PORTS, min_size=6, max_size=6),
    header=st.sampled_from(["x-forwarded-for", "forwarded", "both"]),
    extra=EXTRA,
    spelling=st.sampled_from(["for", "For", "FOR"]),
)
@example(
    forged=["1.2.3.4"],
    client=ipaddress.ip_address("198.51.100.7"),
    proxies=[ipaddress.ip_address("10.0.0.2")],
    ports=[None] * 6,
    header="x-forwarded-for",
    extra=[],
    spelling="for",
)
def test_the_client_is_the_rightmost_untrusted_hop_whatever_it_forged(
    forged: list[str],
    client: ipaddress.IPv4Address | ipaddress.IPv6Address,
    proxies: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    ports: list[int | None],
    header: str,
    extra: list[tuple[str, str]],
    spelling: str,
) -> None:
    """The client sent the forged entries itself; then each trusted proxy appended the
    address it saw. The last proxy is the peer; what it saw is the client's address."""
    *writers, peer = proxies
    hops = [client, *writers]  # what the proxies appended, left to right
    headers = {}
    xff_forged = ", ".join(forged)
    fwd_forged = ", ".join(f'for="{quoted_string(entry)}"' for entry in forged)
    if header in ("x-forwarded-for", "both"):
        written = [xff_node(hop, port) for hop, port in zip(hops, ports, strict=False)]
        headers["x-forwarded-for"] = ", ".join(filter(None, [xff_forged, *written]))
    if header in ("forwarded", "both"):
        written = [
            forwarded_element(hop, port, extra, spelling)
            for hop, port in zip(hops, ports, strict=False)
        ]
        headers["forwarded"] = ", ".join(filter(None, [fwd_forged, *written]))
    assert client_address(str(peer), headers, TRUSTED) == str(client)
    # The same request straight from an untrusted peer names that peer, always.
    assert client_address(str(client), headers, TRUSTED) == str(client)
    assert client_address("198.51.100.250", headers, TRUSTED) == "198.51.100.250"
    # And with no trusted proxies configured, headers are not even read.
    assert client_address(str(peer), headers, ()) == str(peer)


@settings(max_examples=500, deadline=None)
@given(
    peer=ANY_HOPS,
    xff=st.none() | st.text(max_size=60),
    forwarded=st.none() | st.text(max_size=60),
)
@example(peer=ipaddress.ip_address("10.0.0.1"), xff=None, forwarded='for="1.2.3.4')
@example(peer=ipaddress.ip_address("10.0.0.1"), xff="1.2.3.4, , 10.0.0.2", forwarded=None)
@example(peer=ipaddress.ip_address("10.0.0.1"), xff=None, forwarded="for=1.2.3.4;for=5.6.7.8")
@example(peer=ipaddress.ip_address("10.0.0.1"), xff=None, forwarded="for=2001:db8::1")
@example(peer=ipaddress.ip_address("10.0.0.1"), xff=None, forwarded="for=unknown")
@example(peer=ipaddress.ip_address("10.0.0.1"), xff=None, forwarded="for=_hidden")
@example(peer=ipaddress.ip_address("10.0.0.1"), xff="1.2.3.4:99999", forwarded=None)
def test_any_header_text_names_the_peer_or_an_address_that_is_in_it(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
    xff: str | None,
    forwarded: str | None,
) -> None:
    headers = {
        name: value
        for name, value in (("x-forwarded-for", xff), ("forwarded", forwarded))
        if value is not None
    }
    named = client_address(str(peer), headers, TRUSTED)
    if named == str(peer):
        return
    assert trusted(peer)  # only a trusted peer's headers are read
    address = ipaddress.ip_address(named)  # always an address, never header text
    assert address in addresses_in(" ".join(headers.values()))


def addresses_in(text: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address written somewhere in `text` (IPv4-mapped ones also as IPv4)."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for candidate in re.findall(r"[0-9A-Fa-f:.]+", text):
        for start in range(len(candidate)):
            for end in range(start + 1, len(candidate) + 1):
                try:
                    address = ipaddress.ip_address(candidate[start:end])
                except ValueError:
                    continue
                found.add(address)
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    found.add(address.ipv4_mapped)
    return found


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-forwarded-for": "198.51.100.7"}, "198.51.100.7"),
        ({"x-forwarded-for": "198.51.100.7:5555"}, "198.51.100.7"),
        ({"x-forwarded-for": "[2001:db8::7]:443"}, "2001:db8::7"),
        ({"x-forwarded-for": "2001:db8::7"}, "2001:db8::7"),
        ({"x-forwarded-for": "::ffff:198.51.100.7"}, "198.51.100.7"),
        ({"x-forwarded-for": "10.0.0.9, 10.0.0.8"}, "10.0.0.9"),  # all trusted: leftmost
        ({"x-forwarded-for": "evil, 198.51.100.7"}, "198.51.100.7"),  # left of it: unread
        ({"x-forwarded-for": "198.51.100.7, evil"}, "10.0.0.1"),  # on the walk: malformed
        ({"x-forwarded-for": ""}, "10.0.0.1"),
        ({"forwarded": 'for="[2001:db8::7]:4711";proto=https'}, "2001:db8::7"),
        ({"forwarded": "for=198.51.100.7;by=10.0.0.1, for=10.0.0.3"}, "198.51.100.7"),
        ({"forwarded": 'for=198.51.100.7;host="a,b"'}, "198.51.100.7"),
        ({"forwarded": "proto=https"}, "10.0.0.1"),  # no for=
        ({"forwarded": "for=unknown"}, "10.0.0.1"),
        ({"forwarded": 'for="198.51.100.7'}, "10.0.0.1"),  # open quote
        ({"forwarded": "for=198.51.100.7;for=198.51.100.8"}, "10.0.0.1"),  # repeated
        ({"x-forwarded-for": "198.51.100.7", "forwarded": "for=198.51.100.7"}, "198.51.100.7"),
        # Both headers, naming different clients: a proxy wrote one, the client the other.
        ({"x-forwarded-for": "198.51.100.7", "forwarded": "for=198.51.100.8"}, "10.0.0.1"),
        ({"x-forwarded-for": ", ".join(["198.51.100.7"] * (MAX_HOPS + 1))}, "10.0.0.1"),
    ],
)
def test_examples(headers: dict[str, str], expected: str) -> None:
    assert client_address("10.0.0.1", headers, TRUSTED) == expected


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "nonsense", "10.0.0.0/33", ""])
def test_bad_trusted_networks_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="--trusted-proxy"):
        parse_networks([bad])


def test_ipv4_mapped_peers_are_trusted_by_their_ipv4_network() -> None:
    """A dual-stack listener sees an IPv4 proxy as ::ffff:10.0.0.1."""
    headers = {"x-forwarded-for": "198.51.100.7"}
    assert client_address("::ffff:10.0.0.1", headers, TRUSTED) == "198.51.100.7"


def test_serve_refuses_a_bad_trusted_proxy_with_exit_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["serve", "--port", "0", "--trusted-proxy", "10.0.0.1/8"])
    assert result.exit_code == 2
    assert "--trusted-proxy '10.0.0.1/8' is not an address or network" in result.stderr
    assert "Traceback" not in result.output
