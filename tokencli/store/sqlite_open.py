"""Opening a SQLite file safely: identity first, nothing written to what is not ours.

- A file is probed before any connection that could write to it exists: an `immutable=1`
  connection reads its header (application_id, schema version) without locks, journals
  or WAL, so a foreign file and its `-wal`, `-shm` or hot journal stay byte-for-byte as
  they were. (A normal connection would checkpoint a foreign WAL on close, or roll back
  its hot journal.)
- The probe goes through SQLite, never `open()`: closing any descriptor of a database
  file drops every POSIX lock this process holds on it, so a raw read beside a live
  connection (the server's) would let other processes reset the WAL under it.
- A new database is built under a temporary name and linked into place fully formed
  (mode 0600), so a concurrent process never sees a half-made file.
- Commands that only read open the file `mode=ro`, so they work on a file the user may
  read but not write; permission problems are named as such, not as damage.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from tokencli.errors import NoPermissionError, StorageError
from tokencli.store import sqlite_schema
from tokencli.store.sqlite_schema import APPLICATION_ID, migrate, user_version

BUSY_TIMEOUT_SECONDS = 10.0
_REFUSING = "(refusing to touch it); pass --db to choose another file"


def permission_problem(path: Path, *, write: bool) -> str | None:
    """A message naming the missing permission on the file or its folder, if one is missing."""
    folder = path.parent
    if path.exists() and not os.access(path, os.R_OK):
        return f"no read permission on {path}"
    if not write:
        return None
    if path.exists() and not os.access(path, os.W_OK):
        return f"no write permission on {path}"
    if not os.access(folder, os.W_OK | os.X_OK):
        # The -wal and -shm files live beside the database and are created on demand.
        return f"no write permission on folder {folder} (SQLite keeps its -wal file there)"
    return None


@contextlib.contextmanager
def storage_errors(path: Path | None, *, write: bool = True) -> Iterator[None]:
    """Turn SQLite and file-system failures into StorageError with a useful message."""
    where = str(path) if path is not None else "(empty database)"
    try:
        yield
    except StorageError:
        raise
    except sqlite3.OperationalError as error:
        text = str(error)
        if "locked" in text or "busy" in text:
            raise StorageError(
                f"database at {where} stayed locked for over {BUSY_TIMEOUT_SECONDS:g}s; "
                "another process holds it (try again)"
            ) from None
        if path is not None and ("readonly" in text or "unable to open" in text):
            problem = permission_problem(path, write=write)
            if problem is not None:
                raise NoPermissionError(problem) from None
        if "disk is full" in text or "disk I/O" in text:
            raise StorageError(f"cannot write database at {where}: {text}") from None
        raise StorageError(f"cannot use database at {where}: {text}") from None
    except sqlite3.DatabaseError as error:
        raise StorageError(
            f"database at {where} is damaged or not a tokencli database ({error}); "
            "it was left as it is"
        ) from None
    except OSError as error:
        raise StorageError(f"cannot use database at {where}: {error.strerror or error}") from None


def _uri(path: Path, options: str) -> str:
    return f"file:{quote(str(path))}?{options}"


def connect(path: Path | str, *, uri: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode, usable from any thread (each store has its own)."""
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the
    # lock up front and waits on the busy timeout instead of failing on upgrade.
    return sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False, uri=uri
    )


def probe_identity(path: Path) -> int:
    """Refuse, without writing or locking, any file that is not a tokencli database of a
    schema this code understands; return its schema version."""
    if path.is_dir():
        raise StorageError(f"{path} is a folder, not a database file; pass --db FILE")
    problem = permission_problem(path, write=False)
    if problem is not None:
        raise NoPermissionError(problem)
    probe = connect(_uri(path, "mode=ro&immutable=1"), uri=True)
    try:
        application_id = probe.execute("PRAGMA application_id").fetchone()[0]
        version = user_version(probe)
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            raise StorageError(f"{path} is not a SQLite database {_REFUSING}") from None
        raise StorageError(
            f"database at {path} is damaged ({error}); it was left as it is"
        ) from None
    finally:
        probe.close()
    if application_id != APPLICATION_ID:
        if path.stat().st_size == 0:
            raise StorageError(
                f"database at {path} is an empty file, not a tokencli database {_REFUSING}"
            )
        raise StorageError(f"database at {path} is not a tokencli database {_REFUSING}")
    _refuse_newer(path, version)
    return version


def _refuse_newer(path: Path, version: int) -> None:
    if version > sqlite_schema.SCHEMA_VERSION:
        raise StorageError(
            f"database at {path} has schema version {version}, newer than this tokencli "
            f"understands ({sqlite_schema.SCHEMA_VERSION}); upgrade tokencli"
        )


def create_database(path: Path) -> None:
    """Build a new database beside `path`, then link it into place in one step."""
    import tempfile  # only when creating: it drags in shutil and friends

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600, so tokens are never group-readable.
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".new", dir=path.parent
    )
    os.close(handle)
    try:
        connection = sqlite3.connect(temporary_name, isolation_level=None)
        try:
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            migrate(connection)
            connection.execute("PRAGMA journal_mode = WAL")
        finally:
            connection.close()
        try:
            os.link(temporary_name, path)
        except FileExistsError:
            pass  # another process created it first; theirs is just as good
    finally:
        os.unlink(temporary_name)


def open_connection(path: Path, *, create: bool, read_only: bool) -> sqlite3.Connection | None:
    """A checked, migrated connection to the database at `path`.

    Returns None when the file does not exist and `create` is False (a dangling symlink
    counts as missing): the caller then reads an empty database and creates nothing. A
    file made through a symlink is made at the link's target, with mode 0600.
    """
    with storage_errors(path, write=not read_only):
        if not path.exists():
            if not create:
                return None
            target = path.resolve() if path.is_symlink() else path
            problem = permission_problem(target, write=True) if target.parent.exists() else None
            if problem is not None:
                raise NoPermissionError(problem)
            create_database(target)
        version = probe_identity(path)
        if read_only and version == sqlite_schema.SCHEMA_VERSION:
            return _open_read_only(path)
        problem = permission_problem(path, write=True)
        if problem is not None:
            raise NoPermissionError(
                problem
                if not read_only
                else f"{problem}: the database needs an upgrade to schema "
                f"{sqlite_schema.SCHEMA_VERSION}; run any writing command as its owner"
            )
        connection = connect(path)
        try:
            # NORMAL is crash-safe in WAL mode (a killed process loses nothing it
            # committed); only a power cut can drop the last commits.
            connection.execute("PRAGMA synchronous = NORMAL")
            version = user_version(connection)  # may have moved on since the probe
            _refuse_newer(path, version)
            if version < sqlite_schema.SCHEMA_VERSION:
                migrate(connection)
        except BaseException:
            connection.close()
            raise
        return connection


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write, for commands that only read."""
    connection = connect(_uri(path, "mode=ro"), uri=True)
    try:
        connection.execute("SELECT 1 FROM tokens LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        connection.close()
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise
        # A reader that may not create the -shm file beside a WAL database cannot open
        # it `mode=ro`; with no WAL content to read, the main file alone is the database.
        connection = connect(_uri(path, "mode=ro&immutable=1"), uri=True)
    return connection
