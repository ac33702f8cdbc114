"""Exit codes and the exceptions that map onto them, shared by every command.

Exit codes are a contract with crontab lines and CI scripts (docs/design.md), so they live
in one enum rather than as numbers scattered through the CLI.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes, the same for every command."""

    OK = 0
    NOT_VALID = 1  # check: token not valid; revoke/renew/rotate: ID not there
    USAGE = 2
    STORAGE = 3
    INTERRUPTED = 130


class TokencliError(Exception):
    """Base of the foreseeable failures; the message is written for the operator."""

    exit_status = ExitStatus.NOT_VALID


class InvalidRequestError(TokencliError):
    """A request the service refuses: TTL out of range, bad label, non-positive count."""

    exit_status = ExitStatus.USAGE


class NotFoundError(TokencliError):
    """No token with that ID (or it can no longer be acted on)."""

    exit_status = ExitStatus.NOT_VALID


class StorageError(TokencliError):
    """The database cannot be opened, read or written."""

    exit_status = ExitStatus.STORAGE


class NoPermissionError(StorageError):
    """The user may not read or write the database file or its folder."""


class ConflictError(TokencliError):
    """What was asked collides with what is stored (an import's ID already there)."""

    exit_status = ExitStatus.NOT_VALID
