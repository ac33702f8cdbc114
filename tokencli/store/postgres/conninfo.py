"""A PostgreSQL location as libpq reads it: what may be shown, what is secret, and the
bounds tokencli puts on every wait.

The URL is parsed by libpq itself (`PQconninfoParse`, through psycopg), never by a pattern
of ours: what is shown is rebuilt from libpq's fields, with every field libpq marks secret
(password, sslpassword, ...) replaced by ***, so text libpq takes for a password can never
be printed, whatever it holds (`#`, `?`, `:`, `%xx`, `?password=`...).

The one thing libpq cannot tell is what the user meant: it ends the user name and password
at the first `@` or `/`, so a password with a raw `@` or `/` spills into the host or the
database name (`postgresql://u:p@ss@h/db` is host `ss@h` to libpq), and would be shown
and echoed by libpq's own errors. Such a URL is refused before libpq sees it, without
being shown: those characters must be percent-encoded (%40, %2F), as libpq documents.

Bounds (README, "Bounded waits"): libpq's own parameters (`connect_timeout`, `keepalives*`,
`tcp_user_timeout`) get tokencli's defaults unless the URL or the environment sets them;
`statement_timeout` and `lock_timeout` are read from the URL's `options` (or PGOPTIONS)
when given there, else tokencli's defaults. tokencli sets those two itself at the start of
every transaction (a pooler in transaction mode drops startup options), and waits on the
server at most `statement_timeout` + GRACE_SECONDS before giving the connection up.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

from psycopg import pq
from psycopg.errors import Error as PsycopgError

from tokencli.domain.errors import StorageError

CONNECT_TIMEOUT_SECONDS = 5  # per host tried (libpq's minimum is 2)
STATEMENT_TIMEOUT = "5s"
LOCK_TIMEOUT = "3s"  # below the statement's, so a lock wait says it was a lock
# How much longer than statement_timeout the client waits for any answer: the server
# cancels a slow statement itself; past this, it is not answering at all (a stopped
# backend, a silently dropped network) and the connection is given up.
GRACE_SECONDS = 2.0
# TCP only (ignored on a Unix socket): a dead peer of an idle connection is noticed within
# idle + interval * count seconds, and unacknowledged data gives up after tcp_user_timeout.
TCP_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",  # milliseconds
}
# The search path of every transaction: our own objects are all schema-qualified, and
# nothing another role can create is looked up (pg_temp last, as PostgreSQL advises).
SEARCH_PATH = "pg_catalog, pg_temp"

_SHOWN_IN_AUTHORITY = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:"
)
# PostgreSQL's units for a time setting whose base unit is milliseconds.
_UNIT_MS = {
    "us": 0.001,
    "ms": 1.0,
    "s": 1000.0,
    "min": 60_000.0,
    "h": 3_600_000.0,
    "d": 86_400_000.0,
}
_TIMEOUT_SETTINGS = ("statement_timeout", "lock_timeout")
HIDDEN = "***"


@dataclass(frozen=True)
class ConnInfo:
    """A parsed location: the URL for libpq, its printable form, and the bounds to keep."""

    url: str
    shown: str
    secrets: tuple[str, ...]  # values to scrub from any message, longest first
    connect_options: dict[str, Any]  # tokencli's defaults for what the URL leaves unset
    statement_timeout: str
    lock_timeout: str
    deadline_seconds: float | None  # None: statement_timeout=0, the operator's choice

    def transaction_settings(self) -> tuple[str, str, str]:
        """(search_path, statement_timeout, lock_timeout) for set_config at BEGIN."""
        return (SEARCH_PATH, self.statement_timeout, self.lock_timeout)


def unreadable(reason: str) -> StorageError:
    """The error for a URL that cannot be used; it never holds the URL itself."""
    return StorageError(f"the PostgreSQL URL given is not usable ({reason}); it is not shown")


def parse(url: str) -> ConnInfo:
    """Read `url` as libpq does; StorageError (without echoing it) if it cannot be used."""
    if _ambiguous(url):
        raise unreadable(
            "it holds more than one @, or an @ after a /: libpq would read part of a password"
            " as the host or database; percent-encode @ as %40 and / as %2F"
        )
    try:
        options = pq.Conninfo.parse(url.encode())
    except PsycopgError as error:
        raise unreadable(_without_echo(str(error))) from None
    except UnicodeEncodeError:
        raise unreadable("it is not valid text") from None
    fields: dict[str, str] = {}
    secret_keys: set[str] = set()
    for option in options:
        if option.val is None:
            continue
        keyword = option.keyword.decode()
        try:
            fields[keyword] = option.val.decode()
        except UnicodeDecodeError:  # psycopg reads values as UTF-8 and would fail later
            raise unreadable(f"the value of {keyword} is not UTF-8 text once %-decoded") from None
        if option.dispchar in (b"*", b"D"):  # libpq's mark for a password-like field
            secret_keys.add(keyword)
    secrets = sorted(
        {fields[key] for key in secret_keys if len(fields[key]) >= 3}, key=len, reverse=True
    )
    settings = _timeouts(fields.get("options", os.environ.get("PGOPTIONS", "")))
    statement_ms = _milliseconds("statement_timeout", settings["statement_timeout"])
    _milliseconds("lock_timeout", settings["lock_timeout"])
    deadline = None if statement_ms == 0 else statement_ms / 1000 + GRACE_SECONDS
    return ConnInfo(
        url=url,
        shown=_shown(url, fields, secret_keys),
        secrets=tuple(secrets),
        connect_options=_connect_options(fields),
        statement_timeout=settings["statement_timeout"],
        lock_timeout=settings["lock_timeout"],
        deadline_seconds=deadline,
    )


def shown(url: str) -> str:
    """The URL as it may be printed: rebuilt from libpq's fields, secrets as ***."""
    try:
        return parse(url).shown
    except StorageError:
        return "a PostgreSQL URL that cannot be used (not shown)"


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with each secret replaced by *** (a second line of defence for messages)."""
    for secret in secrets:
        text = text.replace(secret, HIDDEN)
    return text


def _ambiguous(url: str) -> bool:
    """Whether libpq's rule (credentials end at the first @ or /) may split a password."""
    rest = url.split("://", 1)[1] if "://" in url else url
    ats = rest.count("@")
    if ats > 1:
        return True
    return ats == 1 and "/" in rest[: rest.index("@")]


def _without_echo(message: str) -> str:
    """libpq's parse error up to the input it echoes (in quotes, and maybe a password,
    which may itself hold quotes): its words, never what it quotes."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    words, quoted, _ = first.partition('"')
    words = words.strip().rstrip(":").strip()
    return (words + " ..." if quoted else words) or "libpq could not read it"


def _shown(url: str, fields: dict[str, str], secret_keys: set[str]) -> str:
    """A URL libpq reads back to the same fields, each secret shown as ***."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else "postgresql"
    quote = urllib.parse.quote
    rest = dict(fields)
    authority = ""
    user = rest.pop("user", None)
    password = rest.pop("password", None)
    if user is not None or password is not None:
        authority = quote(user or "", safe="")
        if password is not None:
            authority += ":" + HIDDEN
        authority += "@"
    hosts = rest.get("host")
    ports = rest.get("port")
    if hosts is not None and _fits_authority(hosts, ports):
        del rest["host"]
        host_list = [f"[{h}]" if ":" in h else h for h in hosts.split(",")]
        if ports is not None:
            del rest["port"]
            port_list = ports.split(",")
            host_list = [f"{h}:{p}" if p else h for h, p in zip(host_list, port_list, strict=True)]
        authority += ",".join(host_list)
    path = "/" + quote(rest.pop("dbname"), safe="") if "dbname" in rest else "/"
    query = "&".join(
        f"{key}={HIDDEN if key in secret_keys else quote(value, safe='/,:')}"
        for key, value in rest.items()
    )
    return f"{scheme}://{authority}{path}" + (f"?{query}" if query else "")


def _fits_authority(hosts: str, ports: str | None) -> bool:
    """Whether the hosts (and ports) can stand between // and / as libpq reads them back."""
    names = hosts.split(",")
    if not all(name and set(name) <= _SHOWN_IN_AUTHORITY for name in names):
        return False  # socket folders, empty entries: shown as ?host=
    if ports is None:
        return len(names) == 1  # libpq reads h1,h2 in the authority as ports "," too
    count = len(ports.split(","))
    # libpq applies one port to every host, or pairs them; only the last can carry one alone.
    return count == len(names) or (count == 1 and len(names) == 1)


def _connect_options(fields: dict[str, str]) -> dict[str, Any]:
    """tokencli's defaults for the libpq parameters the URL (or the environment) leaves unset."""
    options: dict[str, Any] = {"fallback_application_name": "tokencli"}
    if "connect_timeout" not in fields and not os.environ.get("PGCONNECT_TIMEOUT"):
        options["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    for key, value in TCP_DEFAULTS.items():
        if key not in fields:
            options[key] = value
    return options


def _timeouts(options: str) -> dict[str, str]:
    """statement_timeout and lock_timeout from a libpq `options` string, else our defaults.

    PostgreSQL splits the string at unescaped whitespace (backslash escapes) and reads
    `-c name=value`, `-cname=value` and `--name=value`; the last setting of a name wins.
    """
    found = {"statement_timeout": STATEMENT_TIMEOUT, "lock_timeout": LOCK_TIMEOUT}
    words = _split_options(options)
    for index, word in enumerate(words):
        if word == "-c" and index + 1 < len(words):
            setting = words[index + 1]
        elif word.startswith("-c") and word != "-c":
            setting = word[2:]
        elif word.startswith("--"):
            setting = word[2:]
        else:
            continue
        name, _, value = setting.partition("=")
        name = name.strip().lower().replace("-", "_")
        if name in _TIMEOUT_SETTINGS:
            found[name] = value.strip()
    return found


def _split_options(options: str) -> list[str]:
    """The words of a libpq `options` string, as PostgreSQL's pg_split_opts splits them."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def _milliseconds(name: str, value: str) -> float:
    """A time setting in milliseconds, as PostgreSQL reads it (a number, then a unit)."""
    text = value.strip()
    digits = len(text) - len(text.lstrip("0123456789."))
    number, unit = text[:digits], text[digits:].strip() or "ms"
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if amount < 0 or unit not in _UNIT_MS:
        raise StorageError(
            f"options in the PostgreSQL URL: {name}={value!r} is not a duration tokencli"
            " understands; write a number and a unit (ms, s, min, h, d), e.g. 5s or 500ms,"
            " or 0 for none"
        )
    return amount * _UNIT_MS[unit]
