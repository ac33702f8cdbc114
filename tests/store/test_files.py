"""Files that are not ours, folders, permissions: refused with exit 3 and left untouched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokencli.cli.app import app
from tokencli.domain import tokens
from tokencli.domain.errors import ExitStatus
from tokencli.service.service import TokenService
from tokencli.store.sqlite.queries import SQLiteStore

from support import (
    EXECUTABLE,
    needs_executable,
    other_application_database,
    truncated_database,
)

HOSTILE = {
    "random bytes": lambda path: path.write_bytes(os.urandom(8192)),
    "empty file": lambda path: path.write_bytes(b""),
    "other sqlite": other_application_database,
    "truncated tokencli": truncated_database,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize(
    "command", [["issue"], ["check", "x"], ["list"], ["purge"], ["stats"], ["revoke", "a" * 12]]
)
def test_hostile_files_exit_3_and_stay_unchanged(
    runner: CliRunner, tmp_path: Path, kind: str, command: list[str]
) -> None:
    path = tmp_path / "hostile.db"
    HOSTILE[kind](path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = runner.invoke(app, ["--db", str(path), *command])
    assert result.exit_code == ExitStatus.STORAGE, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_directory_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["--db", str(tmp_path), "issue"])
    assert result.exit_code == ExitStatus.STORAGE
    assert "is a folder" in result.stderr


def test_unwritable_folder_as_an_unprivileged_user(runner: CliRunner) -> None:
    """Root ignores folder permissions, so as root the check runs in a child that drops to
    nobody; as any other user it runs as that user."""
    base = Path(tempfile.mkdtemp(prefix="tokencli-perm-", dir="/tmp"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        target = locked / "tokens.db"
        if os.geteuid() != 0:
            result = runner.invoke(app, ["--db", str(target), "issue"])
            code, message = result.exit_code, result.stderr
        else:
            code, message = _run_as_nobody(runner, ["--db", str(target), "issue"])
        assert code == ExitStatus.STORAGE
        assert f"no write permission on folder {locked}" in message
        assert not target.exists()
    finally:
        os.chmod(base / "locked", 0o755)
        shutil.rmtree(base)


def _run_as_nobody(runner: CliRunner, args: list[str]) -> tuple[int, str]:
    code, _, message = _invoke_as_nobody(runner, args)
    return code, message


def _invoke_as_nobody(runner: CliRunner, args: list[str]) -> tuple[int, str, str]:
    """Run the CLI as the unprivileged user `nobody` in a forked child (root ignores file
    permissions); exit code, stdout, stderr."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(reader)
            os.setgid(65534)
            os.setuid(65534)
            result = runner.invoke(app, args)
            payload = [result.exit_code, result.stdout, result.stderr]
            os.write(writer, json.dumps(payload).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        payload = pipe.read()
    os.waitpid(child, 0)
    code, out, err = json.loads(payload)
    return int(code), str(out), str(err)


def invoke_unprivileged(runner: CliRunner, args: list[str]) -> tuple[int, str, str]:
    """The CLI as a user who is not root (root reads and writes everything)."""
    if os.geteuid() != 0:
        result = runner.invoke(app, args)
        return result.exit_code, result.stdout, result.stderr
    return _invoke_as_nobody(runner, args)


def digests(path: Path) -> dict[str, str]:
    """SHA-256 of a database file and of each companion file beside it."""
    found = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        companion = Path(f"{path}{suffix}")
        if companion.exists():
            found[suffix or "main"] = hashlib.sha256(companion.read_bytes()).hexdigest()
    return found


def foreign_wal_database(path: Path) -> None:
    """Another application's WAL database whose last writes are only in its -wal file
    (the writer was killed before any checkpoint)."""
    script = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('PRAGMA journal_mode=WAL')\n"
        "c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "c.execute('CREATE TABLE notes (body TEXT)')\n"
        "c.execute(\"INSERT INTO notes VALUES ('only in the wal')\")\n"
        "c.commit()\n"
        "os._exit(0)\n"  # no close: no checkpoint, the -wal and -shm stay
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)


def foreign_hot_journal_database(path: Path) -> None:
    """Another application's rollback-journal database with a hot journal beside it
    (the writer was killed mid-transaction): a normal open would roll it back."""
    other_application_database(path)
    script = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA cache_size=1')\n"
        "c.execute('BEGIN')\n"
        'c.execute("INSERT INTO notes SELECT hex(randomblob(500)) FROM "\n'
        '          "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<2000)"\n'
        '          " SELECT i FROM n)")\n'
        "os._exit(0)\n"  # killed mid-transaction: the journal is hot
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)


@pytest.mark.parametrize(
    "make", [foreign_wal_database, foreign_hot_journal_database], ids=["wal", "hot-journal"]
)
@pytest.mark.parametrize("command", [["list"], ["issue"], ["check", "x"], ["stats"]])
def test_foreign_files_and_their_companions_stay_byte_for_byte(
    runner: CliRunner, tmp_path: Path, make: object, command: list[str]
) -> None:
    path = tmp_path / "foreign.db"
    make(path)  # type: ignore[operator]
    before = digests(path)
    assert len(before) >= 2  # the companion file is there to be spared
    result = runner.invoke(app, ["--db", str(path), *command])
    assert result.exit_code == ExitStatus.STORAGE
    assert "not a tokencli database" in result.stderr
    assert digests(path) == before


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder under /tmp that `nobody` can enter (tmp_path may not be)."""
    base = Path(tempfile.mkdtemp(prefix="tokencli-ro-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    for child in base.rglob("*"):
        with contextlib.suppress(OSError):
            child.chmod(0o755 if child.is_dir() else 0o644)
    shutil.rmtree(base)


def readable_database(folder: Path) -> tuple[Path, str]:
    """A database with one live token, readable but not writable by others; its token."""
    path = folder / "tokens.db"
    service = TokenService(SQLiteStore.open(path, create=True))
    token = service.issue(label="ro").token
    service.store.close()
    for file in folder.iterdir():
        file.chmod(0o644)
    return path, token


@pytest.mark.parametrize(
    "command",
    [["list"], ["stats"], ["audit"], ["purge", "--dry-run"], ["list", "--json"]],
)
def test_read_only_commands_work_on_a_file_the_user_may_only_read(
    runner: CliRunner, shared_folder: Path, command: list[str]
) -> None:
    path, _ = readable_database(shared_folder)
    before = digests(path)
    code, out, err = invoke_unprivileged(runner, ["--db", str(path), *command])
    assert (code, err) == (0, "")
    if command[0] == "list":
        assert "ro" in out
    assert digests(path) == before


def test_show_works_and_check_names_the_permission_on_a_read_only_file(
    runner: CliRunner, shared_folder: Path
) -> None:
    path, token = readable_database(shared_folder)
    code, out, _ = invoke_unprivileged(runner, ["--db", str(path), "show", token, "--json"])
    assert code == 0 and json.loads(out)["state"] == "valid"
    code, _, err = invoke_unprivileged(runner, ["--db", str(path), "check", token])
    assert code == ExitStatus.STORAGE
    assert f"no write permission on {path}" in err and "show" in err
    assert "damaged" not in err
    code, _, err = invoke_unprivileged(runner, ["--db", str(path), "issue"])
    assert code == ExitStatus.STORAGE and f"no write permission on {path}" in err


def test_a_malformed_token_on_a_read_only_file_is_malformed(
    runner: CliRunner, shared_folder: Path
) -> None:
    # Malformed is decided by the token's shape, without the database (README, check).
    path, _ = readable_database(shared_folder)
    code, out, err = invoke_unprivileged(runner, ["--db", str(path), "check", "not-a-token"])
    assert (code, out) == (ExitStatus.NOT_VALID, "malformed\n")
    assert err == (
        f"Warning: the check was not recorded in the audit trail: no write permission on {path}\n"
    )


def test_read_only_folder_without_companion_files_still_lists(
    runner: CliRunner, shared_folder: Path
) -> None:
    path, _ = readable_database(shared_folder)
    SQLiteStore.open(path, create=True).close()  # last close checkpoints: no -wal, no -shm
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shared_folder.chmod(0o555)
    code, out, err = invoke_unprivileged(runner, ["--db", str(path), "list"])
    assert (code, err) == (0, "") and "ro" in out


def test_an_unreadable_db_option_is_exit_3_like_the_environment(
    runner: CliRunner, shared_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = readable_database(shared_folder)
    path.chmod(0o600)
    by_option = invoke_unprivileged(runner, ["--db", str(path), "list"])
    monkeypatch.setenv("TOKENCLI_DB", str(path))
    by_environment = invoke_unprivileged(runner, ["list"])
    for code, _, err in (by_option, by_environment):
        assert code == ExitStatus.STORAGE
        assert f"no read permission on {path}" in err


@pytest.mark.parametrize("command", [["list"], ["stats"], ["check", "x"], ["audit"]])
def test_a_dangling_symlink_is_a_missing_file_for_read_only_commands(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    target = tmp_path / "elsewhere" / "tokens.db"
    target.parent.mkdir()
    link = tmp_path / "link.db"
    link.symlink_to(target)
    result = runner.invoke(app, ["--db", str(link), *command])
    assert result.exit_code in (0, 1)
    assert result.stderr == f"Note: no database at {link} yet; read as empty\n"
    assert not target.exists()  # nothing created, so the path is not poisoned
    issued = runner.invoke(app, ["--db", str(link), "issue"])
    assert issued.exit_code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # created at the target, private
    assert runner.invoke(app, ["--db", str(link), "check", issued.stdout.strip()]).exit_code == 0


@needs_executable
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], ids=["000", "022", "077"])
def test_folders_made_for_a_database_are_0700_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    """Issue 18 item 12: under umask 000 the parents of a new database were made 0777."""
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    target = existing / "a" / "b" / "c" / "tokens.db"
    assert EXECUTABLE is not None
    result = subprocess.run(
        [EXECUTABLE, "--db", str(target), "issue"],
        capture_output=True,
        text=True,
        timeout=120,
        umask=umask,
    )
    assert result.returncode == 0, result.stderr
    for folder in (existing / "a", existing / "a" / "b", target.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # not ours: left as it was
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


WELL_FORMED = tokens.generate().plaintext  # a token of the right shape, stored nowhere


@pytest.mark.parametrize(
    ("command", "where", "expected"),
    [
        (["issue"], "locked/new/tokens.db", "no write permission on folder {base}/locked"),
        (["issue"], "locked/new/deeper/tokens.db", "no write permission on folder {base}/locked"),
        (["issue"], "private/tokens.db", "no permission to enter folder {base}/private"),
        (["list"], "private/tokens.db", "no permission to enter folder {base}/private"),
        (["issue"], "private/inner/tokens.db", "no permission to enter folder {base}/private"),
        (["list"], "private/missing/tokens.db", "no permission to enter folder {base}/private"),
        # A well-formed token: a malformed one is judged without opening anything.
        (
            ["check", WELL_FORMED],
            "private/tokens.db",
            "no permission to enter folder {base}/private",
        ),
    ],
)
def test_permission_errors_name_the_folder_that_refuses(
    runner: CliRunner, shared_folder: Path, command: list[str], where: str, expected: str
) -> None:
    """Issue 19: `cannot use database at FILE: Permission denied` named the file; the
    README promises the folder whose permission is missing."""
    (shared_folder / "locked").mkdir(mode=0o555)
    (shared_folder / "private").mkdir(mode=0o700)
    (shared_folder / "private" / "inner").mkdir(mode=0o755)
    (shared_folder / "private").chmod(0o600)  # no search (x) bit: nobody may enter it
    target = shared_folder / where
    code, _, err = invoke_unprivileged(runner, ["--db", str(target), *command])
    assert code == ExitStatus.STORAGE
    assert err.startswith("Error: " + expected.format(base=shared_folder)), err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not target.exists() and not (shared_folder / "locked" / "new").exists()
