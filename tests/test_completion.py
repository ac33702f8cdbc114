"""Shell completion: committed scripts match the app; commands and live IDs complete."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokencli.cli import app
from tokencli.service import TokenService

from databases import RawDatabase
from support import Clock

pytestmark = pytest.mark.stores("sqlite", "postgres")

COMPLETIONS = Path(__file__).resolve().parent.parent / "completions"


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
