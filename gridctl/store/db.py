"""Open the state database: WAL, busy_timeout, foreign keys, file mode 0600, migrated.

Called by every command that reads or writes state. Writes go through write_tx (BEGIN IMMEDIATE);
callers never hold a transaction across network I/O.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Iterator

from ..errors import StoreError
from .migrations import migrate


OPENED: list[Path] = []     # stores this process opened, for naming one in an error raised mid-query


def damaged(e: sqlite3.DatabaseError) -> StoreError:
    """An SQLite error met mid-command, in words that name the state file."""
    where = f"state file {OPENED[-1]}" if OPENED else "state file"
    text = str(e)
    if "malformed" in text or "not a database" in text:
        return StoreError(f"{where} is damaged ({text}): move it aside (gridctl starts a new one and relearns the "
                          "nodes) or restore a copy")
    return StoreError(f"{where}: {text}")


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open (and create, migrate) the store at path. Raises StoreError with words, never sqlite's."""
    path = Path(path)
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(path, 0o600)
        elif not path.exists():
            raise StoreError(f"{path}: no state yet (run `gridctl reconcile` first)")
        elif not os.access(path.parent, os.W_OK):
            return _connect_immutable(path)
        conn = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
    except (FileExistsError, NotADirectoryError):
        raise StoreError(f"cannot open state file {path}: a parent of it is not a directory") from None
    except PermissionError as e:
        raise StoreError(f"cannot open state file {path}: permission denied ({e.filename or path})") from None
    except OSError as e:
        raise StoreError(f"cannot open state file {path}: {e.strerror or e}") from None
    except sqlite3.Error as e:
        raise StoreError(f"cannot open state file {path}: {e}") from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, path)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"state file {path} is damaged or not a gridctl state file ({e}): move it aside or "
                         "restore a copy") from None
    except StoreError:
        conn.close()
        raise
    OPENED.append(path)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            with contextlib.suppress(OSError):
                os.chmod(side, 0o600)
    return conn


def _connect_immutable(path: Path) -> sqlite3.Connection:
    """A store on a read-only filesystem (a snapshot, a mounted backup): nobody can write it, so
    SQLite may read it as immutable (WAL needs a writable -shm otherwise). Reads only."""
    from .migrations import SCHEMA_VERSION
    try:
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True, timeout=2, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise StoreError(f"state file {path} is damaged or not a gridctl state file ({e})") from None
    if version != SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"state file {path} is on a read-only filesystem and has schema {version} (this gridctl "
                         f"reads {SCHEMA_VERSION}): open it once where it can be written")
    OPENED.append(path)
    return conn


def connect_readonly(path: Path, timeout_s: float = 2.0) -> sqlite3.Connection:
    """Open an existing store read-only (no migration, no write): for peeks that must never
    change or create state. Raises sqlite3.Error."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


@contextlib.contextmanager
def read_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction (BEGIN DEFERRED): every read inside sees the same snapshot."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


@contextlib.contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One short write transaction (BEGIN IMMEDIATE): all or nothing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
