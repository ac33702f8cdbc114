"""The installed tokencli under a real pseudo-terminal, and with no terminal at all.

A progress bar must never carry what belongs on stdout: `issue --count 10000 > tokens.txt`
on a terminal once wrote 0 lines to the file and scrolled every plaintext token over the
screen, where it could never be shown again (issue 19, item 1).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

import pytest
from terminal import Terminal

from tokencli.service.service import TokenService

from support import EXECUTABLE, component, needs_executable

pytestmark = [pytest.mark.interop, needs_executable]

CLI = Path(__file__).resolve().parents[2] / "tokencli" / "cli"
TOKEN = re.compile(rb"[a-z2-7]{12}:[A-Za-z0-9_-]{30,}")
COUNT = 6000  # over the 5,000 from which the bar shows

# Every command that shows a progress bar, and how to make it show one.
PROGRESS_COMMANDS = {"issue": ["issue", "--count", str(COUNT), "--ttl", "7d"]}


def commands_showing_progress() -> set[str]:
    """The commands whose function calls output.progress, read from the CLI's source."""
    found = set()
    for module in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            names = [
                keyword.value.value
                for decorator in node.decorator_list
                if isinstance(decorator, ast.Call)
                for keyword in decorator.keywords
                if keyword.arg == "name" and isinstance(keyword.value, ast.Constant)
            ]
            calls = any(
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "progress"
                for call in ast.walk(node)
            )
            if calls:
                found.add(names[0] if names else node.name)
    return found


def test_every_command_with_a_progress_bar_is_tested_here() -> None:
    assert commands_showing_progress() == set(PROGRESS_COMMANDS)


def terminal_env(db_path: Path) -> dict[str, str]:
    return {**os.environ, "TERM": "xterm-256color", "TOKENCLI_DB": str(db_path)}


def run_with_stderr_on_a_pty(
    args: list[str], db_path: Path, stdout: int | IO[Any]
) -> tuple[int, bytes, bytes]:
    """Run tokencli with stderr (and the controlling terminal) a pty and stdout as given;
    its exit code, what the terminal showed, and what a stdout pipe carried."""
    assert EXECUTABLE is not None
    piped: list[bytes] = []
    with Terminal(
        [EXECUTABLE, *args], terminal_env(db_path), stdin=subprocess.DEVNULL, stdout=stdout
    ) as terminal:
        reader = None
        if terminal.process.stdout is not None:
            stream = terminal.process.stdout
            reader = threading.Thread(target=lambda: piped.append(stream.read()))
            reader.start()
        code = terminal.finish()
        if reader is not None:
            reader.join(timeout=120)
    return code, terminal.output, b"".join(piped)


@pytest.mark.parametrize("command", sorted(PROGRESS_COMMANDS))
def test_tokens_go_to_a_file_and_the_bar_to_the_terminal(
    command: str, db_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "tokens.txt"
    with target.open("wb") as stdout:
        code, shown, _ = run_with_stderr_on_a_pty(PROGRESS_COMMANDS[command], db_path, stdout)
    assert code == 0, shown
    lines = target.read_bytes().splitlines()
    assert len(lines) == COUNT
    assert all(TOKEN.fullmatch(line) for line in lines)
    assert b"issuing" in shown  # the bar ran, on the terminal
    assert TOKEN.search(shown) is None


@pytest.mark.parametrize("command", sorted(PROGRESS_COMMANDS))
def test_tokens_go_to_a_pipe_and_the_bar_to_the_terminal(command: str, db_path: Path) -> None:
    code, shown, piped = run_with_stderr_on_a_pty(
        PROGRESS_COMMANDS[command], db_path, subprocess.PIPE
    )
    assert code == 0, shown
    assert len(TOKEN.findall(piped)) == len(piped.splitlines()) == COUNT
    assert b"issuing" in shown
    assert TOKEN.search(shown) is None


@pytest.mark.parametrize("command", sorted(PROGRESS_COMMANDS))
def test_tokens_sent_to_dev_null_never_reach_the_terminal(
    command: str, db_path: Path, on_file: TokenService
) -> None:
    with open(os.devnull, "wb") as stdout:
        code, shown, _ = run_with_stderr_on_a_pty(PROGRESS_COMMANDS[command], db_path, stdout)
    assert code == 0, shown
    assert TOKEN.search(shown) is None
    assert on_file.stats().counts.live == COUNT


def test_tokens_on_the_terminal_come_without_a_bar(db_path: Path) -> None:
    # stdout a terminal too: the tokens scroll there, each once, and no bar is drawn
    # between them.
    assert EXECUTABLE is not None
    with Terminal(
        [EXECUTABLE, "issue", "--count", str(COUNT)],
        terminal_env(db_path),
        stdin=subprocess.DEVNULL,
    ) as terminal:
        assert terminal.finish() == 0
    assert len(TOKEN.findall(terminal.output)) == COUNT
    assert b"issuing" not in terminal.output


# -- no terminal to ask on ---------------------------------------------------------------


@pytest.mark.parametrize("stdin", ["<&-", "</dev/null"], ids=["closed", "dev-null"])
def test_revoke_all_without_a_terminal_refuses_unless_yes(
    stdin: str, on_file: TokenService, db_path: Path
) -> None:
    # As cron runs it: stdin closed or /dev/null, no terminal to ask on.
    issued = on_file.issue().info.id
    bash = component("bash", package="bash")
    assert EXECUTABLE is not None
    env = terminal_env(db_path)
    refused = subprocess.run(
        [bash, "-c", f"'{EXECUTABLE}' revoke --all {stdin}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # no controlling terminal either
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr == (
        "Error: --all revokes every live token, and there is no terminal to ask on; "
        "pass --yes to do it (or --dry-run to see what it would revoke)\n"
    )
    assert on_file.show(issued).state.value == "valid"
    for args in ("revoke --all --dry-run", "revoke --all --yes"):
        done = subprocess.run(
            [bash, "-c", f"'{EXECUTABLE}' {args} {stdin}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (args, done.stderr)
        assert issued in done.stdout
        assert "Traceback" not in done.stderr
    assert on_file.show(issued).state.value == "revoked"


def test_check_with_stdin_closed_says_no_token_given(db_path: Path) -> None:
    bash = component("bash", package="bash")
    assert EXECUTABLE is not None
    done = subprocess.run(
        [bash, "-c", f"'{EXECUTABLE}' check <&-"],
        env=terminal_env(db_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert "no token given" in done.stderr
    assert "Traceback" not in done.stderr
