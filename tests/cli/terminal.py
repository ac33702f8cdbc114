"""A program on a real pseudo-terminal, read as it prints: for the tests of what a person
at a terminal sees (a shell's TAB, a progress bar, a question)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from typing import IO, Any

# Waits are for events (a pattern appearing, the program ending); this bound only turns a
# hang into a failure, on machines as slow and shared as they come.
PATIENCE_SECONDS = 120.0


class Terminal:
    """`argv` with a pseudo-terminal as its controlling terminal and, unless told
    otherwise, as its stdin, stdout and stderr."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        columns: int = 200,
        rows: int = 50,
    ) -> None:
        self.leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.process = subprocess.Popen(
            argv,
            stdin=follower if stdin is None else stdin,
            stdout=follower if stdout is None else stdout,
            stderr=follower,
            env=env,
            start_new_session=True,  # so the pty becomes its controlling terminal
        )
        os.close(follower)
        self.output = b""
        self._closed = False

    def send(self, data: bytes) -> None:
        """Type `data`."""
        os.write(self.leader, data)

    def _read(self, deadline: float) -> bool:
        """Read what is there within the deadline; False once the program closed the pty."""
        ready, _, _ = select.select([self.leader], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            chunk = os.read(self.leader, 65536)
        except OSError:  # EIO: every descriptor of the follower side is closed
            chunk = b""
        if not chunk:
            self._closed = True
            return False
        self.output += chunk
        return True

    def expect(self, pattern: bytes | re.Pattern[bytes], start: int = 0) -> re.Match[bytes]:
        """Read until `pattern` appears in the output after offset `start`; its match."""
        compiled = re.compile(re.escape(pattern)) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + PATIENCE_SECONDS
        while True:
            found = compiled.search(self.output, start)
            if found is not None:
                return found
            if self._closed or time.monotonic() > deadline or not self._read(deadline):
                found = compiled.search(self.output, start)
                if found is not None:
                    return found
                raise AssertionError(
                    f"{compiled.pattern!r} never appeared; the terminal showed:\n"
                    + self.output.decode(errors="replace")
                )

    def finish(self) -> int:
        """Read to the end, wait for the program and return its exit status."""
        deadline = time.monotonic() + PATIENCE_SECONDS
        while not self._closed and time.monotonic() < deadline:
            self._read(deadline)
        try:
            return self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            self.close()

    def close(self) -> None:
        """Kill the program if it still runs, and close the terminal."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=PATIENCE_SECONDS)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self.leader >= 0:
            os.close(self.leader)
            self.leader = -1

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
