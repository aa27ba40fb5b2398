"""The SQLite state store. Every SQL statement lives in store/queries.py behind a named operation."""

from .db import connect, connect_readonly, read_tx, write_tx

__all__ = ["connect", "connect_readonly", "read_tx", "write_tx"]
