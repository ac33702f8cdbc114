"""The installed `tokencli` executable in a subprocess, as an operator runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokencli import __version__

from support import check_reading_stdin

EXECUTABLE = shutil.which("tokencli")
pytestmark = pytest.mark.skipif(EXECUTABLE is None, reason="tokencli is not installed on PATH")


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
    with check_reading_stdin(EXECUTABLE) as process:
        time.sleep(2.0)  # let it start and block on stdin
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in stderr


def test_closed_pipe_gives_no_traceback(db_path: Path) -> None:
    assert EXECUTABLE is not None
    run("issue", "--count", "3000")
    with subprocess.Popen(
        [EXECUTABLE, "issue", "--count", "20000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.read(100)
        process.stdout.close()
        stderr = process.stderr.read().decode()
        process.wait(timeout=60)
    assert "Traceback" not in stderr
    listing = subprocess.run(
        f"'{EXECUTABLE}' list | head -n 1", shell=True, capture_output=True, text=True, timeout=60
    )
    assert listing.stdout.startswith("ID\t")
    assert "Traceback" not in listing.stderr


def test_environment_variable_picks_the_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    env = {**os.environ, "TOKENCLI_DB": str(target)}
    assert EXECUTABLE is not None
    result = subprocess.run(
        [EXECUTABLE, "issue"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0
    assert target.exists()
