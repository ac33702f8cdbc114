"""Shell completion: committed scripts match the app; commands, live IDs, scopes and states
complete; every option a README points to has help with an example."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.service.service import TokenService

from databases import RawDatabase
from support import Clock

pytestmark = pytest.mark.stores("sqlite", "postgres")

COMPLETIONS = Path(__file__).resolve().parents[2] / "completions"


def complete_bash(runner: CliRunner, words: str) -> list[str]:
    cword = len(words.split(" ")) - 1
    result = runner.invoke(
        app,
        [],
        prog_name="tokencli",
        env={
            "_TOKENCLI_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        },
    )
    assert result.exit_code == 0, result.output
    return result.stdout.split()


@pytest.mark.stores("sqlite", reason="no database involved")
def test_command_names_complete(runner: CliRunner) -> None:
    assert complete_bash(runner, "tokencli rev") == ["revoke"]
    assert sorted(complete_bash(runner, "tokencli re")) == ["renew", "revoke"]


def test_revoke_completes_live_ids_only(
    runner: CliRunner, make_service: Callable[..., TokenService]
) -> None:
    service = make_service(time.time)  # completion runs on the wall clock
    live = sorted(service.issue(label=f"live {n}").info.id for n in range(3))
    revoked = service.issue().info.id
    service.revoke(revoked)
    old = TokenService(service.store, Clock(1_000_000_000)).issue(ttl_seconds=60).info.id
    offered = complete_bash(runner, "tokencli revoke ")
    assert sorted(offered) == live
    assert revoked not in offered and old not in offered
    assert complete_bash(runner, f"tokencli revoke {live[0][:6]}") == [
        token_id for token_id in live if token_id.startswith(live[0][:6])
    ]


def test_zsh_completion_shows_labels_as_descriptions(
    runner: CliRunner, make_service: Callable[..., TokenService]
) -> None:
    issued = make_service(time.time).issue(label="deploy key")
    result = runner.invoke(
        app,
        [],
        prog_name="tokencli",
        env={"_TOKENCLI_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "tokencli renew "},
    )
    assert f'"{issued.info.id}":"deploy key"' in result.stdout


def test_completion_on_a_missing_or_foreign_database_offers_nothing(
    runner: CliRunner, raw: RawDatabase
) -> None:
    assert complete_bash(runner, "tokencli revoke ") == []
    assert not raw.exists()
    raw.make_foreign()
    assert complete_bash(runner, "tokencli revoke ") == []


@pytest.mark.stores("sqlite", reason="no database involved")
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
@pytest.mark.skipif(shutil.which("tokencli") is None, reason="tokencli is not installed")
def test_committed_scripts_match_what_the_app_generates(shell: str) -> None:
    generated = subprocess.run(
        [str(shutil.which("tokencli"))],
        env={"_TOKENCLI_COMPLETE": f"source_{shell}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    committed = (COMPLETIONS / f"tokencli.{shell}").read_text()
    assert generated == committed, f"run completions/regenerate: tokencli.{shell} is stale"


@pytest.mark.stores("sqlite", reason="on_file")
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


@pytest.mark.stores("sqlite", reason="on_file")
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


@pytest.mark.stores("sqlite", reason="a file")
def test_scope_completion_on_a_missing_or_foreign_file_offers_nothing(
    runner: CliRunner, db_path: Path
) -> None:
    assert complete_bash(runner, "tokencli check --scope ") == []
    assert not db_path.exists()
    db_path.write_bytes(b"\x00junk" * 100)
    assert complete_bash(runner, "tokencli list --scope ") == []
    assert complete_bash(runner, "tokencli show ") == []


@pytest.mark.stores("sqlite", reason="no database involved")
@pytest.mark.parametrize("command", ["list", "export"])
def test_state_completes_the_stored_states(runner: CliRunner, command: str) -> None:
    assert complete_bash(runner, f"tokencli {command} --state ") == [
        "valid",
        "expired",
        "used_up",
        "revoked",
    ]


@pytest.mark.stores("sqlite", reason="written by another tool")
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


@pytest.mark.stores("sqlite", reason="no database involved")
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
