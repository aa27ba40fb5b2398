"""The SQLite state store. Every SQL statement lives here, behind named operations: store/queries.py,
and store/deliveries.py for alert hook deliveries."""

from .db import connect, connect_readonly, read_tx, write_tx

__all__ = ["connect", "connect_readonly", "read_tx", "write_tx"]
