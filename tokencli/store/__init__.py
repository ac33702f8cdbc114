"""Stores: where tokens live. SQLite by default; see base.py for the contract."""

from tokencli.store.sqlite import AuditEvent, Counts, IdCollisionError, TokenRecord
from tokencli.store.sqlite import SQLiteStore as Store

__all__ = ["AuditEvent", "Counts", "IdCollisionError", "Store", "TokenRecord"]
