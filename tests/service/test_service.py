"""The token rules, on each store (a real SQLite file, a real PostgreSQL schema), with a
clock the test moves."""

from __future__ import annotations

import pytest

from tokencli.domain.errors import InvalidRequestError, NotFoundError
from tokencli.domain.model import EVERY_TOKEN, MAX_TTL_SECONDS, TokenState
from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

from databases import RawDatabase
from support import START, Clock

pytestmark = pytest.mark.stores("sqlite", "postgres")


def test_issue_then_check_is_valid(service: TokenService) -> None:
    issued = service.issue(ttl_seconds=900, label="deploy")
    assert issued.info.expires_at == START + 900
    assert issued.info.created_at == START
    result = service.check(issued.token)
    assert result.valid
    assert result.state is TokenState.VALID
    assert result.info is not None
    assert result.info.label == "deploy"
    assert result.info.uses_left is None


def test_expiry_boundary_is_exact(service: TokenService, clock: Clock) -> None:
    issued = service.issue(ttl_seconds=60)
    clock.advance(59.999)
    assert service.check(issued.token).state is TokenState.VALID
    clock.advance(0.001)  # exactly created_at + ttl: expired from this instant on
    assert service.check(issued.token).state is TokenState.EXPIRED


def test_expired_token_stays_expired_until_purge(service: TokenService, clock: Clock) -> None:
    issued = service.issue(ttl_seconds=60)
    clock.advance(60)
    assert service.check(issued.token).state is TokenState.EXPIRED
    assert service.store.get(issued.info.id) is not None  # check never deletes
    assert service.check(issued.token).state is TokenState.EXPIRED  # says so consistently
    service.purge()
    assert service.check(issued.token).state is TokenState.UNKNOWN


def test_a_clock_that_jumped_forward_destroys_nothing(service: TokenService, clock: Clock) -> None:
    issued = service.issue(ttl_seconds=3600)
    clock.advance(10 * 86_400)  # the clock jumps ten days ahead...
    assert service.check(issued.token).state is TokenState.EXPIRED
    clock.advance(-10 * 86_400)  # ...and is corrected: the token is back
    assert service.check(issued.token).state is TokenState.VALID


def test_a_clock_that_jumped_back_stores_no_expiry_before_creation(
    service: TokenService, clock: Clock
) -> None:
    issued = service.issue(ttl_seconds=3600)
    clock.advance(-30 * 86_400)  # the clock steps back a month
    renewed = service.renew(issued.info.id, 60)
    record = service.store.get(issued.info.id)
    assert record is not None and record.expires_at > record.created_at
    assert renewed.expires_at == record.expires_at
    successor = service.rotate(issued.info.id)  # lifetime = expiry - creation: still positive
    clock.advance(30 * 86_400)
    assert service.check(successor.token).state is TokenState.EXPIRED
    old = service.store.get(issued.info.id)
    assert old is not None and old.expires_at >= old.created_at


def test_every_verdict(service: TokenService, clock: Clock) -> None:
    valid = service.issue(ttl_seconds=600)
    single = service.issue(ttl_seconds=600, uses=1)
    revoked = service.issue(ttl_seconds=600)
    expiring = service.issue(ttl_seconds=10)
    service.revoke(revoked.info.id)
    assert service.check(single.token).state is TokenState.VALID
    clock.advance(10)
    other = TokenService(SQLiteStore.empty(), clock).issue()

    assert service.check(valid.token).state is TokenState.VALID
    assert service.check(single.token).state is TokenState.USED_UP
    assert service.check(revoked.token).state is TokenState.REVOKED
    assert service.check(expiring.token).state is TokenState.EXPIRED
    assert service.check(other.token).state is TokenState.UNKNOWN
    assert service.check("hello").state is TokenState.MALFORMED
    assert service.check("").state is TokenState.MALFORMED


def test_right_id_with_wrong_secret_is_unknown(service: TokenService) -> None:
    issued = service.issue()
    forged = TokenService(SQLiteStore.empty()).issue().token
    forged_with_real_id = issued.info.id + forged[len(issued.info.id) :]
    # The checksum covers the ID, so this is malformed before any lookup...
    assert service.check(forged_with_real_id).state is TokenState.MALFORMED
    assert service.check(issued.token).state is TokenState.VALID


def test_use_limit_counts_down(service: TokenService) -> None:
    issued = service.issue(uses=3)
    lefts = []
    for _ in range(3):
        result = service.check(issued.token)
        assert result.valid
        assert result.info is not None
        lefts.append(result.info.uses_left)
    assert lefts == [2, 1, 0]
    used = service.check(issued.token)
    assert used.state is TokenState.USED_UP
    assert not used.valid


def test_invalid_checks_do_not_consume_uses(service: TokenService) -> None:
    issued = service.issue(uses=1)
    service.check("garbage")
    service.check(issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B"))
    assert service.check(issued.token).valid


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL_SECONDS + 1])
def test_ttl_out_of_range_is_refused(service: TokenService, ttl: int) -> None:
    with pytest.raises(InvalidRequestError, match="TTL"):
        service.issue(ttl_seconds=ttl)


def test_largest_ttl_is_accepted(service: TokenService) -> None:
    assert service.issue(ttl_seconds=MAX_TTL_SECONDS).info.expires_at == START + MAX_TTL_SECONDS


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"uses": 0}, "uses must be a positive"),
        ({"uses": -3}, "uses must be a positive"),
        ({"count": 0}, "count must be a positive"),
        ({"count": 1_000_001}, "count is too large"),
        ({"label": "x" * 201}, "label is 201 characters"),
        ({"label": "bell\x07"}, "control character"),
        ({"label": "line\nbreak"}, "control character"),
        ({"label": "spoof\u202etxt"}, "control character"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    service: TokenService, options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        list(service.issue_batches(**options))  # type: ignore[arg-type]
    assert list(service.list_tokens(EVERY_TOKEN)) == []


def test_label_of_200_printable_characters_is_kept(service: TokenService) -> None:
    label = "é[red]x[/red]" + "y" * 187
    assert len(label) == 200
    assert service.issue(label=label).info.label == label


def test_count_issues_in_batches_all_stored(service: TokenService) -> None:
    issued = [
        token for batch in service.issue_batches(count=1234, ttl_seconds=60) for token in batch
    ]
    assert len(issued) == 1234
    assert len(list(service.list_tokens())) == 1234
    assert all(service.check(token.token).valid for token in issued[::97])


def test_revoke_by_id_or_token_and_missing(service: TokenService) -> None:
    first = service.issue()
    second = service.issue()
    assert service.revoke(first.info.id) == first.info.id
    assert service.revoke(second.token) == second.info.id
    assert service.revoke(first.info.id) == first.info.id  # again: still revoked, no error
    with pytest.raises(NotFoundError, match="no token"):
        service.revoke("aaaaaaaaaaaa")
    with pytest.raises(NotFoundError, match="neither a token ID nor a token"):
        service.revoke("not-an-id")
    assert {info.state for info in list(service.list_tokens(EVERY_TOKEN))} == {TokenState.REVOKED}


def test_list_shows_live_only_unless_all(service: TokenService, clock: Clock) -> None:
    live = service.issue(ttl_seconds=600)
    expired = service.issue(ttl_seconds=5)
    used = service.issue(uses=1)
    revoked = service.issue()
    service.check(used.token)
    service.revoke(revoked.info.id)
    clock.advance(5)
    assert [info.id for info in list(service.list_tokens())] == [live.info.id]
    states = {info.id: info.state for info in list(service.list_tokens(EVERY_TOKEN))}
    assert states == {
        live.info.id: TokenState.VALID,
        expired.info.id: TokenState.EXPIRED,
        used.info.id: TokenState.USED_UP,
        revoked.info.id: TokenState.REVOKED,
    }


def test_purge_removes_ended_tokens_only(service: TokenService, clock: Clock) -> None:
    live = service.issue(ttl_seconds=600)
    service.issue(ttl_seconds=5)
    used = service.issue(uses=1)
    service.check(used.token)
    service.revoke(service.issue().info.id)
    clock.advance(5)
    assert service.purge(dry_run=True).purged == 3
    assert len(list(service.list_tokens(EVERY_TOKEN))) == 4
    result = service.purge()
    assert (result.purged, result.dry_run) == (3, False)
    assert [info.id for info in list(service.list_tokens(EVERY_TOKEN))] == [live.info.id]
    assert service.purge().purged == 0


def test_stolen_database_holds_no_plaintext_token(service: TokenService, raw: RawDatabase) -> None:
    issued = [service.issue(label="stolen?") for _ in range(20)]
    service.store.close()  # SQLite: the WAL goes into the file
    stolen = raw.dump()  # SQLite: the file's bytes; PostgreSQL: pg_dump of the schema
    assert b"stolen?" in stolen  # the dump does hold the rows...
    for token in issued:
        secret = token.token.split(":")[1]
        assert token.info.id.encode() in stolen
        assert secret.encode() not in stolen  # ...but never a secret, nor its start
        assert secret[:16].encode() not in stolen
    rows = raw.rows("SELECT * FROM tokens")
    assert len(rows) == 20
    assert not any(token.token.split(":")[1] in repr(rows) for token in issued)


def test_a_clock_stepped_back_lists_no_revoked_or_used_up_token_as_live(
    service: TokenService, clock: Clock
) -> None:
    live = service.issue(ttl_seconds=3600)
    revoked = service.issue(ttl_seconds=3600)
    single = service.issue(ttl_seconds=3600, uses=1)
    clock.advance(600)
    service.revoke(revoked.info.id)
    assert service.check(single.token).valid
    clock.advance(-300)  # the clock steps back five minutes
    assert service.check(revoked.token).state is TokenState.REVOKED
    assert service.check(single.token).state is TokenState.USED_UP
    assert [info.id for info in service.list_tokens()] == [live.info.id]
    counts = service.stats().counts
    assert (counts.live, counts.revoked, counts.used_up) == (1, 1, 1)
