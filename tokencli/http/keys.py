"""Bearer keys for `serve`: read from files or the environment, checked, re-read on SIGHUP.

A key file holds the key on its first line (a trailing newline is fine). A key that is
empty, or that has whitespace around it in the environment, is refused at start: it
would otherwise silently never match. On reload, a file that became unreadable or empty
keeps the old key, and the error is logged (never the key).

A key file is opened non-blocking and must be a regular file of at most 4 KiB: a FIFO, a
device or a socket put in its place is refused at once instead of stalling the thread
that reads it (on SIGHUP, the main thread). Symlinks are followed on purpose: key files
are often links into a secrets mount (Kubernetes and systemd credentials swap a `..data`
link to rotate), and whoever can replace the link can replace the file it names anyway.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from tokencli.domain.errors import InvalidRequestError
from tokencli.http.answers import Keys

ADMIN_KEY_ENV = "TOKENCLI_ADMIN_KEY"
VALIDATE_KEY_ENV = "TOKENCLI_VALIDATE_KEY"
MAX_KEY_BYTES = 4096


class KeySource(NamedTuple):
    """Where each key comes from: a file (wins) or an environment variable."""

    admin_file: Path | None = None
    validate_file: Path | None = None


def read_key_file(path: Path, kind: str = "key") -> str:
    """The key in `path`, or InvalidRequestError saying why it cannot be used."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer (or a device) must not wait.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as error:
        reason = error.strerror or str(error)
        raise InvalidRequestError(f"cannot read {kind} file {path}: {reason}") from None
    try:
        raw = _read_regular(descriptor, path, kind)
    finally:
        os.close(descriptor)
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidRequestError(f"{kind} file {path} is longer than {MAX_KEY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(f"{kind} file {path} is not UTF-8 text") from None
    key = text.rstrip("\r\n")
    if "\n" in key or "\r" in key:
        raise InvalidRequestError(f"{kind} file {path} holds more than one line")
    return _checked(key, f"{kind} file {path}")


def _read_regular(descriptor: int, path: Path, kind: str) -> bytes:
    """The first MAX_KEY_BYTES + 1 bytes of an open regular file; refused otherwise."""
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise InvalidRequestError(f"{kind} file {path} is not a regular file")
        if status.st_size > MAX_KEY_BYTES:
            raise InvalidRequestError(f"{kind} file {path} is longer than {MAX_KEY_BYTES} bytes")
        chunks = []
        wanted = MAX_KEY_BYTES + 1
        while wanted > 0:  # a regular file never blocks; it may still grow while read
            chunk = os.read(descriptor, wanted)
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
        return b"".join(chunks)
    except OSError as error:
        reason = error.strerror or str(error)
        raise InvalidRequestError(f"cannot read {kind} file {path}: {reason}") from None


def _checked(key: str, where: str) -> str:
    if not key.strip():
        raise InvalidRequestError(f"{where} is empty")
    if key != key.strip():
        raise InvalidRequestError(f"{where} has whitespace around it; remove it")
    if not key.isprintable() or not key.isascii():
        raise InvalidRequestError(f"{where} must be printable ASCII (an HTTP header carries it)")
    return key


def _from_env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    return _checked(value, f"${name}")


def load_keys(source: KeySource, environ: Mapping[str, str]) -> Keys:
    """Both keys now (a file wins over `environ`), or InvalidRequestError (exit 2 at
    start) naming the problem."""
    admin = (
        read_key_file(source.admin_file, "admin key")
        if source.admin_file
        else _from_env(environ, ADMIN_KEY_ENV)
    )
    validate = (
        read_key_file(source.validate_file, "validate key")
        if source.validate_file
        else _from_env(environ, VALIDATE_KEY_ENV)
    )
    return Keys(admin=admin, validate=validate)


def key_file_is_shared(path: Path) -> bool:
    """True if others than the owner may read the file (it should be mode 600)."""
    try:
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False
