"""`export` and `import`: every token not yet purged as JSON lines, and back in one
transaction (docs/design.md, "Command line")."""

from __future__ import annotations

import datetime
import json
import sqlite3
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain import tokens
from tokencli.domain.errors import ConflictError, InvalidRequestError
from tokencli.domain.model import BIDI_CONTROLS, EVERY_TOKEN, TokenState
from tokencli.service.service import TokenService
from tokencli.service.transfer import event_line, import_lines, token_line
from tokencli.store.sqlite.queries import SQLiteStore

from support import Clock

TOKEN_KEYS = [
    "type",
    "id",
    "label",
    "created_at",
    "expires_at",
    "uses_left",
    "uses_limit",
    "revoked_at",
    "scopes",
    "secret_hash",
]
EVENT_KEYS = ["type", "at", "action", "token_id", "outcome", "source", "detail"]
FAST = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """Another database file, for imports."""
    return tmp_path / "fresh.db"


def export(runner: CliRunner, *args: str) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def export_text(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def import_into(runner: CliRunner, db: Path, text: str | bytes, *args: str) -> Any:
    return runner.invoke(app, ["--db", str(db), "import", *args], input=text)


def rows(db: Path) -> list[tuple[Any, ...]]:
    """Every stored token row, as the file holds it (nothing if there is no file)."""
    if not db.exists():
        return []
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return connection.execute("SELECT * FROM tokens ORDER BY id").fetchall()
    finally:
        connection.close()


@pytest.fixture
def zoo(on_file: TokenService) -> dict[str, Any]:
    """Tokens in every state, with labels, scopes and use limits; plaintexts kept."""
    past = TokenService(on_file.store, Clock(1_000_000_000))
    made: dict[str, Any] = {
        "expired": past.issue(ttl_seconds=60, label="old", scopes=["a"]),
        "used_up": on_file.issue(uses=1, label="once"),
        "revoked": on_file.issue(label="gone", scopes=["b", "a"]),
        "live": on_file.issue(label="web \u00e9", scopes=["read:logs"], uses=5),
        "plain": on_file.issue(),
    }
    assert on_file.check(made["used_up"].token).valid
    assert on_file.check(made["live"].token).valid  # 4 uses left
    on_file.revoke(made["revoked"].info.id)
    return made


# -- export ----------------------------------------------------------------------------


def test_export_holds_every_token_not_yet_purged(
    runner: CliRunner, zoo: dict[str, Any], on_file: TokenService
) -> None:
    lines = export(runner)
    assert all(list(line) == TOKEN_KEYS and line["type"] == "token" for line in lines)
    assert sorted(line["id"] for line in lines) == sorted(item.info.id for item in zoo.values())
    by_id = {line["id"]: line for line in lines}
    live = by_id[zoo["live"].info.id]
    assert (live["label"], live["uses_left"], live["uses_limit"]) == ("web \u00e9", 4, 5)
    assert live["scopes"] == ["read:logs"] and live["revoked_at"] is None
    assert by_id[zoo["revoked"].info.id]["revoked_at"] is not None
    assert by_id[zoo["revoked"].info.id]["scopes"] == ["a", "b"]
    assert by_id[zoo["used_up"].info.id]["uses_left"] == 0
    assert by_id[zoo["expired"].info.id]["expires_at"] == "2001-09-09T01:47:40Z"
    assert all(line["secret_hash"].startswith("sha256:") for line in lines)
    on_file.purge()
    assert sorted(line["id"] for line in export(runner)) == sorted(
        [zoo["live"].info.id, zoo["plain"].info.id]
    )


def test_export_audit_adds_the_events_after_the_tokens(
    runner: CliRunner, zoo: dict[str, Any]
) -> None:
    lines = export(runner, "--audit")
    kinds = [line["type"] for line in lines]
    assert kinds == ["token"] * 5 + ["event"] * (len(lines) - 5)
    events = lines[5:]
    assert all(list(event) == EVENT_KEYS for event in events)
    actions = [(event["action"], event["token_id"]) for event in events]
    assert ("revoke", zoo["revoked"].info.id) in actions
    assert ("check", zoo["live"].info.id) in actions


def test_export_never_holds_a_plaintext_or_a_secret(runner: CliRunner, zoo: dict[str, Any]) -> None:
    text = export_text(runner, "--audit")
    for issued in zoo.values():
        secret = issued.token.split(":")[1]
        assert issued.token not in text
        assert secret not in text and secret[:24] not in text and secret[-12:] not in text


def test_export_filters_as_list(runner: CliRunner, zoo: dict[str, Any]) -> None:
    def ids(*args: str) -> list[str]:
        return sorted(line["id"] for line in export(runner, *args))

    assert ids("--label", "gone") == [zoo["revoked"].info.id]
    assert ids("--scope", "a") == sorted([zoo["expired"].info.id, zoo["revoked"].info.id])
    assert ids("--state", "valid") == sorted([zoo["live"].info.id, zoo["plain"].info.id])
    assert ids("--state", "used_up", "--state", "expired") == sorted(
        [zoo["used_up"].info.id, zoo["expired"].info.id]
    )
    assert ids("--limit", "1") == sorted(item.info.id for item in zoo.values())[:1]  # by ID
    assert len(ids("--expiring-within", "2h")) == 5


def test_export_of_a_missing_database_is_empty_and_creates_nothing(
    runner: CliRunner, db_path: Path
) -> None:
    assert export_text(runner, "--audit") == ""
    assert not db_path.exists()


# -- import ----------------------------------------------------------------------------


def test_round_trip_keeps_every_token_as_it_was(
    runner: CliRunner, zoo: dict[str, Any], on_file: TokenService, fresh: Path
) -> None:
    text = export_text(runner, "--audit")
    before = {info.id: info for info in on_file.list_tokens(EVERY_TOKEN)}
    result = import_into(runner, fresh, text)
    assert result.exit_code == 0, result.output
    events = len(text.splitlines()) - 5
    assert result.stdout == f"imported 5 tokens and {events} audit events\n"
    store = SQLiteStore.open(fresh, create=False)
    try:
        imported = TokenService(store)
        after = {info.id: info for info in imported.list_tokens(EVERY_TOKEN)}
        assert after == before  # labels, scopes, uses, expiry and state, exactly
        again = "\n".join(line for line in text.splitlines() if '"type": "token"' in line)
        exported_again = runner.invoke(app, ["--db", str(fresh), "export"]).stdout
        assert exported_again.strip() == again
        # What checked valid before checks valid after; what was refused stays refused.
        expected = {
            "expired": TokenState.EXPIRED,
            "used_up": TokenState.USED_UP,
            "revoked": TokenState.REVOKED,
            "live": TokenState.VALID,
            "plain": TokenState.VALID,
        }
        for name, state in expected.items():
            assert imported.check(zoo[name].token).state is state, name
        assert imported.check(zoo["live"].token, ["read:logs"]).info.uses_left == 2  # type: ignore[union-attr]
        audit = imported.audit(limit=1000)
        assert audit[-1].action == "check" and audit[-2].action == "check"
        assert any(event.action == "import" for event in audit)
    finally:
        store.close()


def test_import_reads_an_empty_input_as_nothing_to_do(runner: CliRunner, fresh: Path) -> None:
    for text in ("", "\n", "\n\n   \n"):
        result = import_into(runner, fresh, text)
        assert result.exit_code == 0, result.output
        assert result.stdout == "imported 0 tokens and 0 audit events\n"
    assert rows(fresh) == []


def test_import_json_output(runner: CliRunner, zoo: dict[str, Any], fresh: Path) -> None:
    text = export_text(runner)
    result = import_into(runner, fresh, text, "--json")
    assert json.loads(result.stdout) == {"tokens": 5, "skipped": 0, "events": 0}


def good_lines(runner: CliRunner) -> list[str]:
    return export_text(runner, "--audit").splitlines()


BAD_LINES = [
    "garbage",
    "[]",
    "{}",
    '{"type": "tokens"}',
    '{"type": "token"}',
    "{",
    "null",
    "1e400",
    '"string"',
]


@pytest.mark.parametrize("bad", BAD_LINES)
@pytest.mark.parametrize("position", [0, 2, -1])
def test_a_bad_line_imports_nothing_and_names_its_number(
    runner: CliRunner, zoo: dict[str, Any], fresh: Path, bad: str, position: int
) -> None:
    lines = good_lines(runner)
    index = position if position >= 0 else len(lines)
    lines.insert(index, bad)
    result = import_into(runner, fresh, "\n".join(lines) + "\n")
    assert result.exit_code == 2, result.output
    assert f"line {index + 1}" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output
    assert rows(fresh) == []


def mangled(line: dict[str, Any], **changes: Any) -> str:
    return json.dumps({**line, **changes})


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "AAAAAAAAAAAA"},
        {"id": "short"},
        {"id": None},
        {"secret_hash": "sha256:00"},
        {"secret_hash": "md5:" + "0" * 64},
        {"secret_hash": "sha256:" + "z" * 64},
        {"secret_hash": 5},
        {"created_at": "yesterday"},
        {"created_at": None},
        {"expires_at": "1999-01-01T00:00:00Z"},  # before its creation
        {"expires_at": 1_790_000_000},
        {"revoked_at": "2026-13-01T00:00:00Z"},
        {"uses_left": -1},
        {"uses_left": 1.5},
        {"uses_left": True},
        {"uses_left": 10**12},
        {"uses_limit": "3"},
        {"label": "x" * 201},
        {"label": "\x1b[31mred"},
        {"label": "\ud800"},
        {"label": 7},
        {"scopes": ["Bad"]},
        {"scopes": "a"},
        {"scopes": [f"s{n}" for n in range(33)]},
        {"scopes": ["\ud800"]},
        {"extra": 1},
        # Times: exactly as export writes them, a real instant from 1970 to 9999.
        {"created_at": "0001-01-01T00:00:00Z"},
        {"created_at": "1969-12-31T23:59:59Z"},
        {"revoked_at": "0001-01-01T00:00:00Z"},
        {"expires_at": "10000-01-01T00:00:00Z"},
        {"created_at": "9999-01-01T00:00:00Z", "expires_at": "9999-12-31T23:59:59Z"},
        {"expires_at": "2030-1-5T01:02:03Z"},
        {"expires_at": "2030-01-01T00:00:60Z"},  # a leap second: exported as another time
        {"expires_at": "2030-02-30T00:00:00Z"},
        {"expires_at": "2030-01-01T00:00:00+00:00"},
        {"expires_at": "2030-01-01 00:00:00Z"},
        {"expires_at": "\uff12030-01-01T00:00:00Z"},  # a fullwidth digit
        # Uses: a limit of 1 or more, and never more left than the limit.
        {"uses_left": 6, "uses_limit": 5},
        {"uses_left": 0, "uses_limit": 0},
        {"uses_left": None, "uses_limit": 5},
        {"secret_hash": "sha256:" + "0" * 62 + " 0"},
        {"secret_hash": "sha256: " + "0" * 64},
        {"secret_hash": "SHA256:" + "0" * 64},
    ],
    ids=repr,
)
def test_a_bad_token_field_imports_nothing(
    runner: CliRunner, zoo: dict[str, Any], fresh: Path, changes: dict[str, Any]
) -> None:
    lines = good_lines(runner)
    lines[1] = mangled(json.loads(lines[1]), **changes)
    result = import_into(runner, fresh, "\n".join(lines))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: line 2: ")
    assert result.stderr.count("\n") == 1 and len(result.stderr) < 300
    assert rows(fresh) == []


def test_missing_fields_are_named(runner: CliRunner, zoo: dict[str, Any], fresh: Path) -> None:
    line = json.loads(good_lines(runner)[0])
    del line["secret_hash"], line["scopes"]
    result = import_into(runner, fresh, json.dumps(line))
    assert result.exit_code == 2
    assert "line 1: missing field(s): scopes, secret_hash" in result.stderr


def test_a_line_that_is_not_utf8_or_too_long_names_its_number(
    runner: CliRunner, zoo: dict[str, Any], fresh: Path
) -> None:
    good = "\n".join(good_lines(runner)[:2]).encode() + b"\n"
    for bad in (b"\xff\xfe{}", b'{"type": "token", "label": "' + b"x" * 70_000 + b'"}'):
        result = import_into(runner, fresh, good + bad + b"\n")
        assert result.exit_code == 2, result.output
        assert "line 3" in result.stderr
        assert rows(fresh) == []


def test_an_id_repeated_in_the_input_imports_nothing(
    runner: CliRunner, zoo: dict[str, Any], fresh: Path
) -> None:
    lines = good_lines(runner)
    lines.append(lines[3])
    result = import_into(runner, fresh, "\n".join(lines))
    assert result.exit_code == 1, result.output
    token_id = json.loads(lines[3])["id"]
    assert f"line {len(lines)}" in result.stderr and token_id in result.stderr
    assert rows(fresh) == []
    # --skip-existing is about stored tokens: a repeat within the input is still refused.
    result = import_into(runner, fresh, "\n".join(lines), "--skip-existing")
    assert result.exit_code == 1
    assert rows(fresh) == []


def test_an_id_already_stored_imports_nothing_unless_skip_existing(
    runner: CliRunner, zoo: dict[str, Any], fresh: Path
) -> None:
    lines = [line for line in good_lines(runner) if '"type": "token"' in line]
    assert import_into(runner, fresh, lines[0] + "\n").exit_code == 0
    stored = rows(fresh)
    changed = mangled(json.loads(lines[0]), label="changed", uses_left=0, scopes=["z"])
    text = "\n".join([*lines[1:], changed])
    result = import_into(runner, fresh, text)
    assert result.exit_code == 1, result.output
    assert json.loads(lines[0])["id"] in result.stderr
    assert rows(fresh) == stored
    result = import_into(runner, fresh, text, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert "1 already stored" in result.stdout
    after = rows(fresh)
    assert len(after) == 5
    assert [row for row in after if row[0] == json.loads(lines[0])["id"]] == stored  # unchanged


def test_import_is_one_transaction(
    runner: CliRunner, fresh: Path, tmp_path: Path, on_file: TokenService
) -> None:
    """A failure while storing (here a trigger refusing one row) leaves nothing."""
    issued = [item for batch in on_file.issue_batches(count=12_000) for item in batch]
    text = export_text(runner)
    assert import_into(runner, fresh, "").exit_code == 0  # creates the file
    connection = sqlite3.connect(fresh)
    connection.execute(
        "CREATE TRIGGER refuse_one BEFORE INSERT ON tokens"
        f" WHEN NEW.id = '{issued[-1].info.id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    connection.commit()
    connection.close()
    result = import_into(runner, fresh, text)
    assert result.exit_code == 3, result.output
    assert rows(fresh) == []


# -- any line --------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from([*{*TOKEN_KEYS, *EVENT_KEYS}, "other"])


@st.composite
def mutated_lines(draw: st.DrawFn, good: list[str]) -> str:
    """A good line with some fields replaced, removed or added."""
    line = json.loads(draw(st.sampled_from(good)))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(FIELDS)
        if draw(st.booleans()):
            line.pop(field, None)
        else:
            line[field] = draw(JSON_VALUES)
    return json.dumps(line, ensure_ascii=draw(st.booleans()))


@FAST
@given(data=st.data())
def test_any_line_is_imported_or_refused_with_its_number(
    service: TokenService, clock: Clock, data: st.DataObject
) -> None:
    good_service = TokenService(SQLiteStore.empty(), clock)
    good_service.issue(label="l", scopes=["a"], uses=2)
    revoked = good_service.issue()
    good_service.revoke(revoked.info.id)
    good = [
        json.dumps(token_line(record))
        for record in good_service.store.iter_tokens(EVERY_TOKEN, int(clock.now))
    ] + [json.dumps(event_line(event)) for event in good_service.store.iter_events()]
    bad = data.draw(
        mutated_lines(good)
        | st.text(max_size=200)
        | st.binary(max_size=50).map(lambda raw: raw.decode("latin-1"))
    )
    lines = [*good[:1], bad, *good[1:]]
    before = list(service.store.iter_tokens(EVERY_TOKEN, 0))
    try:
        result = import_lines(service, lines)
    except InvalidRequestError as error:
        assert str(error).startswith("line 2: "), error
        assert list(service.store.iter_tokens(EVERY_TOKEN, 0)) == before
    except ConflictError as error:
        assert "line " in str(error) and "twice" in str(error)
        assert list(service.store.iter_tokens(EVERY_TOKEN, 0)) == before
    else:
        assert result.tokens >= 2
        # Whatever went in can be read back and shown.
        assert len(list(service.list_tokens(EVERY_TOKEN))) >= len(before) + 2
        assert service.audit(limit=1000)


@FAST
@given(raw=st.binary(max_size=300))
def test_any_bytes_on_stdin_never_give_a_traceback(
    runner: CliRunner, fresh: Path, raw: bytes
) -> None:
    result = import_into(runner, fresh, raw)
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    if result.exit_code == 2:
        assert result.stderr.startswith("Error: line ")


@pytest.mark.parametrize("field", ["action", "outcome", "source", "detail"])
@pytest.mark.parametrize("text", ["\x1b[2Jwiped", "a\nb", "\ud800", "\u202eevil", "\x00"], ids=repr)
def test_an_event_with_control_characters_imports_nothing(
    runner: CliRunner, zoo: dict[str, Any], fresh: Path, field: str, text: str
) -> None:
    """Event text reaches `audit` on a terminal: it must be printable, as labels are
    (a lone surrogate could not even be stored: that was a traceback)."""
    lines = good_lines(runner)
    index = next(n for n, line in enumerate(lines) if '"type": "event"' in line)
    lines[index] = mangled(json.loads(lines[index]), **{field: text})
    result = import_into(runner, fresh, "\n".join(lines))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith(f"Error: line {index + 1}: ")
    assert "\x1b" not in result.stderr
    assert rows(fresh) == []


def test_audit_shows_stored_event_text_literally(runner: CliRunner, db_path: Path) -> None:
    """Whatever another tool wrote into the trail, `audit` prints it escaped."""
    runner.invoke(app, ["issue"])
    connection = sqlite3.connect(db_path)
    connection.execute(
        "INSERT INTO audit (at, action, token_id, outcome, source, detail)"
        " VALUES (1, '\x1b[31maction', NULL, 'out\ncome', 'src\x07', 'de\x1btail')"
    )
    connection.commit()
    connection.close()
    shown = runner.invoke(app, ["audit"]).stdout
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b[31maction" in shown and "out\\x0acome" in shown
    assert len(shown.splitlines()) == 3


ANY_CHARACTER = st.characters(codec=None, exclude_categories=()) | st.sampled_from(
    ["\ud800", "\udfff", "\x00", "\x1b", "\x7f", "\x85", "\u202e", "\u2066", "\u200b", "a"]
)


def printable_by_the_label_rule(text: str) -> bool:
    return not any(
        unicodedata.category(character) in ("Cc", "Cs") or character in BIDI_CONTROLS
        for character in text
    )


@FAST
@given(
    field=st.sampled_from(["action", "outcome", "source", "detail", "label", "token_id"]),
    text=st.text(alphabet=ANY_CHARACTER, max_size=30),
)
def test_any_text_in_a_text_field_is_stored_or_refused_by_line(
    service: TokenService, clock: Clock, field: str, text: str
) -> None:
    """Lone surrogates, controls, bidi marks: stored as given or refused with the line."""
    line: dict[str, Any]
    if field == "label":
        line = {**token_line_of(tokens.new_id()), "label": text}
    else:
        line = {
            "type": "event",
            "at": "2026-01-01T00:00:00Z",
            "action": "check",
            "token_id": None,
            "outcome": "valid",
            "source": "cli",
            "detail": None,
            field: text,
        }
    events_before = len(service.audit(limit=100_000))
    try:
        import_lines(service, [json.dumps(line)])
    except InvalidRequestError as error:
        assert str(error).startswith("line 1: ")
        assert len(service.audit(limit=100_000)) == events_before
    else:
        assert printable_by_the_label_rule(text)
        stored = service.audit(limit=100_000)
        assert stored[-1].action == "import"


def token_line_of(token_id: str) -> dict[str, Any]:
    return {
        "type": "token",
        "id": token_id,
        "label": None,
        "created_at": "2026-01-01T00:00:00Z",
        "expires_at": "2026-01-02T00:00:00Z",
        "uses_left": None,
        "uses_limit": None,
        "revoked_at": None,
        "scopes": [],
        "secret_hash": "sha256:" + "0" * 64,
    }


# -- what import accepts, export gives back ------------------------------------------------

EARLIEST, LATEST = 0, 253_402_300_799  # 1970-01-01T00:00:00Z, 9999-12-31T23:59:59Z
EPOCH = datetime.datetime(1970, 1, 1)


def written(seconds: int) -> str:
    """An instant in export's own form, for any year datetime can hold (1 to 9999)."""
    when = EPOCH + datetime.timedelta(seconds=seconds)
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
        f"T{when.hour:02d}:{when.minute:02d}:{when.second:02d}Z"
    )


INSTANTS = st.integers(-62_135_596_800, LATEST) | st.sampled_from(
    [-1, EARLIEST, 1, LATEST - 3650 * 86_400, LATEST - 3650 * 86_400 + 1, LATEST]
)
TIMES = INSTANTS.map(written) | st.sampled_from(
    ["10000-01-01T00:00:00Z", "2030-01-01T00:00:60Z", "2030-02-29T00:00:00Z", "yesterday"]
)
USES = st.none() | st.integers(-1, 3) | st.sampled_from([10**9, 10**9 + 1])


@st.composite
def token_lines(draw: st.DrawFn) -> dict[str, Any]:
    """A token line near every edge import checks: times, uses, hash, scopes, label."""
    return {
        "type": "token",
        "id": tokens.new_id(),
        "label": draw(st.none() | st.sampled_from(["", "ci", "x" * 200, "x" * 201, "\x07"])),
        "created_at": draw(TIMES),
        "expires_at": draw(TIMES),
        "uses_left": draw(USES),
        "uses_limit": draw(USES),
        "revoked_at": draw(st.none() | TIMES),
        "scopes": draw(st.lists(st.sampled_from(["b", "a", "read:x", "A"]), max_size=4)),
        "secret_hash": "sha256:" + draw(st.sampled_from(["ab" * 32, "AB" * 32, "ab" * 31])),
    }


@pytest.mark.stores("sqlite", "postgres")
@FAST
@given(line=token_lines(), at=TIMES)
def test_every_token_import_accepts_exports_as_itself_and_imports_again(
    service: TokenService, line: dict[str, Any], at: str
) -> None:
    """A backup restores: whatever import takes, export writes back in a form import
    takes again, to the same stored values (on both stores)."""
    event = {"type": "event", "at": at, "action": "check", "token_id": line["id"]}
    event |= {"outcome": "valid", "source": "http", "detail": None}
    try:
        import_lines(service, [json.dumps(line), json.dumps(event)])
    except InvalidRequestError:
        assert service.store.get(line["id"]) is None
        return
    record = service.store.get(line["id"])
    assert record is not None
    exported = token_line(record)
    assert exported["created_at"] == line["created_at"]
    assert exported["expires_at"] == line["expires_at"]
    assert exported["revoked_at"] == line["revoked_at"]
    assert (exported["uses_left"], exported["uses_limit"]) == (
        line["uses_left"],
        line["uses_limit"],
    )
    assert exported["secret_hash"] == line["secret_hash"].lower()
    assert exported["scopes"] == sorted(set(line["scopes"]))
    (stored_event,) = service.store.events(since=None, token_id=line["id"], limit=5)
    assert event_line(stored_event) == event
    again = tokens.new_id()
    import_lines(service, [json.dumps({**exported, "id": again})])
    assert service.store.get(again) == record._replace(id=again)


def test_import_refuses_a_time_it_could_not_export_and_says_which(
    service: TokenService,
) -> None:
    for field, value, said in [
        ("created_at", "0001-01-01T00:00:00Z", "before 1970-01-01T00:00:00Z"),
        ("created_at", "9995-01-01T00:00:00Z", "a renewal could not be exported"),
        ("expires_at", "2030-01-01T00:00:60Z", "not a real date and time"),
    ]:
        line = {**token_line_of(tokens.new_id()), "expires_at": "9999-12-31T23:59:59Z"}
        with pytest.raises(InvalidRequestError) as refused:
            import_lines(service, [json.dumps({**line, field: value})])
        assert str(refused.value).startswith(f"line 1: {field} ") and said in str(refused.value)


def test_a_token_revoked_before_its_creation_imports_and_stays_revoked(
    service: TokenService,
) -> None:
    """A clock stepped back between issue and revoke stores such a token: its backup
    must restore."""
    line = {**token_line_of(tokens.new_id()), "revoked_at": "2025-12-31T00:00:00Z"}
    import_lines(service, [json.dumps(line)])
    assert token_line(service.store.get(line["id"])) == line  # type: ignore[arg-type]


# -- --skip-existing and the audit trail ----------------------------------------------------


def trail(db: Path) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return connection.execute(
            "SELECT at, action, token_id, outcome, source, detail FROM audit ORDER BY id"
        ).fetchall()
    finally:
        connection.close()


def test_skip_existing_twice_adds_no_event_the_second_time(
    runner: CliRunner, zoo: dict[str, Any], fresh: Path, on_file: TokenService
) -> None:
    # Purged tokens leave their events behind, and purge adds one about no token: an
    # export then holds events about tokens it does not hold.
    on_file.purge(audit_retention_seconds=None)
    text = export_text(runner, "--audit")
    assert import_into(runner, fresh, text).exit_code == 0
    first = trail(fresh)
    assert any(row[1] == "purge" for row in first)
    result = import_into(runner, fresh, text, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert "imported 0 tokens and 0 audit events (2 already stored" in result.stdout
    assert trail(fresh) == first  # not even an import event: nothing was imported
    # Twice the same event in the input (two checks in one second) and once stored:
    # the stored one stands for both; a new one goes in however often it appears.
    check = json.loads(text.splitlines()[-1]) | {"detail": "twice"}
    fresh_event = check | {"at": "2030-01-01T00:00:00Z"}
    stored_once = "\n".join([json.dumps(check)] * 1)
    assert import_into(runner, fresh, stored_once).exit_code == 0
    lines = [json.dumps(check)] * 2 + [json.dumps(fresh_event)] * 2
    assert import_into(runner, fresh, "\n".join(lines), "--skip-existing").exit_code == 0
    details = [(row[0], row[5]) for row in trail(fresh) if row[5] == "twice"]
    assert len(details) == 3 and details.count(details[-1]) == 2


def test_skip_existing_keeps_the_trail_of_a_stored_token_and_imports_the_rest(
    runner: CliRunner, zoo: dict[str, Any], fresh: Path
) -> None:
    lines = good_lines(runner)
    tokens_part = [line for line in lines if '"type": "token"' in line]
    events_part = [line for line in lines if '"type": "event"' in line]
    stored_id = json.loads(tokens_part[0])["id"]
    # Stored first, alone: its token line, and none of its events.
    assert import_into(runner, fresh, tokens_part[0]).exit_code == 0
    before = trail(fresh)
    # Then the rest, the stored token's line left out but its events in (as a filtered
    # export would give them): they are left out too, the others all go in.
    text = "\n".join([*tokens_part[1:], *events_part])
    result = import_into(runner, fresh, text, "--skip-existing")
    assert result.exit_code == 0, result.output
    added = trail(fresh)[len(before) :]
    theirs = [json.loads(line) for line in events_part]
    assert not any(row[2] == stored_id for row in added)
    assert len(added) == len([e for e in theirs if e["token_id"] != stored_id]) + 1  # + import
    # Without --skip-existing every event line goes in: here the stored token's too.
    plain = fresh.with_name("plain.db")
    assert import_into(runner, plain, "\n".join(events_part)).exit_code == 0
    assert len(trail(plain)) == len(events_part) + 1
