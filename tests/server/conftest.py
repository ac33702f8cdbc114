"""Fixtures for the server tests: `replicas` starts `tokencli serve` subprocesses
(tests/replicas.py)."""

from replicas import replicas

__all__ = ["replicas"]
