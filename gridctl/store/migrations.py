"""Schema migrations: ordered functions, one transaction each, versioned by PRAGMA user_version.

Called by db.connect. Append new migrations; never edit one that has shipped.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

from ..errors import StoreError


def _v1_nodes_observations_events(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE nodes (
            name TEXT PRIMARY KEY,
            pool TEXT NOT NULL,
            provider TEXT NOT NULL,
            host TEXT NOT NULL,
            port INTEGER NOT NULL,
            state TEXT NOT NULL,
            health TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            cordoned INTEGER NOT NULL DEFAULT 0,
            cordon_reason TEXT NOT NULL DEFAULT '',
            failures INTEGER NOT NULL DEFAULT 0,
            good INTEGER NOT NULL DEFAULT 0,
            needs_release INTEGER NOT NULL DEFAULT 0,
            boot_id TEXT,
            last_seen REAL,
            last_good REAL,
            state_since REAL,
            gpus_expected INTEGER NOT NULL DEFAULT 0,
            gpus_seen INTEGER,
            findings TEXT NOT NULL DEFAULT '[]',
            updated_at REAL
        )""")
    conn.execute("""
        CREATE TABLE observations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            node TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
            time REAL NOT NULL,
            contact TEXT NOT NULL,
            health TEXT NOT NULL,
            reason TEXT NOT NULL,
            findings TEXT NOT NULL,
            gpus TEXT NOT NULL,
            max_temp_c REAL,
            duration_s REAL NOT NULL,
            boot_id TEXT,
            node_time INTEGER
        )""")
    conn.execute("CREATE INDEX observations_node ON observations(node, id)")
    conn.execute("""
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            kind TEXT NOT NULL,
            severity TEXT NOT NULL DEFAULT 'info',
            node TEXT,
            job TEXT,
            message TEXT NOT NULL
        )""")
    conn.execute("CREATE INDEX events_time ON events(time)")
    conn.execute("CREATE INDEX events_node ON events(node, time)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _v2_jobs_attempts(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE nodes ADD COLUMN draining INTEGER NOT NULL DEFAULT 0")
    conn.execute("""
        CREATE TABLE jobs (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            class TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            reason_code TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            restarts INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            next_try_at REAL,
            pending_since REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            attempts_made INTEGER NOT NULL DEFAULT 0
        )""")
    conn.execute("""
        CREATE TABLE attempts (
            id TEXT PRIMARY KEY,
            job TEXT NOT NULL REFERENCES jobs(name) ON DELETE CASCADE,
            n INTEGER NOT NULL,
            replica INTEGER NOT NULL,
            node TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            gpus TEXT NOT NULL DEFAULT '[]',
            created_at REAL NOT NULL,
            started_at REAL,
            ended_at REAL,
            exit_code INTEGER,
            pid INTEGER,
            heartbeat_at REAL,
            silent_since REAL,
            outcome TEXT NOT NULL DEFAULT '',
            reaped INTEGER NOT NULL DEFAULT 0,
            UNIQUE (job, n)
        )""")
    conn.execute("CREATE INDEX attempts_job ON attempts(job, n)")
    conn.execute("CREATE INDEX attempts_unreaped ON attempts(reaped, node)")
    conn.execute("CREATE INDEX events_job ON events(job, time)")


def _v3_launches(conn: sqlite3.Connection) -> None:
    """Cloud launch intents: recorded before the API call, so a lost answer is retried with the
    same request id (found by its tag) instead of launching twice."""
    conn.execute("""
        CREATE TABLE launches (
            request_id TEXT PRIMARY KEY,
            pool TEXT NOT NULL,
            count INTEGER NOT NULL,
            created_at REAL NOT NULL,
            done_at REAL,
            error TEXT
        )""")
    conn.execute("CREATE INDEX launches_open ON launches(pool, done_at)")


def _v4_node_cloud(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE nodes ADD COLUMN cloud TEXT NOT NULL DEFAULT '{}'")


def _v5_attempt_serving(conn: sqlite3.Connection) -> None:
    """Services: each attempt's port on its node and its readiness (the ready set routers follow)."""
    conn.execute("ALTER TABLE attempts ADD COLUMN port INTEGER")
    conn.execute("ALTER TABLE attempts ADD COLUMN ready INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE attempts ADD COLUMN ready_since REAL")
    conn.execute("ALTER TABLE attempts ADD COLUMN check_failures INTEGER NOT NULL DEFAULT 0")


def _v6_job_cancel_by(conn: sqlite3.Connection) -> None:
    """Who asked for a cancel (a person, or the demo): the job's reason says so."""
    conn.execute("ALTER TABLE jobs ADD COLUMN cancel_by TEXT NOT NULL DEFAULT 'user'")


def _v7_attempt_key_log_position(conn: sqlite3.Connection) -> None:
    """The secret attempt tokens are derived from (launcher.attempt_token), made once per store,
    and each observation's boot-relative time: where the next kernel-log read starts."""
    conn.execute("CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO secrets (name, value) VALUES ('attempt_key', ?)", (secrets.token_hex(32),))
    conn.execute("ALTER TABLE observations ADD COLUMN uptime_s REAL")


def _v8_passes_job_lifecycle(conn: sqlite3.Connection) -> None:
    """Every pass records itself (who ran it, how, when, how long: `gridctl status` and the
    "nothing is reconciling" warning read them); a user's restart is a counter the pass catches
    up with (so a restart asked mid-pass is never lost); a deleted job leaves its last attempt
    number, so a new job of that name never reuses an attempt id (and dir) a node may still keep."""
    conn.execute("""
        CREATE TABLE passes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            mode TEXT NOT NULL,
            interval_s REAL,
            started_at REAL NOT NULL,
            duration_s REAL NOT NULL,
            nodes INTEGER NOT NULL,
            launches INTEGER NOT NULL DEFAULT 0,
            stops INTEGER NOT NULL DEFAULT 0
        )""")
    conn.execute("CREATE INDEX passes_mode ON passes(mode, id)")
    conn.execute("ALTER TABLE jobs ADD COLUMN restart_asked INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE jobs ADD COLUMN restart_done INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE TABLE deleted_jobs (name TEXT PRIMARY KEY, attempts_made INTEGER NOT NULL,"
                 " deleted_at REAL NOT NULL)")


def _v9_alert_deliveries(conn: sqlite3.Connection) -> None:
    """Alert hooks (gridctl.alerts): each hook's cursor in the event stream, and one delivery row per
    event and hook (pending until a 2xx answer or exit 0; failed after max_tries)."""
    conn.execute("""
        CREATE TABLE alert_hooks (
            hook TEXT PRIMARY KEY,
            label TEXT NOT NULL,
            after_event INTEGER NOT NULL
        )""")
    conn.execute("""
        CREATE TABLE deliveries (
            event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
            hook TEXT NOT NULL REFERENCES alert_hooks(hook) ON DELETE CASCADE,
            state TEXT NOT NULL,
            tries INTEGER NOT NULL DEFAULT 0,
            next_try_at REAL,
            error TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL,
            PRIMARY KEY (event_id, hook)
        )""")
    conn.execute("CREATE INDEX deliveries_open ON deliveries(state, hook, event_id)")
    # events' idempotency keys name the store, so a new store's event ids never repeat an old store's keys
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)", (secrets.token_hex(8),))



def _v10_observation_probe_path(conn: sqlite3.Connection) -> None:
    """Which path each observation came by: `agent` (resident session) or `sh` (one exec of the sh probe)."""
    conn.execute("ALTER TABLE observations ADD COLUMN probe_path TEXT NOT NULL DEFAULT 'sh'")


MIGRATIONS = [_v1_nodes_observations_events, _v2_jobs_attempts, _v3_launches, _v4_node_cloud, _v5_attempt_serving,
              _v6_job_cancel_by, _v7_attempt_key_log_position, _v8_passes_job_lifecycle, _v9_alert_deliveries,
              _v10_observation_probe_path]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path | str = "state") -> int:
    """Bring the schema to SCHEMA_VERSION. Refuses a database newer than this code."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: written by a newer gridctl (schema {version}; this one knows {SCHEMA_VERSION}); "
                         "upgrade gridctl")
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-read under the write lock: another process may have migrated meanwhile
            if conn.execute("PRAGMA user_version").fetchone()[0] != number:
                conn.execute("ROLLBACK")
                continue
            MIGRATIONS[number](conn)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return SCHEMA_VERSION
