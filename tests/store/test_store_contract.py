"""The Store contract (tokencli/store/base.py), on SQLite and on PostgreSQL alike.

Each test runs once per store through the `store` fixture; what only one store does
(SQLite's files, PostgreSQL's schema, cursors and round trips) is tested in
test_sqlite_store.py and test_store_postgres.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tokencli.domain.errors import StorageError
from tokencli.domain.location import Location
from tokencli.domain.model import AuditEvent, TokenFilter, TokenRecord, TokenState, ends_at
from tokencli.store.base import IdCollisionError, Store, TokenPage
from tokencli.store.factory import open_store

from databases import RawDatabase
from support import START, event, token

pytestmark = pytest.mark.stores("sqlite", "postgres")

NOW = START  # the moment support.token and support.event are made around
HOUR = 3600
EVERY = TokenFilter(states=None)


def ids(store: Store, now: int = NOW, **options: Any) -> list[str]:
    return [record.id for record in store.iter_tokens(TokenFilter(**options), now)]


# -- tokens -------------------------------------------------------------------------------


def test_insert_then_get_and_get_many(store: Store, raw: RawDatabase) -> None:
    records = [
        token("aaa", label="first", scopes=("read", "write")),
        token("bbb", uses=3),
        token("ccc", revoked=NOW - 50),  # imported already revoked
        token("ddd", uses=0),  # imported already used up
    ]
    with store.transaction():
        store.insert_tokens(records)
    assert store.get("aaa") == records[0]
    assert store.get("zzz") is None
    assert store.get_many(["bbb", "zzz", "ccc", "bbb"]) == {"bbb": records[1], "ccc": records[2]}
    assert store.get_many(["ddd"]) == {"ddd": records[3]}
    assert store.get_many([]) == {}
    stored_ends = dict(raw.rows("SELECT id, ends_at FROM tokens"))
    assert stored_ends == {record.id: ends_at(record) for record in records}


def test_a_taken_id_raises_id_collision_and_the_transaction_keeps_nothing(store: Store) -> None:
    with store.transaction():
        store.insert_tokens([token("taken")])
    with pytest.raises(IdCollisionError), store.transaction():
        store.insert_tokens([token("fresh"), token("taken", label="other")])
    assert isinstance(IdCollisionError("x"), StorageError)
    assert store.get("fresh") is None
    assert store.get("taken") == token("taken")
    with pytest.raises(IdCollisionError), store.transaction():  # a repeat within one call
        store.insert_tokens([token("twice"), token("twice")])
    assert store.get("twice") is None


def test_insert_missing_skips_existing_ids_and_existing_ids_finds_them(store: Store) -> None:
    with store.transaction():
        store.insert_tokens([token("old", label="original")])
        inserted = store.insert_missing([token("old", label="import"), token("new"), token("n2")])
    assert inserted == 2
    assert store.get("old") == token("old", label="original")
    assert store.existing_ids({"old", "new", "nope"}) == {"old", "new"}
    assert store.existing_ids([]) == set()
    with store.transaction():
        assert store.insert_missing([]) == 0


def test_consume_uses_grants_only_what_is_left_on_live_limited_tokens(store: Store) -> None:
    with store.transaction():
        store.insert_tokens(
            [
                token("unlimited"),
                token("three", uses=3),
                token("single", uses=1),
                token("revoked", uses=2, revoked=NOW - 10),
                token("expired", uses=2, expires=NOW),
                token("spent", uses=0),
            ]
        )
    wanted = {
        "unlimited": 1,
        "three": 2,
        "single": 5,
        "revoked": 1,
        "expired": 1,
        "spent": 1,
        "unknown": 1,
    }
    with store.transaction():  # (uses granted, uses left afterwards)
        assert store.consume_uses(wanted, NOW) == {"three": (2, 1), "single": (1, 0)}
    with store.transaction():
        assert store.consume_uses({"three": 5, "single": 1}, NOW + 1) == {"three": (1, 0)}
    three = store.get("three")
    assert three is not None and three.uses_left == 0
    assert store.get("unlimited") == token("unlimited")  # untouched
    with store.transaction():
        assert store.consume_uses({}, NOW) == {}
    # The last use ends the token: it leaves the live set at once and purge takes it.
    counts = store.counts(NOW + 1)
    assert (counts.live, counts.used_up) == (1, 3)
    assert store.count_ended(NOW + 1) == 5


def test_revoke_keeps_the_first_revocation(store: Store) -> None:
    with store.transaction():
        store.insert_tokens([token("t1")])
        assert store.revoke("nope", NOW) is False
        assert store.revoke("t1", NOW) is True
        assert store.revoke("t1", NOW + 50) is True
    revoked = store.get("t1")
    assert revoked is not None and revoked.revoked_at == NOW
    assert store.count_ended(NOW) == 1


def selector_tokens() -> list[TokenRecord]:
    """Tokens for revoke_matching, inserted in another order than created, and with IDs
    in neither order."""
    return [
        token("aa-new", created=NOW - 100, label="ci", scopes=("deploy", "read")),
        token("mm-mid", created=NOW - 200, label="ci"),
        token("zz-old", created=NOW - 300, label="ci", scopes=("deploy",)),
        token("ci-expired", label="ci", scopes=("deploy",), expires=NOW - 1),
        token("ci-spent", label="ci", scopes=("deploy",), uses=0),
        token("other", created=NOW - 250, label="ops", scopes=("deploy",)),
    ]


def test_revoke_matching_revokes_live_selected_tokens(store: Store) -> None:
    with store.transaction():
        store.insert_tokens(selector_tokens())
    only_deploy = TokenFilter(states=None, label="ci", scopes=("deploy",))
    with store.transaction():
        assert sorted(store.revoke_matching(only_deploy, NOW)) == ["aa-new", "zz-old"]
    with store.transaction():
        assert store.revoke_matching(only_deploy, NOW) == []  # no longer live
    with store.transaction():  # limit and states are ignored: every live match goes
        everything = TokenFilter(states=frozenset(), expires_by=NOW + HOUR, limit=1)
        assert sorted(store.revoke_matching(everything, NOW)) == ["mm-mid", "other"]
    assert store.counts(NOW).live == 0
    assert store.count_ended(NOW) == 6
    revoked = store.get_many(["aa-new", "zz-old", "mm-mid", "other"])
    assert {record.revoked_at for record in revoked.values()} == {NOW}


def test_revoke_matching_returns_ids_oldest_first(store: Store) -> None:
    with store.transaction():
        store.insert_tokens(selector_tokens())
    with store.transaction():
        first = store.revoke_matching(TokenFilter(label="ci", scopes=("deploy",)), NOW)
        rest = store.revoke_matching(TokenFilter(), NOW)
    assert (first, rest) == (["zz-old", "aa-new"], ["other", "mm-mid"])


def test_iter_tokens_filters_combine_and_come_by_id(store: Store) -> None:
    with store.transaction():
        store.insert_tokens(
            [
                token("young", created=NOW - 100, label="x", scopes=("b",)),
                token("b-valid", created=NOW - 500, label="x", scopes=("a", "b")),
                token("a-valid", created=NOW - 500, label="x", scopes=("a",), expires=NOW + 60),
                token("expired", created=NOW - 400, expires=NOW - 1),
                token("used-up", created=NOW - 300, uses=0),
                token("revoked", created=NOW - 200, revoked=NOW - 5, expires=NOW - 1),
            ]
        )
    assert ids(store) == ["a-valid", "b-valid", "young"]  # live by default
    assert ids(store, states=None) == [
        "a-valid",
        "b-valid",
        "expired",
        "revoked",
        "used-up",
        "young",
    ]
    assert ids(store, states=frozenset({TokenState.EXPIRED})) == ["expired"]  # revoked wins
    assert ids(store, states=frozenset({TokenState.USED_UP, TokenState.REVOKED})) == [
        "revoked",
        "used-up",
    ]
    assert ids(store, states=frozenset()) == []
    assert ids(store, label="x") == ["a-valid", "b-valid", "young"]
    assert ids(store, label="X") == []
    assert ids(store, scopes=("a", "b")) == ["b-valid"]
    assert ids(store, scopes=("b",)) == ["b-valid", "young"]
    assert ids(store, expires_by=NOW + 60) == ["a-valid"]
    assert ids(store, states=None, limit=2) == ["a-valid", "b-valid"]
    assert ids(store, label="x", scopes=("a",), expires_by=NOW + HOUR, limit=1) == ["a-valid"]


def test_a_filter_no_stored_token_can_match_selects_nothing(store: Store) -> None:
    # GET /app/tokens?label=%00 reaches the store: no label holds NUL (issue refuses
    # control characters, and PostgreSQL text cannot hold one), so nothing matches.
    with store.transaction():
        store.insert_tokens([token("t1", label="a"), token("t2", label="ab")])
    for label in ("\x00", "a\x00b", "a\x00"):
        assert ids(store, label=label) == []
        assert ids(store, states=None, label=label, limit=5) == []
        with store.transaction():
            assert store.revoke_matching(TokenFilter(label=label), NOW) == []
    assert ids(store) == ["t1", "t2"]


def test_a_stream_opened_outside_a_block_survives_writes_beside_it(store: Store) -> None:
    with store.transaction():
        store.insert_tokens([token(f"t{i:05d}", created=NOW - 10_000 + i) for i in range(3000)])
    stream = store.iter_tokens(EVERY, NOW)
    assert next(stream).id == "t00000"
    with store.transaction():  # the connection stays usable while the stream is open
        assert store.revoke("t02999", NOW)
        store.record([event(NOW, "revoke", "t02999")])
    assert store.get("t02999") is not None
    rest = [record.id for record in stream]
    assert rest == [f"t{i:05d}" for i in range(1, 3000)]
    assert store.count_ended(NOW) == 1


def test_a_stream_consumed_inside_its_block(store: Store) -> None:
    with store.transaction():
        store.insert_tokens([token(f"t{i:05d}", created=NOW - 10_000 + i) for i in range(2500)])
    with store.transaction():
        listed = [record.id for record in store.iter_tokens(TokenFilter(limit=2000), NOW)]
        store.revoke(listed[0], NOW)
        events = list(store.iter_events())
    assert len(listed) == 2000 and events == []
    assert store.count_ended(NOW) == 1


def page_ids(page: TokenPage) -> tuple[list[str], str | None]:
    return [record.id for record in page.records], page.next


def test_pages_go_by_id_and_say_where_the_next_starts(store: Store) -> None:
    with store.transaction():
        store.insert_tokens([token(f"t{i:02d}", created=NOW - i) for i in range(10)])
    every = [f"t{i:02d}" for i in range(10)]
    assert page_ids(store.page_tokens(EVERY, NOW, None, 4)) == (every[:4], "t03")
    assert page_ids(store.page_tokens(EVERY, NOW, "t03", 4)) == (every[4:8], "t07")
    assert page_ids(store.page_tokens(EVERY, NOW, "t07", 4)) == (every[8:], None)
    assert page_ids(store.page_tokens(EVERY, NOW, "t07", 2)) == (every[8:], None)
    assert page_ids(store.page_tokens(EVERY, NOW, "t09", 4)) == ([], None)
    assert page_ids(store.page_tokens(EVERY, NOW, "t035", 4)) == (every[4:8], "t07")
    assert page_ids(store.page_tokens(EVERY, NOW, "", 100)) == (every, None)
    # The filter's limit is the caller's: a page is `size` long whatever it says.
    assert page_ids(store.page_tokens(TokenFilter(states=None, limit=1), NOW, None, 3)) == (
        every[:3],
        "t02",
    )


def test_a_scan_bound_keeps_a_selective_page_short_and_the_walk_whole(store: Store) -> None:
    with store.transaction():
        store.insert_tokens(
            [token(f"t{i:02d}", label="rare" if i in (3, 4, 15) else None) for i in range(20)]
        )
    rare = TokenFilter(label="rare")
    assert page_ids(store.page_tokens(rare, NOW, None, 2, scan=5)) == (["t03", "t04"], "t04")
    assert page_ids(store.page_tokens(rare, NOW, "t04", 2, scan=5)) == ([], "t09")
    assert page_ids(store.page_tokens(rare, NOW, "t09", 2, scan=5)) == ([], "t14")
    assert page_ids(store.page_tokens(rare, NOW, "t14", 2, scan=5)) == (["t15"], "t19")
    assert page_ids(store.page_tokens(rare, NOW, "t19", 2, scan=5)) == ([], None)
    # Fewer than `scan` tokens left: the page runs to the end and says so.
    assert page_ids(store.page_tokens(rare, NOW, "t10", 2, scan=50)) == (["t15"], None)
    assert page_ids(store.page_tokens(EVERY, NOW, "t16", 2, scan=3)) == (["t17", "t18"], "t18")


@pytest.mark.parametrize("scan", [None, 3])
def test_writes_between_pages_neither_skip_nor_repeat_a_token(
    store: Store, scan: int | None
) -> None:
    """Pages cover ranges of IDs: a token stored before the first page and after the last
    is read exactly once, whatever is inserted, revoked or deleted around it meanwhile."""
    with store.transaction():
        store.insert_tokens([token(f"t{i:02d}0") for i in range(12)])
    seen: list[str] = []
    deleted: set[str] = set()
    after: str | None = None
    step = 0
    while True:
        page = store.page_tokens(EVERY, NOW, after, 2, scan=scan)
        seen += [record.id for record in page.records]
        if page.next is None:
            break
        after = page.next
        step += 1
        gone = f"t{(step * 5) % 12:02d}0"  # ahead of the cursor or behind it
        with store.transaction():
            store.insert_tokens([token(f"t{step:02d}5"), token(f"a{step:02d}")])
            store.revoke(gone, NOW - 1)
        with store.transaction():
            store.purge(NOW)
        deleted.add(gone)
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert not any(token_id.startswith("a") for token_id in seen)  # all behind the cursor
    kept = {f"t{i:02d}0" for i in range(12)} - deleted
    assert kept and kept <= set(seen)
    assert any(gone in seen for gone in deleted) and not deleted <= set(seen)


def test_event_pages_walk_the_trail_oldest_first(store: Store) -> None:
    events = [event(NOW + index // 3, "check", f"t{index:03d}") for index in range(10)]
    with store.transaction():
        store.record(events)
    walked: list[AuditEvent] = []
    page = store.page_events(None, 4)
    while True:
        assert len(page.events) <= 4
        walked += page.events
        if page.next is None:
            break
        page = store.page_events(page.next, 4)
    assert walked == events
    assert list(store.iter_events()) == events
    assert store.page_events(None, 20).next is None


def test_existing_events_finds_the_same_events_and_only_those(store: Store) -> None:
    stored = [
        event(NOW, "check", "t1"),
        AuditEvent(NOW, "purge", None, "purged 3", "cli", None),
        AuditEvent(NOW + 5, "check", "t2", "valid", "http", "note"),
    ]
    with store.transaction():
        store.record(stored)
    asked = [
        *stored,
        event(NOW, "check", "t2"),  # another token, same second
        AuditEvent(NOW, "purge", None, "purged 3", "http", None),  # another source
        AuditEvent(NOW + 5, "check", "t2", "valid", "http", None),  # no detail
        event(NOW + 6, "check", "t1"),  # another second
    ]
    assert store.existing_events(asked) == set(stored)
    assert store.existing_events([]) == set()


def test_set_and_cut_expiry_move_the_end(store: Store) -> None:
    with store.transaction():
        store.insert_tokens([token("renew"), token("cut"), token("clamp", created=NOW - 10)])
        store.set_expiry("renew", NOW + 2 * HOUR)
        store.cut_expiry("cut", NOW + 60)
        store.cut_expiry("clamp", NOW - 1000)  # never before its creation
    assert store.get("renew") == token("renew", expires=NOW + 2 * HOUR)
    assert store.get("cut") == token("cut", expires=NOW + 60)
    assert store.get("clamp") == token("clamp", created=NOW - 10, expires=NOW - 10)
    assert ids(store, NOW + 61) == ["renew"]
    with store.transaction():
        assert store.purge(NOW + 61) == 2


def test_set_expiry_never_revives_a_revoked_or_used_up_token(store: Store) -> None:
    with store.transaction():
        store.insert_tokens([token("revoked"), token("single", uses=1), token("expired")])
        store.revoke("revoked", NOW)
        assert store.consume_uses({"single": 1}, NOW) == {"single": (1, 0)}
    before = store.get_many(["revoked", "single"])
    with store.transaction():
        for token_id in ("revoked", "single", "expired"):
            store.set_expiry(token_id, NOW + 30 * 86_400)
    assert store.get_many(["revoked", "single"]) == before  # neither changed at all
    later = NOW + 2 * HOUR  # past the old expiry, inside the new one
    assert ids(store, later) == ["expired"]  # only the merely expired token was renewed
    counts = store.counts(NOW)
    assert (counts.live, counts.used_up, counts.revoked) == (1, 1, 1)
    with store.transaction():
        assert store.purge(NOW) == 2  # they end when they ended, not at the new expiry


def test_purge_and_counts(store: Store) -> None:
    with store.transaction():
        store.insert_tokens(
            [
                token("live1", expires=NOW + 50),
                token("live2", uses=2),
                token("expired", expires=NOW - 1),
                token("spent", uses=0),
                token("revoked", revoked=NOW - 1),
            ]
        )
        store.record([event(NOW - 30), event(NOW - 20)])
    counts = store.counts(NOW)
    assert counts == (2, 1, 1, 1, NOW + 50, 2, NOW - 30)
    assert store.count_ended(NOW) == 3
    with store.transaction():
        assert store.purge(NOW) == 3
    assert store.counts(NOW)[:4] == (2, 0, 0, 0)
    with store.transaction():
        assert store.purge(NOW) == 0
    empty = store.counts(NOW + 2 * HOUR)
    assert (empty.live, empty.next_expiry) == (0, None)


def test_live_ids_and_scopes_in_use_take_prefixes_literally_and_sort_bytewise(
    store: Store,
) -> None:
    # Under the test cluster's ICU collation "a_b" < "a-b" < "a.b" < "a0" < "ab": byte
    # order differs, and must win (as in Python).
    names = sorted(["ab", "a0", "a.b", "a-b", "a_b", "a:b"])
    with store.transaction():
        store.insert_tokens(
            [
                token("abc_1", label="one", scopes=tuple(names[:3])),
                token("abcx1", label="two", scopes=tuple(names[3:])),
                token("abd", scopes=("zz",)),
                token("abc_dead", expires=NOW - 1, scopes=("dead-scope",)),
            ]
        )
    assert store.live_ids(NOW, "abc_", 10) == [("abc_1", "one")]  # _ is not a wildcard
    assert store.live_ids(NOW, "ab", 10) == [("abc_1", "one"), ("abcx1", "two"), ("abd", None)]
    assert store.live_ids(NOW, "ab", 1) == [("abc_1", "one")]
    assert store.live_ids(NOW, "%", 10) == []
    assert store.scopes_in_use(NOW, "a", 10) == names
    assert store.scopes_in_use(NOW, "a_", 10) == ["a_b"]
    assert store.scopes_in_use(NOW, "", 3) == names[:3]
    assert store.scopes_in_use(NOW, "dead", 10) == []


def test_size_and_ping(store: Store) -> None:
    before = store.size_bytes()
    assert before is not None and before > 0
    with store.transaction():
        store.insert_tokens([token(f"s{i}", label="x" * 100) for i in range(2000)])
    after = store.size_bytes()
    assert after is not None and after > before
    store.ping()


# -- audit trail --------------------------------------------------------------------------


def test_events_come_oldest_first_within_the_newest_limit(store: Store) -> None:
    with store.transaction():  # same second: the order recorded is the order kept
        store.record([event(NOW, "issue", "a"), event(NOW, "check", "a")])
        store.record([event(NOW, "revoke", "a")])
        store.record([event(NOW - 100, "issue", "b"), event(NOW + 5, "check", "b")])
        store.record([])
    newest = store.events(since=None, token_id=None, limit=3)
    assert [(e.at, e.action) for e in newest] == [
        (NOW, "check"),
        (NOW, "revoke"),
        (NOW + 5, "check"),
    ]
    assert [e.action for e in store.events(since=None, token_id="a", limit=10)] == [
        "issue",
        "check",
        "revoke",
    ]
    assert len(store.events(since=NOW, token_id=None, limit=10)) == 4
    assert store.events(since=NOW + 6, token_id=None, limit=10) == []
    assert [(e.at, e.token_id) for e in store.iter_events()] == [
        (NOW - 100, "b"),
        (NOW, "a"),
        (NOW, "a"),
        (NOW, "a"),
        (NOW + 5, "b"),
    ]
    with store.transaction():
        assert store.drop_events_before(NOW) == 1
        assert store.drop_events_before(NOW) == 0
    assert store.counts(NOW).audit_events == 4


@pytest.mark.parametrize("count", [31, 32, 33, 64, 70, 200])
def test_a_batch_of_events_is_kept_whole_and_in_order(store: Store, count: int) -> None:
    # A server appends a batch's events together (on SQLite, rows of one INSERT at a
    # time, and the rest one by one): every event, each field, in the order given.
    events = [
        AuditEvent(NOW + index % 3, "check", f"t{index:05d}", "valid", "http", f"n{index}")
        for index in range(count)
    ]
    with store.transaction():
        store.record(iter(events))
    assert list(store.iter_events()) == sorted(events, key=lambda e: e.at)
    assert [e.detail for e in store.events(since=None, token_id=None, limit=count)] == [
        e.detail for e in sorted(events, key=lambda e: e.at)
    ]


# -- transactions and batches -------------------------------------------------------------


def test_a_failed_transaction_keeps_neither_the_change_nor_its_event(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.insert_tokens([token("ghost")])
        store.record([event(NOW, "issue", "ghost")])
        raise RuntimeError("boom")
    assert store.get("ghost") is None
    assert store.events(since=None, token_id=None, limit=10) == []
    with store.transaction():
        store.insert_tokens([token("real")])
        store.record([event(NOW, "issue", "real")])
    assert store.get("real") is not None
    assert len(store.events(since=None, token_id="real", limit=10)) == 1


def test_a_batch_commits_once_and_a_failed_step_rolls_back_alone(
    store: Store, location: Location
) -> None:
    other = open_store(location, create=False)
    try:
        with store.batch():
            with store.transaction():
                store.insert_tokens([token("kept")])
                store.record([event(NOW, "issue", "kept")])
            with pytest.raises(RuntimeError), store.transaction():
                store.insert_tokens([token("dropped")])
                store.record([event(NOW, "issue", "dropped")])
                raise RuntimeError("this step only")
            with pytest.raises(IdCollisionError), store.transaction():  # a failed statement
                store.insert_tokens([token("kept")])
            with store.transaction():
                pass  # a step with nothing in it
            with store.transaction():
                assert store.revoke("kept", NOW)
            assert other.get("kept") is None  # nothing is visible before the batch commits
        kept = other.get("kept")
        assert kept is not None and kept.revoked_at == NOW
        assert other.get("dropped") is None
        assert [e.token_id for e in other.events(since=None, token_id=None, limit=10)] == ["kept"]
    finally:
        other.close()
