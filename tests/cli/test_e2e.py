"""The installed `tokencli` executable in a subprocess, as an operator runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tokencli import __version__

from support import EXECUTABLE, check_reading_stdin, component, needs_executable

pytestmark = needs_executable


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert EXECUTABLE is not None
    return subprocess.run(
        [EXECUTABLE, *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_help_imports_without_test_extras() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "issue" in result.stdout


def test_python_dash_m_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokencli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, f"tokencli {__version__}\n")


def test_issue_then_check_then_garbage(db_path: Path) -> None:
    issued = run("issue", "--ttl", "15m")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert issued.stdout == token + "\n"
    valid = run("check", token)
    assert (valid.returncode, valid.stdout) == (0, "valid\n")
    piped = run("check", stdin=token + "\n")
    assert (piped.returncode, piped.stdout) == (0, "valid\n")
    garbage = run("check", "garbage")
    assert (garbage.returncode, garbage.stdout) == (1, "malformed\n")
    assert db_path.exists()


def test_ctrl_c_while_waiting_for_stdin_exits_130() -> None:
    assert EXECUTABLE is not None
    with check_reading_stdin(EXECUTABLE) as process:  # it waits on stdin now
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in stderr


def pipe_status(command: str, tmp_path: Path) -> tuple[int, str]:
    """Run `command | head -c 100` in bash: the command's status and its stderr."""
    errors = tmp_path / "stderr.txt"
    # Without PYTHONUNBUFFERED: under it, CPython's text layer drops a partial write to a
    # pipe closed mid-write without an error, so the status would depend on where the
    # pipe closed (a Python quirk; plain `tokencli` runs buffered).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    bash = component("bash", package="bash")
    done = subprocess.run(
        [
            bash,
            "-c",
            f'{command} 2>"{errors}" | head -c 100 >/dev/null; echo "${{PIPESTATUS[0]}}"',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stderr == ""
    return int(done.stdout.strip()), errors.read_text()


@pytest.mark.interop
@pytest.mark.parametrize(
    "args",
    [
        "list",
        "list --all --json",
        "list --jsonl",
        "export",
        "audit --limit 5000",
        "issue --count 20000",
    ],
)
def test_a_closed_pipe_ends_quietly_with_the_status_of_seq(
    db_path: Path, tmp_path: Path, args: str
) -> None:
    # `seq` and `cat` are killed by SIGPIPE there: the shell sees 128 + 13.
    seq_status, _ = pipe_status("seq 1 1000000", tmp_path)
    assert seq_status == 141
    run("issue", "--count", "5000")  # far more than a pipe buffers
    status, stderr = pipe_status(f"'{EXECUTABLE}' {args}", tmp_path)
    assert status == seq_status
    assert stderr == ""  # no traceback, no "Exception ignored", nothing


@pytest.mark.interop
def test_a_reader_that_takes_everything_sees_exit_0(db_path: Path, tmp_path: Path) -> None:
    run("issue", "--count", "3")
    status, stderr = pipe_status(f"'{EXECUTABLE}' list", tmp_path)
    assert (status, stderr) == (0, "")


def test_environment_variable_picks_the_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    env = {**os.environ, "TOKENCLI_DB": str(target)}
    assert EXECUTABLE is not None
    result = subprocess.run(
        [EXECUTABLE, "issue"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0
    assert target.exists()
