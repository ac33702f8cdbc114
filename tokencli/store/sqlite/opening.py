"""Opening a SQLite file safely: identity first, nothing written to what is not ours.

- A file is probed before any SQLite connection to it exists: its 100-byte header
  (magic, application_id, schema version) is read plainly, so a foreign file and its
  `-wal`, `-shm` or hot journal stay byte-for-byte as they were. (A SQLite connection
  would checkpoint a foreign WAL on close, roll back its hot journal, or write to its
  -shm; an `immutable=1` one reads torn pages while another process checkpoints.)
- That plain read happens only while this process holds no SQLite connection to the
  file: closing any descriptor of a database file drops every POSIX lock this process
  holds on it, so a raw read beside a live connection (the server's) would let other
  processes reset the WAL under it. Connections are counted per inode for that.
- A new database is built under a temporary name and linked into place fully formed
  (mode 0600), so a concurrent process never sees a half-made file.
- Commands that only read open the file `mode=ro`, so they work on a file the user may
  read but not write; permission problems are named as such, not as damage.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from tokencli.domain.errors import NoPermissionError, StorageError
from tokencli.store.sqlite import schema as sqlite_schema
from tokencli.store.sqlite.schema import APPLICATION_ID, migrate, user_version

BUSY_TIMEOUT_SECONDS = 10.0
_REFUSING = "(refusing to touch it); pass --db to choose another file"


def _exists(path: Path) -> bool:
    """Whether something is at `path` (following links); False for what cannot be there."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _folder_problem(path: Path, *, write: bool) -> str | None:
    """The folder on the way to `path` that refuses, named: one the user may not enter,
    or (when writing) the last existing one, where missing folders or the file would be
    made, if the user may not write there."""
    deepest = None
    for folder in reversed(path.absolute().parents):  # from the root down
        try:
            os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            break
        except PermissionError:
            break  # reported below, as the folder above it that may not be entered
        if not os.access(folder, os.X_OK):
            return f"no permission to enter folder {folder}"
        deepest = folder
    if not write or deepest is None or deepest == path.parent:
        return None
    if not os.access(deepest, os.W_OK | os.X_OK):
        return f"no write permission on folder {deepest} (needed to create {path.parent})"
    return None


def permission_problem(path: Path, *, write: bool) -> str | None:
    """A message naming the missing permission on the file or the folder that refuses,
    if one is missing."""
    problem = _folder_problem(path, write=write)
    if problem is not None:
        return problem
    folder = path.parent
    exists = _exists(path)
    if exists and not os.access(path, os.R_OK):
        return f"no read permission on {path}"
    if not write:
        return None
    if exists and not os.access(path, os.W_OK):
        return f"no write permission on {path}"
    if _exists(folder) and not os.access(folder, os.W_OK | os.X_OK):
        # The -wal and -shm files live beside the database and are created on demand.
        return f"no write permission on folder {folder} (SQLite keeps its -wal file there)"
    return None


class StorageErrors:
    """Turn SQLite and file-system failures into StorageError with a useful message.

    A class rather than a generator: every statement of the serving hot path runs in
    one, and entering a generator-based context manager costs several times as much.
    """

    __slots__ = ("_path", "_write")

    def __init__(self, path: Path | None, *, write: bool = True) -> None:
        self._path = path
        self._write = write

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None or isinstance(error, StorageError):
            return
        translated = self._translate(error)
        if translated is not None:
            raise translated from None

    def _translate(self, error: BaseException) -> StorageError | None:
        path = self._path
        where = str(path) if path is not None else "(empty database)"
        if isinstance(error, sqlite3.OperationalError):
            text = str(error)
            if "locked" in text or "busy" in text:
                return StorageError(
                    f"database at {where} stayed locked for over {BUSY_TIMEOUT_SECONDS:g}s; "
                    "another process holds it (try again)"
                )
            if path is not None and ("readonly" in text or "unable to open" in text):
                problem = permission_problem(path, write=self._write)
                if problem is not None:
                    return NoPermissionError(problem)
            if "disk is full" in text or "disk I/O" in text:
                return StorageError(f"cannot write database at {where}: {text}")
            return StorageError(f"cannot use database at {where}: {text}")
        if isinstance(error, sqlite3.DatabaseError):
            return StorageError(
                f"database at {where} is damaged or not a tokencli database ({error}); "
                "it was left as it is"
            )
        if isinstance(error, OSError):
            if path is not None and isinstance(error, PermissionError):
                problem = permission_problem(path, write=self._write)
                if problem is not None:
                    return NoPermissionError(problem)
            return StorageError(f"cannot use database at {where}: {error.strerror or error}")
        return None


def _uri(path: Path, options: str) -> str:
    return f"file:{quote(str(path))}?{options}"


def connect(path: Path | str, *, uri: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode, usable from any thread (each store has its own)."""
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the
    # lock up front and waits on the busy timeout instead of failing on upgrade.
    return sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False, uri=uri
    )


_HEADER = struct.Struct(">16s44xI4xI")  # magic, user_version at 60, application_id at 68
_MAGIC = b"SQLite format 3\x00"
# The files this process has SQLite connections to, by (device, inode), with how many.
_open_files: dict[tuple[int, int], int] = {}
_open_files_lock = threading.RLock()


def hold(path: Path) -> tuple[int, int] | None:
    """Note that this process now has a connection to the file (see `probe_identity`)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    key = (status.st_dev, status.st_ino)
    with _open_files_lock:
        _open_files[key] = _open_files.get(key, 0) + 1
    return key


def release(key: tuple[int, int] | None) -> None:
    """Note that a connection noted by `hold` has closed."""
    if key is None:
        return
    with _open_files_lock:
        left = _open_files.get(key, 0) - 1
        if left > 0:
            _open_files[key] = left
        else:
            _open_files.pop(key, None)


def _held(path: Path) -> bool:
    try:
        status = os.stat(path)
    except OSError:
        return False
    with _open_files_lock:
        return (status.st_dev, status.st_ino) in _open_files


def probe_identity(path: Path) -> int | None:
    """Refuse, without writing or locking, any file that is not a tokencli database of a
    schema this code understands; return the schema version its header records.

    The header is read with a plain read, before SQLite touches the file: no journal is
    rolled back, no WAL checkpointed or -shm rewritten. A plain read is safe only while
    this process holds no SQLite lock on the file (closing any descriptor of a file drops
    all of a process's POSIX locks on it, and another process could then reset the WAL
    under our live connection), so when this process already has the file open (the
    server's threads) the probe is skipped: that file was probed when first opened.
    Returns None when skipped.
    """
    if path.is_dir():
        raise StorageError(f"{path} is a folder, not a database file; pass --db FILE")
    problem = permission_problem(path, write=False)
    if problem is not None:
        raise NoPermissionError(problem)
    if _held(path):
        return None
    with open(path, "rb") as handle:
        header = handle.read(_HEADER.size)
    if not header:
        raise StorageError(
            f"database at {path} is an empty file, not a tokencli database {_REFUSING}"
        )
    if len(header) < _HEADER.size or not header.startswith(_MAGIC):
        raise StorageError(f"{path} is not a SQLite database {_REFUSING}")
    _, version, application_id = _HEADER.unpack(header)
    if application_id != APPLICATION_ID:
        raise StorageError(f"database at {path} is not a tokencli database {_REFUSING}")
    _refuse_newer(path, version)
    return int(version)


def _refuse_newer(path: Path, version: int) -> None:
    if version > sqlite_schema.SCHEMA_VERSION:
        raise StorageError(
            f"database at {path} has schema version {version}, newer than this tokencli "
            f"understands ({sqlite_schema.SCHEMA_VERSION}); upgrade tokencli"
        )


def make_private_folders(folder: Path) -> None:
    """Create `folder` and any missing parents with mode 0700, whatever the umask (`mkdir
    -p` and pathlib give parents the umask's mode: 0777 under umask 000). Folders that
    exist already are left as they are."""
    missing = []
    while not _exists(folder):
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for made in reversed(missing):
        try:
            os.mkdir(made, 0o700)
        except FileExistsError:
            continue  # another process made it first: its mode is its own
        # The umask may have taken bits from 0700 (a umask of 0200 leaves 0500): set it.
        os.chmod(made, 0o700)


def create_database(path: Path) -> None:
    """Build a new database beside `path`, then link it into place in one step."""
    import tempfile  # only when creating: it drags in shutil and friends

    make_private_folders(path.parent)
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


Held = tuple[int, int] | None


def open_connection(
    path: Path, *, create: bool, read_only: bool
) -> tuple[sqlite3.Connection, Held] | None:
    """A checked, migrated connection to the database at `path`, and its `hold` key
    (pass it to `release` after closing the connection).

    Returns None when the file does not exist and `create` is False (a dangling symlink
    counts as missing): the caller then reads an empty database and creates nothing. A
    file made through a symlink is made at the link's target, with mode 0600.
    """
    with StorageErrors(path, write=not read_only):
        if not path.exists():
            if not create:
                return None
            target = path.resolve() if path.is_symlink() else path
            problem = permission_problem(target, write=True) if target.parent.exists() else None
            if problem is not None:
                raise NoPermissionError(problem)
            create_database(target)
        # Probe and count under one lock, so no other thread of this process reads the
        # header plainly while this connection is being made.
        with _open_files_lock:
            version = probe_identity(path)
            held = hold(path)
        try:
            return _connect_checked(path, version, read_only), held
        except BaseException:
            release(held)
            raise


def _connect_checked(path: Path, version: int | None, read_only: bool) -> sqlite3.Connection:
    if read_only and version in (None, sqlite_schema.SCHEMA_VERSION):
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
