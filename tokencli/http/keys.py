"""Bearer keys for `serve`: read from files or the environment, checked, re-read on SIGHUP.

A key file holds the key on its first line (a trailing newline is fine). A key that is
empty, or that has whitespace around it in the environment, is refused at start: it
would otherwise silently never match. On reload, a file that became unreadable or empty
keeps the old key, and the error is logged (never the key).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from tokencli.domain.errors import InvalidRequestError
from tokencli.http.api import Keys

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
        with path.open("rb") as handle:
            raw = handle.read(MAX_KEY_BYTES + 1)
    except OSError as error:
        reason = error.strerror or str(error)
        raise InvalidRequestError(f"cannot read {kind} file {path}: {reason}") from None
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
