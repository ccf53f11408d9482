"""The one SQLite file that remembers everything.

`store` imports neither `assistant` nor `learning`; both import `store`.
Every module here takes an open `sqlite_utils.Database` (see `store.db.open_db`).
"""
from store.db import now_iso, open_db
from store.ids import new_id

__all__ = ["open_db", "new_id", "now_iso"]
