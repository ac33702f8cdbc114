"""tokencli: issue, check, revoke, list and purge short-lived tokens in one SQLite file."""

__version__ = "0.1.0"
