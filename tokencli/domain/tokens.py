"""The token format: `ID:SECRET`, generated, parsed, hashed and compared.

- ID: 12 characters of lowercase base32 (60 random bits). Public; it names the row.
- SECRET: 24 characters of URL-safe base64 (144 random bits from `secrets`) followed by
  6 characters holding the CRC32 of everything before them, as GitHub's token format does.
  The checksum lets us call a mistyped or truncated token malformed without touching the
  database, and lets a secret scanner tell a real token from random text.

Only SHA-256 of the whole token is stored. The secret has far more entropy than a
password, so a slow password hash would buy nothing but latency.
"""

from __future__ import annotations

import binascii
import importlib
import re
import zlib
from collections.abc import Callable
from typing import NamedTuple, Protocol, cast


class _Digest(Protocol):
    def digest(self) -> bytes: ...


def _builtin_sha256() -> Callable[[bytes], _Digest]:
    """Python's own SHA-256 when this Python has it, else hashlib's.

    Importing hashlib (or hmac) loads OpenSSL: about 3 ms of every run of `check`, for a
    function Python also carries built in (docs/benchmarks.md).
    """
    for module_name in ("_sha2", "_sha256"):  # Python 3.12+, then 3.11
        try:
            return cast(Callable[[bytes], _Digest], importlib.import_module(module_name).sha256)
        except (ImportError, AttributeError):
            continue
    from hashlib import sha256

    return sha256


def _builtin_compare_digest() -> Callable[[str | bytes, str | bytes], bool]:
    """A constant-time comparison: operator's built-in one, which is what hmac exports."""
    try:
        from _operator import _compare_digest

        return cast(Callable[[str | bytes, str | bytes], bool], _compare_digest)
    except ImportError:  # pragma: no cover - other Pythons
        from hmac import compare_digest

        return compare_digest


sha256 = _builtin_sha256()
compare_digest = _builtin_compare_digest()

ID_LENGTH = 12
SECRET_BODY_BYTES = 18
_BODY_LENGTH = 24
_CHECKSUM_LENGTH = 6
TOKEN_PATTERN = re.compile(
    rf"([a-z2-7]{{{ID_LENGTH}}}):([A-Za-z0-9_-]{{{_BODY_LENGTH}}})([A-Za-z0-9_-]{{{_CHECKSUM_LENGTH}}})"
)
ID_PATTERN = re.compile(rf"[a-z2-7]{{{ID_LENGTH}}}")
# Longest text worth running the regex on; anything longer is malformed at once.
MAX_TOKEN_LENGTH = ID_LENGTH + 1 + _BODY_LENGTH + _CHECKSUM_LENGTH


class MalformedTokenError(ValueError):
    """The text cannot be a tokencli token (wrong shape or failed checksum)."""


class NewToken(NamedTuple):
    """A freshly generated token: the plaintext to show once and the hash to store."""

    id: str
    plaintext: str
    secret_hash: bytes


# base64.urlsafe_b64encode, without its Python-level wrapper (every check computes one).
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _checksum(prefix: str) -> str:
    crc = zlib.crc32(prefix.encode("ascii")).to_bytes(4, "big")
    encoded = binascii.b2a_base64(crc, newline=False)[:_CHECKSUM_LENGTH]
    return encoded.translate(_URLSAFE).decode("ascii")


def new_id() -> str:
    """Return a random public token ID."""
    import secrets  # imported on first use: `check` never generates, so never pays for it

    return id_from_bytes(secrets.token_bytes(8))


# Base32 (RFC 4648, lower case) of every 10-bit value: two letters per lookup.
_B32_PAIRS = [
    a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567"
]


def id_from_bytes(raw: bytes) -> str:
    """The ID of 8 random bytes: the first 12 letters of their base32, lower case.

    The same as `base64.b32encode(raw)[:12].lower()` (a test checks), in a third of the
    time: base64's base32 is a Python loop, and bulk issuing makes millions of IDs.
    """
    bits = int.from_bytes(raw, "big") >> 4  # the 60 bits that 12 letters carry
    pairs = _B32_PAIRS
    return (
        pairs[bits >> 50]
        + pairs[(bits >> 40) & 1023]
        + pairs[(bits >> 30) & 1023]
        + pairs[(bits >> 20) & 1023]
        + pairs[(bits >> 10) & 1023]
        + pairs[bits & 1023]
    )


def generate() -> NewToken:
    """Return a new random token with its storable hash."""
    import secrets

    token_id = new_id()
    prefix = f"{token_id}:{secrets.token_urlsafe(SECRET_BODY_BYTES)}"
    plaintext = prefix + _checksum(prefix)
    return NewToken(token_id, plaintext, hash_token(plaintext))


def hash_token(plaintext: str) -> bytes:
    """Return the SHA-256 digest stored in place of the token."""
    return sha256(plaintext.encode("ascii")).digest()


# ASCII whitespace only: a token wrapped in other Unicode spaces was not typed or piped
# as one, and must not be taken for it.
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"


def strip(text: str) -> str:
    """The text without the ASCII whitespace around it (a trailing newline from a pipe)."""
    return text.strip(_ASCII_WHITESPACE)


def parse(text: str) -> str:
    """Return the token ID of a well-formed token, or raise MalformedTokenError.

    ASCII whitespace around the token (a trailing newline from a pipe) is not part of it.
    """
    candidate = text.strip(_ASCII_WHITESPACE)
    if len(candidate) != MAX_TOKEN_LENGTH:
        raise MalformedTokenError("not a tokencli token (wrong length)")
    match = TOKEN_PATTERN.fullmatch(candidate)
    if match is None:
        raise MalformedTokenError("not a tokencli token (wrong shape)")
    token_id, body, checksum = match.groups()
    if not compare_digest(_checksum(f"{token_id}:{body}"), checksum):
        raise MalformedTokenError(
            "not a tokencli token (checksum mismatch: mistyped or truncated?)"
        )
    return token_id


def matches(text: str, stored_hash: bytes) -> bool:
    """Compare a presented token with a stored hash in constant time."""
    return compare_digest(hash_token(strip(text)), stored_hash)


def is_token_id(text: str) -> bool:
    """Tell whether `text` has the shape of a public token ID."""
    return ID_PATTERN.fullmatch(text) is not None
