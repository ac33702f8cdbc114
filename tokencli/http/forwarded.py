"""Who the client is behind a reverse proxy: `X-Forwarded-For` and `Forwarded` (RFC 7239),
believed only from trusted proxies (`serve --trusted-proxy CIDR`). Pure: no sockets.

The rule is nginx's `real_ip_recursive on`: when the peer is a trusted proxy, walk the
header's addresses from the right (the last one was written by the proxy that talked to
us), skipping trusted proxies; the first untrusted address is the client. Everything to
its left was written by the client or its side of the network and is never believed. If
every address is a trusted proxy, the leftmost is the client.

Whatever cannot be read on that walk (an entry that is not an address, `unknown`, an
obfuscated node, a `Forwarded` element without `for=`, bad quoting, a repeated
parameter) leaves the peer as the client: a malformed header never names anyone. When a
request carries both headers they must name the same client, or neither is believed: a
proxy appends to one of them and passes the other through as the client sent it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...]

# RFC 7230 token characters and RFC 7239 element syntax.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PAIR = re.compile(rf"\s*({_TOKEN})=({_TOKEN}|{_QUOTED})\s*")
_PORT = re.compile(r"[0-9]{1,5}")
_UNESCAPE = re.compile(r"\\(.)")
MAX_HOPS = 64  # a longer chain is not read: the walk is bounded whatever a client sends


def parse_networks(texts: Iterable[str]) -> Networks:
    """The networks of `--trusted-proxy` values (CIDR or a single address); ValueError
    naming the bad one."""
    networks = []
    for text in texts:
        try:
            network = ipaddress.ip_network(text.strip(), strict=True)
        except ValueError as error:
            raise ValueError(
                f"--trusted-proxy {text!r} is not an address or network (e.g. 10.0.0.0/8, "
                f"192.0.2.7, fd00::/8): {error}"
            ) from None
        networks.append(network)
    return tuple(networks)


def _address(text: str) -> Address | None:
    """An address, IPv4-mapped IPv6 unmapped so that one trusted network covers both."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Networks) -> bool:
    return any(address in network for network in trusted)


def _node(text: str) -> Address | None:
    """An address from a node as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
    `[2001:db8::1]`, `[2001:db8::1]:80`; None for anything else."""
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return None
        return _address(inside) if ":" in inside else None
    if text.count(":") == 1:  # IPv4 with a port
        host, _, port = text.partition(":")
        if not _PORT.fullmatch(port) or "." not in host:
            return None
        text = host
    return _address(text)


def _walk(hops: list[Address | None], trusted: Networks) -> Address | None:
    """The rightmost untrusted address (or the leftmost if all are trusted); None when
    an unreadable hop comes first."""
    if not hops or len(hops) > MAX_HOPS:
        return None
    for hop in reversed(hops):
        if hop is None:
            return None
        if not _trusted(hop, trusted):
            return hop
    return hops[0]


def _x_forwarded_for(value: str) -> list[Address | None]:
    return [_node(entry.strip()) for entry in value.split(",")]


def _split_outside_quotes(text: str, separator: str) -> list[str] | None:
    """`text` split on the separators outside quoted strings; None if a quote is left open."""
    parts, start, quoted, escaped = [], 0, False, False
    for index, character in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and character == "\\":
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif character == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    if quoted:
        return None
    parts.append(text[start:])
    return parts


def _for_of(element: str) -> Address | None:
    """The address of an element's `for=` parameter; None if absent, not an address, or
    the element is malformed."""
    found: str | None = None
    names: set[str] = set()
    for pair in _split_outside_quotes(element, ";") or []:
        if not pair.strip():
            continue
        match = _PAIR.fullmatch(pair)
        if match is None:
            return None
        name, value = match[1].lower(), match[2]
        if name in names:
            return None  # RFC 7239: a parameter occurs at most once per element
        names.add(name)
        if name == "for":
            found = _UNESCAPE.sub(r"\1", value[1:-1]) if value.startswith('"') else value
    return None if found is None else _node(found)


def _forwarded(value: str) -> list[Address | None]:
    elements = _split_outside_quotes(value, ",")
    if elements is None:
        return [None]
    return [_for_of(element) for element in elements]


def client_address(peer: str, headers: Mapping[str, str], trusted: Networks) -> str:
    """The client of a request: `peer` itself unless it is a trusted proxy and a
    forwarding header names a client as described above. Header names are lower case."""
    if not trusted:
        return peer
    peer_address = _address(peer)
    if peer_address is None or not _trusted(peer_address, trusted):
        return peer
    forwarded_for = headers.get("x-forwarded-for")
    forwarded = headers.get("forwarded")
    named: list[Address | None] = []
    if forwarded_for is not None:
        named.append(_walk(_x_forwarded_for(forwarded_for), trusted))
    if forwarded is not None:
        named.append(_walk(_forwarded(forwarded), trusted))
    if not named or None in named or len(set(named)) != 1:
        return peer
    return str(named[0])
