"""Open the database: WAL mode, foreign keys, migrations applied on open."""
import datetime as dt
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from store.migrations import apply_migrations
from store.transactions import write_transaction as write_transaction  # re-exported for callers of store.db


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _enable_wal(db: sqlite_utils.Database, deadline_s: float = 30.0) -> None:
    """Switch to WAL, retrying while another connection holds the lock. Why: on a fresh file,
    connections racing to change the journal mode can deadlock on their lock upgrades, and
    SQLite then answers SQLITE_BUSY at once instead of waiting out busy_timeout (seen with six
    threads opening a new database together, about one open in 400)."""
    start = time.monotonic()
    delay = 0.005
    while True:
        try:
            db.enable_wal()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() - start > deadline_s:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


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
    _enable_wal(db)
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA synchronous = NORMAL")
    apply_migrations(db)
    return db
