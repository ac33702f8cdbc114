"""Output for a person at a terminal (a real pty) versus a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from tokencli.cli.app import app

from support import EXECUTABLE, needs_executable

pytestmark = needs_executable


def run_on_pty(args: list[str], env_extra: dict[str, str]) -> str:
    """Run tokencli with stdout and stderr on a pseudo-terminal; return what it printed."""
    assert EXECUTABLE is not None
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", **env_extra}
    with subprocess.Popen(
        [EXECUTABLE, *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    ) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode()


def test_terminal_gets_a_table_with_human_times_and_colour(runner: CliRunner) -> None:
    runner.invoke(app, ["issue", "--ttl", "15m", "--label", "[red]x[/red]"])
    shown = run_on_pty(["list"], {})
    assert "in 15m" in shown or "in 14m" in shown
    assert "0s ago" in shown or "now" in shown or "s ago" in shown
    assert "[red]x[/red]" in shown
    assert "\x1b[32mvalid" in shown  # colour for the state column
    assert "\t" not in shown


def test_no_color_is_honoured_on_a_terminal(runner: CliRunner) -> None:
    runner.invoke(app, ["issue", "--label", "plain"])
    shown = run_on_pty(["list"], {"NO_COLOR": "1"})
    assert "plain" in shown
    # NO_COLOR forbids colour, not emphasis: bold headers may stay, green may not.
    assert "\x1b[32m" not in shown


def test_piped_output_of_every_command_has_no_escape_characters(
    runner: CliRunner, db_path: Path
) -> None:
    assert EXECUTABLE is not None
    token = runner.invoke(app, ["issue", "--label", "[bold]b[/bold]"]).stdout.strip()
    commands = [
        ["list"],
        ["list", "--all"],
        ["check", token],
        ["stats"],
        ["audit"],
        ["renew", token.split(":")[0]],
        ["purge", "--dry-run"],
        ["--help"],
        ["issue", "--help"],
    ]
    for args in commands:
        result = subprocess.run(
            [EXECUTABLE, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, (args, result.stderr)
        assert "\x1b" not in result.stdout, args
        assert "\x1b" not in result.stderr, args


def test_progress_bar_only_on_a_terminal(runner: CliRunner) -> None:
    shown = run_on_pty(["issue", "--count", "6000"], {})
    assert shown.count(":") >= 6000  # every token still printed
    assert EXECUTABLE is not None
    piped = subprocess.run(
        [EXECUTABLE, "issue", "--count", "6000"], capture_output=True, text=True, timeout=120
    )
    assert piped.returncode == 0
    assert piped.stderr == ""
    assert len(piped.stdout.splitlines()) == 6000
