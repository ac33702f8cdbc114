"""Server-side TLS over memory buffers: raw bytes in and out, no socket (as asyncio does).

A connection hands `TlsSession` the bytes it reads and sends what `take_output` gives;
the session decrypts, encrypts and runs the handshake in between. Two reasons for this
shape rather than `ssl.SSLSocket`:

- No TLS state exists until the client's whole first record (its ClientHello) has
  arrived: until then a connection costs a buffer of a few hundred bytes, not the tens of
  KiB of an OpenSSL session. Twenty thousand clients that stall half-way through a
  ClientHello (or send nothing) held most of a gigabyte with wrapped sockets.
- Reads and writes stay plain non-blocking socket calls, so the event loop handles TLS
  and plain connections alike, and a handshake advances only as bytes arrive.
"""

from __future__ import annotations

import ssl

# A TLS record carries at most 2^14 bytes of plaintext, plus room for its protection.
MAX_RECORD = 2**14 + 2048
_HANDSHAKE = 0x16
_HEADER = 5


class TlsFailure(Exception):
    """The peer does not speak TLS, or its TLS failed: close the connection."""


class TlsSession:
    """One server-side TLS session, fed and drained by its connection."""

    __slots__ = ("_context", "_hello", "_incoming", "_outgoing", "_ssl", "handshaking")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._hello = bytearray()  # the first record, gathered before any TLS state
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject | None = None
        self.handshaking = True

    @property
    def started(self) -> bool:
        """True once the session exists (the whole first record has arrived)."""
        return self._ssl is not None

    def receive(self, raw: bytes) -> None:
        """Bytes read from the socket."""
        if self._ssl is None:
            self._hello += raw
            if len(self._hello) > _HEADER + MAX_RECORD:
                raise TlsFailure("first TLS record too long")
        else:
            self._incoming.write(raw)

    def hello_complete(self) -> bool:
        """Whether the client's whole first record is here; TlsFailure if it is not TLS."""
        hello = self._hello
        if hello and hello[0] != _HANDSHAKE:
            raise TlsFailure("not a TLS handshake")
        if len(hello) < _HEADER:
            return False
        length = int.from_bytes(hello[3:5], "big")
        if length > MAX_RECORD:
            raise TlsFailure("first TLS record too long")
        return len(hello) >= _HEADER + length

    def start(self) -> None:
        """Create the TLS session and give it the bytes gathered so far."""
        self._ssl = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._incoming.write(bytes(self._hello))
        self._hello = bytearray()

    def advance(self) -> bytes:
        """Run the handshake as far as the bytes allow, then decrypt what has arrived."""
        session = self._ssl
        assert session is not None
        chunks = []
        try:
            if self.handshaking:
                session.do_handshake()
                self.handshaking = False
            while True:
                chunk = session.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            pass  # the client closed TLS; the socket's end follows
        except ssl.SSLError as error:
            raise TlsFailure(error.reason or str(error)) from None
        return b"".join(chunks)

    def encrypt(self, plain: bytes) -> None:
        """Encrypt bytes to send (they come out of `take_output`)."""
        session = self._ssl
        assert session is not None
        view = memoryview(plain)
        try:
            while view:
                written = session.write(view)
                view = view[written:]
        except ssl.SSLError as error:
            raise TlsFailure(error.reason or str(error)) from None

    def take_output(self) -> bytes:
        """What TLS wants sent now (handshake messages, encrypted answers)."""
        return self._outgoing.read()
