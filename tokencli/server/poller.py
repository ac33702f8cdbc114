"""Readiness of many sockets: epoll where there is one, `selectors` elsewhere.

The event loop asks thousands of times a second which sockets are ready. `selectors`
builds a SelectorKey and a tuple per ready socket on every call; on Linux this class
asks epoll directly and hands back the objects registered, which measured about a
microsecond less per request on the hot path (docs/benchmarks.md). The interface is the
small part of `selectors` the server uses: register, modify, unregister, poll.
"""

from __future__ import annotations

import select
import selectors
from typing import Any

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Poller:
    """Watches sockets for reading and writing; `poll` returns (object, events) pairs."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._fallback = selectors.DefaultSelector() if self._epoll is None else None
        self._objects: dict[int, Any] = {}

    def register(self, sock: Any, events: int, data: Any) -> None:
        """Watch `sock` for `events`; `poll` reports it as `data`."""
        if self._epoll is not None:
            self._epoll.register(sock.fileno(), _to_epoll(events))
            self._objects[sock.fileno()] = data
        else:
            assert self._fallback is not None
            self._fallback.register(sock, events, data)

    def modify(self, sock: Any, events: int, data: Any) -> None:
        """Watch `sock` for other events."""
        if self._epoll is not None:
            self._epoll.modify(sock.fileno(), _to_epoll(events))
            self._objects[sock.fileno()] = data
        else:
            assert self._fallback is not None
            self._fallback.modify(sock, events, data)

    def unregister(self, sock: Any) -> None:
        """Stop watching `sock` (before it is closed)."""
        if self._epoll is not None:
            fileno = sock.fileno()
            self._objects.pop(fileno, None)
            self._epoll.unregister(fileno)
        else:
            assert self._fallback is not None
            self._fallback.unregister(sock)

    def poll(self, timeout: float) -> list[tuple[Any, int]]:
        """The registered objects that are ready, with READ and/or WRITE."""
        if self._epoll is None:
            assert self._fallback is not None
            return [(key.data, mask) for key, mask in self._fallback.select(timeout)]
        objects = self._objects
        ready = []
        for fileno, mask in self._epoll.poll(timeout):
            found = objects.get(fileno)
            if found is not None:
                # An error or hang-up reads as readable: the read then meets it.
                events = READ if mask & _READ_LIKE else 0
                if mask & select.EPOLLOUT:
                    events |= WRITE
                ready.append((found, events))
        return ready

    def close(self) -> None:
        """Release the poller."""
        if self._epoll is not None:
            self._epoll.close()
        elif self._fallback is not None:
            self._fallback.close()


_READ_LIKE = (
    getattr(select, "EPOLLIN", 1) | getattr(select, "EPOLLERR", 8) | getattr(select, "EPOLLHUP", 16)
)


def _to_epoll(events: int) -> int:
    mask = 0
    if events & READ:
        mask |= select.EPOLLIN
    if events & WRITE:
        mask |= select.EPOLLOUT
    return mask
