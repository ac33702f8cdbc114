"""Shell completion of what turn 2 added: `show` IDs, `--scope` names, `--state` names,
and the help a README points to for the new commands and options."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokencli.cli import app
from tokencli.service import TokenService

from support import Clock


def complete_bash(runner: CliRunner, words: str) -> list[str]:
    result = runner.invoke(
        app,
        [],
        prog_name="tokencli",
        env={
            "_TOKENCLI_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        },
    )
    assert result.exit_code == 0, result.output
    return result.stdout.split()


def test_show_completes_live_ids(runner: CliRunner, on_file: TokenService) -> None:
    live = sorted(on_file.issue(label=f"n{n}").info.id for n in range(3))
    revoked = on_file.issue().info.id
    on_file.revoke(revoked)
    TokenService(on_file.store, Clock(1_000_000_000)).issue(ttl_seconds=60)
    assert sorted(complete_bash(runner, "tokencli show ")) == live
    assert complete_bash(runner, f"tokencli show {live[1][:7]}") == [
        token_id for token_id in live if token_id.startswith(live[1][:7])
    ]
    # A second ID completes as the first did.
    assert sorted(complete_bash(runner, f"tokencli show {live[0]} ")) == live


@pytest.mark.parametrize("command", ["check", "issue", "list", "revoke", "export"])
def test_scope_options_complete_the_scopes_of_live_tokens(
    runner: CliRunner, on_file: TokenService, command: str
) -> None:
    on_file.issue(scopes=["deploy", "read:logs"])
    on_file.issue(scopes=["read.metrics"])
    gone = on_file.issue(scopes=["retired"]).info.id
    on_file.revoke(gone)
    assert complete_bash(runner, f"tokencli {command} --scope ") == [
        "deploy",
        "read.metrics",
        "read:logs",
    ]
    assert complete_bash(runner, f"tokencli {command} --scope read") == [
        "read.metrics",
        "read:logs",
    ]
    assert complete_bash(runner, f"tokencli {command} --scope zzz") == []


def test_scope_completion_on_a_missing_or_foreign_file_offers_nothing(
    runner: CliRunner, db_path: Path
) -> None:
    assert complete_bash(runner, "tokencli check --scope ") == []
    assert not db_path.exists()
    db_path.write_bytes(b"\x00junk" * 100)
    assert complete_bash(runner, "tokencli list --scope ") == []
    assert complete_bash(runner, "tokencli show ") == []


@pytest.mark.parametrize("command", ["list", "export"])
def test_state_completes_the_stored_states(runner: CliRunner, command: str) -> None:
    assert complete_bash(runner, f"tokencli {command} --state ") == [
        "valid",
        "expired",
        "used_up",
        "revoked",
    ]


def test_zsh_completion_of_show_describes_ids_by_label(
    runner: CliRunner, on_file: TokenService, db_path: Path
) -> None:
    issued = on_file.issue(label="deploy key")
    connection = sqlite3.connect(db_path)  # as another tool might have written it
    connection.execute("UPDATE tokens SET label = 'deploy \x1b[31mkey'")
    connection.commit()
    connection.close()
    result = runner.invoke(
        app,
        [],
        prog_name="tokencli",
        env={"_TOKENCLI_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "tokencli show "},
    )
    assert f'"{issued.info.id}":"deploy \\x1b[31mkey"' in result.stdout
    assert "\x1b" not in result.stdout  # the label literally, never an escape


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (["issue"], ["--scope"]),
        (["check"], ["--scope", "insufficient_scope"]),
        (["show"], ["--json", "ID_OR_TOKEN"]),
        (["revoke"], ["--label", "--scope", "--all", "--yes", "--dry-run"]),
        (["list"], ["--label", "--scope", "--state", "--expiring-within", "--limit", "--jsonl"]),
        (["export"], ["--audit", "--label", "--scope", "--state", "--limit"]),
        (["import"], ["--skip-existing", "--json"]),
    ],
)
def test_help_names_every_new_option_with_an_example(
    runner: CliRunner, command: list[str], options: list[str]
) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in options:
        assert option in result.stdout, (command, option)
    assert "Examples:" in result.stdout and f"tokencli {command[0]}" in result.stdout
