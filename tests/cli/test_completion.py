"""Shell completion, tokencli's side: the candidates it prints for the scripts in
completions/ (one per line, VALUE or VALUE<TAB>DESCRIPTION), which commands, live IDs,
scopes and states complete, and that the committed scripts are what tokencli prints. The
scripts themselves run in the real shells in test_shells.py."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.cli.completion import SCRIPTS
from tokencli.service.service import TokenService

from databases import RawDatabase
from support import EXECUTABLE, Clock, needs_executable

pytestmark = pytest.mark.stores("sqlite", "postgres")

COMPLETIONS = Path(__file__).resolve().parents[2] / "completions"


def candidate_lines(runner: CliRunner, line: str) -> list[str]:
    """What tokencli prints for our completion scripts, the command line being `line`."""
    result = runner.invoke(
        app,
        [],
        prog_name="tokencli",
        env={"_TOKENCLI_COMPLETE": "complete_lines", "_TOKENCLI_COMPLETE_LINE": line},
    )
    assert result.exit_code == 0, result.output
    return [text for text in result.stdout.split("\n") if text]


def complete(runner: CliRunner, line: str) -> list[str]:
    """The values offered (what bash shows)."""
    return [text.split("\t")[0] for text in candidate_lines(runner, line)]


@pytest.mark.stores("sqlite", reason="no database involved")
def test_command_names_complete(runner: CliRunner) -> None:
    assert complete(runner, "tokencli rev") == ["revoke"]
    assert sorted(complete(runner, "tokencli re")) == ["renew", "revoke"]


def test_revoke_completes_live_ids_only(
    runner: CliRunner, make_service: Callable[..., TokenService]
) -> None:
    service = make_service(time.time)  # completion runs on the wall clock
    live = sorted(service.issue(label=f"live {n}").info.id for n in range(3))
    revoked = service.issue().info.id
    service.revoke(revoked)
    old = TokenService(service.store, Clock(1_000_000_000)).issue(ttl_seconds=60).info.id
    offered = complete(runner, "tokencli revoke ")
    assert sorted(offered) == live
    assert revoked not in offered and old not in offered
    assert complete(runner, f"tokencli revoke {live[0][:6]}") == [
        token_id for token_id in live if token_id.startswith(live[0][:6])
    ]


def test_labels_are_the_descriptions(
    runner: CliRunner, make_service: Callable[..., TokenService]
) -> None:
    issued = make_service(time.time).issue(label="deploy key")
    assert candidate_lines(runner, "tokencli renew ") == [f"{issued.info.id}\tdeploy key"]


def test_completion_on_a_missing_or_foreign_database_offers_nothing(
    runner: CliRunner, raw: RawDatabase
) -> None:
    assert complete(runner, "tokencli revoke ") == []
    assert not raw.exists()
    raw.make_foreign()
    assert complete(runner, "tokencli revoke ") == []


@pytest.mark.stores("sqlite", reason="no database involved")
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
@needs_executable
def test_committed_scripts_are_what_tokencli_prints(shell: str) -> None:
    committed = (COMPLETIONS / f"tokencli.{shell}").read_text()
    assert committed == SCRIPTS[shell]
    assert EXECUTABLE is not None
    for instruction in (["completion", shell], []):
        printed = subprocess.run(
            [EXECUTABLE, *instruction],
            env={"_TOKENCLI_COMPLETE": f"source_{shell}", "PATH": ""} if not instruction else {},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert printed == committed, f"run completions/regenerate: tokencli.{shell} is stale"


@pytest.mark.stores("sqlite", reason="no database involved")
def test_the_zsh_script_starts_with_compdef_on_its_first_line() -> None:
    # compinit reads only the first line: anything before #compdef and nothing completes.
    assert (COMPLETIONS / "tokencli.zsh").read_text().startswith("#compdef tokencli\n")


@pytest.mark.stores("sqlite", reason="no database involved")
def test_no_script_evaluates_what_tokencli_prints() -> None:
    for shell, script in SCRIPTS.items():
        code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
        assert re.search(r"\beval\b", code) is None, shell
        assert "_TOKENCLI_COMPLETE=complete_lines" in code, shell


@pytest.mark.stores("sqlite", reason="no database involved")
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_typers_old_instructions_answer_nothing_to_evaluate(
    runner: CliRunner, on_file: TokenService, shell: str
) -> None:
    # A typer script may still be installed: it would `eval` (zsh) what it gets.
    on_file.issue(label='x\\" <(touch F) \\"')
    result = runner.invoke(
        app,
        [],
        prog_name="tokencli",
        env={
            "_TOKENCLI_COMPLETE": f"complete_{shell}",
            "_TYPER_COMPLETE_ARGS": "tokencli revoke ",
            "COMP_WORDS": "tokencli revoke ",
            "COMP_CWORD": "2",
            "_TYPER_COMPLETE_FISH_ACTION": "get-args",
        },
    )
    assert result.exit_code == 0
    assert result.stdout.strip() == ""
    assert f"tokencli completion {shell}" in result.stderr


@pytest.mark.stores("sqlite", reason="no database involved")
def test_typers_install_completion_is_gone(runner: CliRunner) -> None:
    # It would install typer's scripts, which evaluate what tokencli prints.
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" not in result.stdout
    assert "--show-completion" not in result.stdout
    assert runner.invoke(app, ["--install-completion"]).exit_code == 2


@pytest.mark.stores("sqlite", reason="no database involved")
def test_completion_of_an_unknown_shell_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["completion", "tcsh"])
    assert result.exit_code == 2
    assert "bash, zsh or fish" in result.stderr
    assert complete(runner, "tokencli completion ") == ["bash", "zsh", "fish"]


@pytest.mark.stores("sqlite", reason="written by another tool")
def test_every_candidate_is_one_line_of_inert_data(
    runner: CliRunner, on_file: TokenService, db_path: Path
) -> None:
    kept = on_file.issue(label="x").info.id
    connection = sqlite3.connect(db_path)  # as another tool might have written it
    connection.execute(
        "UPDATE tokens SET label = ? WHERE id = ?",
        ("two\nlines\tand a tab \x1b[31m\u2028 $(touch F)", kept),
    )
    connection.commit()
    connection.close()
    lines = candidate_lines(runner, "tokencli show ")
    assert lines == [f"{kept}\ttwo lines and a tab \\x1b[31m $(touch F)"]


@pytest.mark.stores("sqlite", reason="on_file")
def test_show_completes_live_ids(runner: CliRunner, on_file: TokenService) -> None:
    live = sorted(on_file.issue(label=f"n{n}").info.id for n in range(3))
    revoked = on_file.issue().info.id
    on_file.revoke(revoked)
    TokenService(on_file.store, Clock(1_000_000_000)).issue(ttl_seconds=60)
    assert sorted(complete(runner, "tokencli show ")) == live
    assert complete(runner, f"tokencli show {live[1][:7]}") == [
        token_id for token_id in live if token_id.startswith(live[1][:7])
    ]
    # A second ID completes as the first did.
    assert sorted(complete(runner, f"tokencli show {live[0]} ")) == live


@pytest.mark.stores("sqlite", reason="on_file")
@pytest.mark.parametrize("command", ["check", "issue", "list", "revoke", "export"])
def test_scope_options_complete_the_scopes_of_live_tokens(
    runner: CliRunner, on_file: TokenService, command: str
) -> None:
    on_file.issue(scopes=["deploy", "read:logs"])
    on_file.issue(scopes=["read.metrics"])
    gone = on_file.issue(scopes=["retired"]).info.id
    on_file.revoke(gone)
    assert complete(runner, f"tokencli {command} --scope ") == [
        "deploy",
        "read.metrics",
        "read:logs",
    ]
    assert complete(runner, f"tokencli {command} --scope read") == [
        "read.metrics",
        "read:logs",
    ]
    assert complete(runner, f"tokencli {command} --scope zzz") == []


@pytest.mark.stores("sqlite", reason="a file")
def test_scope_completion_on_a_missing_or_foreign_file_offers_nothing(
    runner: CliRunner, db_path: Path
) -> None:
    assert complete(runner, "tokencli check --scope ") == []
    assert not db_path.exists()
    db_path.write_bytes(b"\x00junk" * 100)
    assert complete(runner, "tokencli list --scope ") == []
    assert complete(runner, "tokencli show ") == []


@pytest.mark.stores("sqlite", reason="no database involved")
@pytest.mark.parametrize("command", ["list", "export"])
def test_state_completes_the_stored_states(runner: CliRunner, command: str) -> None:
    assert complete(runner, f"tokencli {command} --state ") == [
        "valid",
        "expired",
        "used_up",
        "revoked",
    ]


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
