"""Open the database: WAL mode, foreign keys, migrations applied on open."""
import contextlib
import datetime as dt
import sqlite3
from pathlib import Path

import sqlite_utils

from store.migrations import apply_migrations


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database):
    """BEGIN IMMEDIATE: take the write lock before reading, so a read-check-write sequence
    cannot interleave with another process (no lost update, no double migration).
    sqlite-utils calls inside nest as savepoints."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) the assistant database at `path` and migrate it.

    One connection per thread: sqlite3 connections are not shared across threads here, so
    callers that serve requests open their own (opening is cheap, migrations are no-ops).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA synchronous = NORMAL")
    apply_migrations(db)
    return db
