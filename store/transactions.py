"""`write_transaction`: every write transaction of the store, the migrations' too.

Its own module, below both store/db.py and store/migrations.py: it lived in store/db.py, which
imports store/migrations.py to migrate a database as it opens it, while store/migrations.py
imported store/db.py back for it (an import cycle hidden inside a function).
"""
import contextlib

import sqlite_utils


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database):
    """BEGIN IMMEDIATE: take the write lock before reading, so a read-check-write sequence
    cannot interleave with another process (no lost update, no double migration).
    sqlite-utils calls inside nest as savepoints, and so does a write_transaction inside another.

    Every write transaction of the store goes through here, never a deferred BEGIN (sqlite-utils'
    `db.atomic()`): sqlite-utils reads the table's schema before an insert, which starts a read
    snapshot, and if another connection commits before the insert, SQLite refuses to upgrade the
    stale snapshot to a write at once ("database is locked", without waiting out busy_timeout).
    Two chat turns finishing together lost one's log that way (tests/test_store.py)."""
    if db.conn.in_transaction:
        with db.atomic():  # a savepoint in the outer (write) transaction
            yield db
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
