"""What of a PostgreSQL URL may be printed, decided by libpq's own reading of it.

No database here: libpq parses (through psycopg), Hypothesis writes the URLs. The shown
form must never hold a password, however it is written, and libpq must read it back to
the same connection (bar the secret), so what an operator reads is where tokencli goes.
"""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from tokencli.domain.errors import StorageError
from tokencli.domain.location import Location
from tokencli.store.factory import shown as shown_location
from tokencli.store.postgres import conninfo
from tokencli.store.postgres.backend import open_postgres

# Passwords as people make them: anything printable, with the characters URLs treat
# specially well represented.
PASSWORDS = st.text(
    alphabet=st.one_of(
        st.sampled_from("#?@/:%&=+ ;,$!*'()[]{}\\\"`~^|<>"),
        st.characters(min_codepoint=0x21, max_codepoint=0x7E),
        st.characters(min_codepoint=0xA1, max_codepoint=0x2FFF),
    ),
    min_size=6,
    max_size=40,
)


SHOWN = "postgresql://alice:***@db.example:5432/tokens?sslmode=prefer"


def encoded(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def fields(url: str) -> dict[str, str]:
    return conninfo_to_dict(url)


@given(password=PASSWORDS)
@example(password="pa#ss?wo@rd")
@example(password="p%40ss%zzword")
@example(password="***secret")
def test_a_percent_encoded_password_is_never_shown(password: str) -> None:
    assume(password not in SHOWN)
    for url in (
        f"postgresql://alice:{encoded(password)}@db.example:5432/tokens?sslmode=prefer",
        f"postgresql://alice@db.example:5432/tokens?password={encoded(password)}&sslmode=prefer",
        f"postgresql://alice@db.example:5432/tokens?sslmode=prefer&password={encoded(password)}",
    ):
        assert fields(url)["password"] == password  # libpq reads it as the password
        shown = conninfo.shown(url)
        assert shown == SHOWN
        assert password not in shown


@given(password=PASSWORDS)
@example(password="pa#ss")
@example(password="pa?ss")
@example(password="p@ssword")
@example(password="pa/ss@word")
@example(password="pass%2")
def test_a_raw_password_is_shown_as_libpq_reads_it_or_not_at_all(password: str) -> None:
    assume(password not in SHOWN)
    # Typed without encoding: libpq takes # ? : as part of a password, and splits at a
    # raw @ or / (those URLs are refused); bad %-escapes make it refuse the URL.
    url = f"postgresql://alice:{password}@db.example/tokens"
    try:
        info = conninfo.parse(url)
    except StorageError as error:
        assert password not in str(error)
        assert "not shown" in str(error)
        assert "@" in password or "/" in password or "%" in password or " " in password
        return
    assert password not in info.shown
    read = fields(url)
    assert read["host"] == "db.example" and read["dbname"] == "tokens"
    assert info.shown == "postgresql://alice:***@db.example/tokens"


HOSTS = st.lists(
    st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
        st.sampled_from(["127.0.0.1", "::1", "/tmp/pg socket", "/var/run/postgresql"]),
    ),
    min_size=1,
    max_size=3,
)


@given(
    user=st.text(min_size=1, max_size=12).filter(lambda text: "\x00" not in text),
    password=PASSWORDS,
    hosts=HOSTS,
    ports=st.lists(st.integers(1, 65535), max_size=3),
    dbname=st.text(min_size=1, max_size=12).filter(lambda text: "\x00" not in text),
    sslpassword=st.none() | PASSWORDS,
    extra=st.dictionaries(
        st.sampled_from(["application_name", "target_session_attrs", "options", "sslmode"]),
        st.text(
            alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12
        ),
        max_size=3,
    ),
)
def test_the_shown_url_reads_back_to_the_same_connection(
    user: str,
    password: str,
    hosts: list[str],
    ports: list[int],
    dbname: str,
    sslpassword: str | None,
    extra: dict[str, str],
) -> None:
    assume(not ports or len(ports) in (1, len(hosts)))
    query = {
        "host": ",".join(hosts),
        **({"port": ",".join(map(str, ports))} if ports else {}),
        "password": password,
        **({"sslpassword": sslpassword} if sslpassword is not None else {}),
        **extra,
    }
    url = f"postgresql://{encoded(user)}@/{encoded(dbname)}?" + "&".join(
        f"{key}={encoded(value)}" for key, value in query.items()
    )
    info = conninfo.parse(url)
    secrets = {password} | ({sslpassword} if sslpassword is not None else set())
    shown_parts = [user, dbname, *hosts, *map(str, ports), *extra.values()]
    for secret in secrets:
        if not any(secret in part for part in shown_parts):
            assert secret not in info.shown
    expected = fields(url)
    for key in ("password", "sslpassword"):
        if key in expected:
            expected[key] = "***"
    assert fields(info.shown) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://tok:s3cret@db1.internal,db2.internal/tokens"
            "?target_session_attrs=read-write",
            "postgresql://tok:***@db1.internal,db2.internal/tokens?target_session_attrs=read-write",
        ),
        (
            "postgres://tok@[::1]:6432/tokens?sslpassword=key-pass",
            "postgres://tok@[::1]:6432/tokens?sslpassword=***",
        ),
        ("postgresql:///?service=tokens", "postgresql:///?service=tokens"),
        (
            "postgresql://tok:pw%23x@/tokens?host=/run/postgresql",
            "postgresql://tok:***@/tokens?host=/run/postgresql",
        ),
    ],
)
def test_common_urls_are_shown_as_written_but_for_the_secret(url: str, shown: str) -> None:
    assert conninfo.shown(url) == shown
    assert shown_location(Location(url=url)) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:Q7@K9@db/tokens",  # libpq: password "Q7", host "K9@db"
        "postgresql://alice:Q7/K9@db/tokens",  # libpq: host "alice", port "Q7"
        "postgresql://alice:Q7K9@db/tokens?application_name=a@b",
        "postgresql://alice:Q7K9%zz@db/tokens",  # libpq echoes bad escapes
        "postgresql://alice:Q7K9@db/tokens?nonsense=1",
    ],
)
def test_urls_libpq_would_misread_are_refused_unshown(url: str) -> None:
    with pytest.raises(StorageError) as caught:
        conninfo.parse(url)
    assert "Q7" not in str(caught.value) and "K9" not in str(caught.value)
    assert caught.value.exit_status == 3
    assert "not shown" in conninfo.shown(url)


@pytest.mark.parametrize(
    ("options", "statement", "lock", "deadline"),
    [
        ("", "5s", "3s", 7.0),
        ("-c statement_timeout=30s", "30s", "3s", 32.0),
        ("-c lock_timeout=100ms --statement-timeout=1500", "1500", "100ms", 3.5),
        ("-cstatement_timeout=1min -c search_path=public", "1min", "3s", 62.0),
        ("-c statement_timeout=0", "0", "3s", None),
    ],
)
def test_timeouts_come_from_the_urls_options(
    options: str, statement: str, lock: str, deadline: float | None
) -> None:
    url = "postgresql://alice@db/tokens" + (f"?options={encoded(options)}" if options else "")
    info = conninfo.parse(url)
    assert (info.statement_timeout, info.lock_timeout) == (statement, lock)
    assert info.deadline_seconds == deadline
    # The search path is ours whatever the options say: it is a defence, not a preference.
    assert info.transaction_settings()[0] == "pg_catalog, pg_temp"


def test_a_timeout_tokencli_cannot_read_is_refused() -> None:
    with pytest.raises(StorageError, match="statement_timeout='soon'"):
        conninfo.parse("postgresql://alice@db/tokens?options=-c%20statement_timeout%3Dsoon")


def test_libpq_parameters_get_defaults_only_where_the_url_sets_none() -> None:
    plain = conninfo.parse("postgresql://alice@db/tokens").connect_options
    assert plain["connect_timeout"] == conninfo.CONNECT_TIMEOUT_SECONDS
    assert plain["tcp_user_timeout"] == "10000" and plain["keepalives_idle"] == "10"
    own = conninfo.parse(
        "postgresql://alice@db/tokens?connect_timeout=9&tcp_user_timeout=500&keepalives=0"
    ).connect_options
    assert "connect_timeout" not in own and "tcp_user_timeout" not in own
    assert "keepalives" not in own


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://someone:refused-sesame@127.0.0.1:1/tokens?connect_timeout=2",
            "postgresql://someone:***@127.0.0.1:1/tokens?connect_timeout=2",
        ),
        (
            "postgresql://someone@127.0.0.1:1/tokens?password=refused-sesame&connect_timeout=2",
            "postgresql://someone:***@127.0.0.1:1/tokens?connect_timeout=2",
        ),
        # libpq echoes bad encoding: such a URL is not shown at all
        ("postgresql://someone:refused%zzsesame@localhost/tokens", "it is not shown"),
        (
            "postgresql://someone:refused-sesame@/tokens?host=/nonexistent/folder",
            "postgresql://someone:***@/tokens?host=/nonexistent/folder",
        ),
        # a raw @ in a password: libpq would take the rest for the host
        ("postgresql://someone:refused@sesame@localhost/tokens", "percent-encode @ as %40"),
    ],
    ids=["refused", "query-password", "bad-percent-encoding", "no-socket", "raw-at"],
)
def test_unreachable_databases_are_storage_errors_without_the_password(
    url: str, shown: str
) -> None:
    with pytest.raises(StorageError) as caught:
        open_postgres(url, create=True)
    message = str(caught.value)
    assert "sesame" not in message
    assert shown in message
    assert "\n" not in message
