"""No plaintext secret in the database file, its WAL, the audit trail, the log or ps."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tokencli.store.sqlite.queries import SQLiteStore

from support import (
    EXECUTABLE,
    check_reading_stdin,
    needs_executable,
    tokencli,
)


@pytest.mark.slow
@needs_executable
def test_no_plaintext_secret_in_file_log_audit_or_ps(db_path: Path, tmp_path: Path) -> None:
    assert EXECUTABLE is not None
    issued = tokencli("issue", "--count", "5", "--uses", "3")
    tokens = issued.stdout.split()
    secrets_only = [token.split(":")[1] for token in tokens]
    with check_reading_stdin(EXECUTABLE) as checker:  # it waits on stdin, token unsent
        # -ww: without a terminal ps cuts lines at 80 columns, which under a long install
        # path hid the end of the line (and could hide a secret there).
        listing = subprocess.run(
            ["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True
        ).stdout
        out, _ = checker.communicate(tokens[0] + "\n", timeout=60)
    assert out == "valid\n"
    # The listing did show the checker while it held the token (else "no secret in ps"
    # would hold for any listing): its line is there, with no token in it.
    [checker_line] = [
        line for line in listing.splitlines() if line.split(maxsplit=1)[0] == str(checker.pid)
    ]
    assert checker_line.rstrip().endswith("tokencli check")
    log = tmp_path / "access.log"
    with subprocess.Popen(
        [EXECUTABLE, "serve", "--port", "0"], stderr=subprocess.PIPE, text=True
    ) as server:
        assert server.stderr is not None
        port = int(server.stderr.readline().strip().rsplit(":", 1)[1])
        for token in tokens:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                request = f"GET /app/valid/{token} HTTP/1.1\r\nConnection: close\r\n\r\n"
                client.sendall(request.encode())
                while client.recv(65536):
                    pass
        server.send_signal(signal.SIGTERM)
        log.write_text(server.stderr.read())
        server.wait(timeout=30)
    SQLiteStore.open(db_path, create=False).close()
    stored = b"".join(
        Path(f"{db_path}{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if Path(f"{db_path}{suffix}").exists()
    )
    dumper = sqlite3.connect(db_path)
    audit_dump = "\n".join(dumper.iterdump())
    dumper.close()
    access_log = log.read_text()
    assert access_log.count("/app/valid/") == 5
    for secret in secrets_only:
        assert secret not in listing
        assert secret.encode() not in stored
        assert secret not in audit_dump
        assert secret not in access_log
