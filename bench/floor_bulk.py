"""The bulk-issue floor: generate, hash and insert N tokens with plain sqlite3.

The same work `tokencli issue --count N` must do at the least (random ID and secret,
CRC32 checksum, SHA-256, one executemany in one transaction into the same table and
index), with none of tokencli's own: no CLI, no audit trail, no output.
Usage: python floor_bulk.py DB N
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import sqlite3
import sys
import time
import zlib


def rows(count: int, now: int):  # type: ignore[no-untyped-def]
    for _ in range(count):
        token_id = base64.b32encode(secrets.token_bytes(8)).decode()[:12].lower()
        prefix = f"{token_id}:{secrets.token_urlsafe(18)}"
        checksum = base64.urlsafe_b64encode(zlib.crc32(prefix.encode()).to_bytes(4, "big"))[:6]
        token = prefix + checksum.decode()
        digest = hashlib.sha256(token.encode()).digest()
        yield (token_id, digest, None, now, now + 3600, None, now + 3600)


def main() -> None:
    path, count = sys.argv[1], int(sys.argv[2])
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY NOT NULL,"
        " secret_hash BLOB NOT NULL, label TEXT, created_at INTEGER NOT NULL,"
        " expires_at INTEGER NOT NULL, uses_left INTEGER,"
        " revoked_at INTEGER, ends_at INTEGER NOT NULL) STRICT, WITHOUT ROWID"
    )
    connection.execute("CREATE INDEX IF NOT EXISTS tokens_ends_at ON tokens (ends_at)")
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany(
        "INSERT INTO tokens (id, secret_hash, label, created_at, expires_at, uses_left, ends_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows(count, int(time.time())),
    )
    connection.execute("COMMIT")
    connection.close()


if __name__ == "__main__":
    main()
