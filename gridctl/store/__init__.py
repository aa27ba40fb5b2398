"""The SQLite state store. Every SQL statement lives in store/queries.py behind a named operation."""

from .db import connect, write_tx

__all__ = ["connect", "write_tx"]
