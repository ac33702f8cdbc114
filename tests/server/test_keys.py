"""Keys: the admin key administers, a validate key guards validation, bad keys are refused
at start, SIGHUP swaps keys without dropping a connection, and a failed loop exits 1."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain.location import Location
from tokencli.http.answers import ApiConfig, Keys
from tokencli.http.keys import KeySource, load_keys
from tokencli.server import serving
from tokencli.server.server import TokenHTTPServer

from support import ADMIN_KEY, VALIDATE_KEY, Served, needs_executable, serve_process, tokencli


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_validate_key_guards_validation_only(serve: Callable[..., Served]) -> None:
    served = serve(admin_key=ADMIN_KEY, validate_key=VALIDATE_KEY)
    token = served.request("POST", "/app/token", headers=bearer(ADMIN_KEY))[2]["token"]
    path = f"/app/valid/{token}"
    assert served.request("GET", path)[0] == 401
    assert served.request("GET", path, headers=bearer("wrong"))[0] == 401
    status, headers, payload = served.request("GET", path, headers=bearer(VALIDATE_KEY))
    assert (status, payload["status"]) == (200, True)
    assert served.request("GET", path, headers=bearer(ADMIN_KEY))[0] == 200  # admin works too
    body = f'{{"token": "{token}"}}'
    assert served.request("POST", "/app/valid", body=body)[0] == 401
    assert served.request("POST", "/app/valid", body=body, headers=bearer(VALIDATE_KEY))[0] == 200
    # The validate key does not administer.
    for method, target in (
        ("POST", "/app/token"),
        ("DELETE", "/app/clear/all/tokens"),
        ("GET", "/app/tokens"),
        ("GET", "/metrics"),
    ):
        status, headers, _ = served.request(method, target, headers=bearer(VALIDATE_KEY))
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), target
    assert served.request("GET", "/health")[0] == 200  # health stays open


def test_without_a_validate_key_validation_stays_open(serve: Callable[..., Served]) -> None:
    served = serve(admin_key=ADMIN_KEY)
    token = served.request("POST", "/app/token", headers=bearer(ADMIN_KEY))[2]["token"]
    assert served.request("GET", f"/app/valid/{token}")[2]["status"] is True


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("\n", "is empty"),
        ("   \n", "is empty"),
        (" key-with-space-before\n", "whitespace around it"),
        ("key\nsecond line\n", "more than one line"),
        ("k\u00e9y\n", "printable ASCII"),
    ],
)
def test_bad_key_files_are_refused_at_start(
    runner: CliRunner, tmp_path: Path, content: str, fragment: str
) -> None:
    for option in ("--admin-key-file", "--validate-key-file"):
        key_file = tmp_path / "key"
        key_file.write_text(content)
        result = runner.invoke(app, ["serve", "--port", "0", option, str(key_file)])
        assert result.exit_code == 2, result.output
        assert fragment in result.stderr and str(key_file) in result.stderr
        assert content.strip() == "" or content.strip() not in result.stderr  # never the key


def test_a_missing_key_file_names_the_file(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.key"
    result = runner.invoke(app, ["serve", "--port", "0", "--validate-key-file", str(missing)])
    assert result.exit_code == 2
    assert f"cannot read validate key file {missing}" in result.stderr


@pytest.mark.parametrize("value", [" padded", "padded ", "\tx", "   "])
def test_keys_with_whitespace_in_the_environment_are_refused(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TOKENCLI_ADMIN_KEY", value)
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 2
    assert "$TOKENCLI_ADMIN_KEY" in result.stderr


def test_key_files_win_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENCLI_ADMIN_KEY", "from-env")
    monkeypatch.setenv("TOKENCLI_VALIDATE_KEY", "validate-env")
    key_file = tmp_path / "admin.key"
    key_file.write_text("from-file\n")
    assert load_keys(KeySource(admin_file=key_file), os.environ) == Keys(
        "from-file", "validate-env"
    )
    assert load_keys(KeySource(), os.environ) == Keys("from-env", "validate-env")


def test_reload_keeps_the_old_key_when_a_file_turns_bad(tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text("first-key\n")
    source = KeySource(admin_file=key_file)
    config = ApiConfig(load_keys(source, {}))
    reports: list[str] = []
    key_file.write_text("second-key\n")
    serving.reload_keys(config, source, reports.append)
    assert config.keys.admin == "second-key"
    key_file.write_text("")
    serving.reload_keys(config, source, reports.append)
    key_file.unlink()
    serving.reload_keys(config, source, reports.append)
    assert config.keys.admin == "second-key"
    assert reports[0] == "keys reloaded"
    assert all("old ones stay" in line for line in reports[1:]) and len(reports) == 3
    assert not any("second-key" in line or "first-key" in line for line in reports)


@needs_executable
def test_sighup_swaps_the_key_without_dropping_a_connection(tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text("old-admin-key\n")
    os.chmod(key_file, 0o600)
    with serve_process("--admin-key-file", str(key_file)) as (process, client):
        connection = client.connection()
        try:

            def issue(key: str) -> int:
                connection.request("POST", "/app/token", headers=bearer(key))
                response = connection.getresponse()
                response.read()
                return response.status

            assert issue("old-admin-key") == 200
            first_socket = connection.sock
            key_file.write_text("new-admin-key\n")
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while issue("new-admin-key") != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert issue("new-admin-key") == 200
            assert issue("old-admin-key") == 401
            assert connection.sock is first_socket  # the same connection all along
        finally:
            connection.close()
        process.terminate()
        _, rest = process.communicate(timeout=30)
    assert "keys reloaded" in rest
    assert "new-admin-key" not in rest and "old-admin-key" not in rest
    assert process.returncode == 0


def test_a_failed_event_loop_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken_loop(self: TokenHTTPServer, poll_interval: float) -> None:
        raise RuntimeError("the loop broke")  # stands in for a bug in the loop itself

    monkeypatch.setattr(TokenHTTPServer, "_loop", broken_loop)
    server = serving.build_server(serving.ServeOptions(Location(path=tmp_path / "t.db"), port=0))
    code = serving.run(server)
    assert code == 1
    assert "the event loop failed: RuntimeError" in capsys.readouterr().err


def _stderr_lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's stderr, line by line, read on a thread so a test can wait on a line
    with a bound instead of blocking on a pipe that may never speak. The thread closes
    the pipe when the process has gone."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stream = process.stderr

    def pump() -> None:
        with stream:
            for line in stream:
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_line_with(lines: queue.Queue[str], fragment: str) -> str:
    while True:
        line = lines.get(timeout=30)  # generous: a bound on a hang, not a timing
        if fragment in line:
            return line


@needs_executable
@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "too long"])
def test_sighup_with_a_key_file_that_is_not_a_regular_file_keeps_serving(
    tmp_path: Path, kind: str
) -> None:
    """Issue 18 item 11: a FIFO in place of the key file wedged the main thread on SIGHUP
    (still up 20 s after SIGTERM). Now it is refused at once, the old key stays, and a
    later SIGHUP with a good file works."""
    key_file = tmp_path / "admin.key"
    key_file.write_text("old-admin-key\n")
    os.chmod(key_file, 0o600)
    with serve_process("--admin-key-file", str(key_file)) as (process, client):
        lines = _stderr_lines(process)
        key_file.unlink()
        if kind == "fifo":
            os.mkfifo(key_file, 0o600)  # no writer will ever come
        elif kind == "directory":
            key_file.mkdir()
        elif kind == "device":
            key_file.symlink_to("/dev/zero")  # followed: what it names must be a file
        else:
            key_file.write_text("k" * 5000)
        process.send_signal(signal.SIGHUP)
        refused = _next_line_with(lines, "keys not reloaded")
        assert str(key_file) in refused and "old ones stay" in refused
        bearer_old = bearer("old-admin-key")
        assert client.request("POST", "/app/token", headers=bearer_old)[0] == 200
        assert client.request("GET", "/health")[0] == 200
        # The main thread is free: the next SIGHUP with a good file is taken.
        if kind == "directory":
            key_file.rmdir()
        else:
            key_file.unlink()
        key_file.write_text("new-admin-key\n")
        process.send_signal(signal.SIGHUP)
        _next_line_with(lines, "keys reloaded")
        assert client.request("POST", "/app/token", headers=bearer("new-admin-key"))[0] == 200
        process.terminate()
        assert process.wait(timeout=30) == 0


@needs_executable
def test_a_fifo_as_key_file_is_refused_at_start(tmp_path: Path) -> None:
    fifo = tmp_path / "admin.key"
    os.mkfifo(fifo, 0o600)
    result = tokencli("serve", "--port", "0", "--admin-key-file", str(fifo), timeout=60)
    assert result.returncode == 2
    assert f"admin key file {fifo} is not a regular file" in result.stderr


def test_a_symlinked_key_file_is_followed(tmp_path: Path) -> None:
    """Key files in /etc are often links into a secrets mount; the link is followed."""
    secrets = tmp_path / "secrets" / "..data"
    secrets.mkdir(parents=True)
    (secrets / "admin.key").write_text("mounted-key\n")
    link = tmp_path / "admin.key"
    link.symlink_to(secrets / "admin.key")
    assert load_keys(KeySource(admin_file=link), {}).admin == "mounted-key"
