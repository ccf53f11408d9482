"""The search-key vectors of corrections the user deleted, so that recall and routing can still
tell a question about what was taken back from one about a neighbouring fact
(assistant/matching.py MatchPolicy.taken_back_floor).

Only vectors are kept, never the text: a deleted correction's words are gone with it. Vectors
are kept per embedding model (another model's vectors mean nothing to it). Corrections taken
back but still stored (a don't-learn conversation, quarantined by a rollback) need none: their
keys are computed from their text, and are gone when the user takes the take-back back.

Contract: `keep(db, embedder, dim, blob)` stores one correction's keys (float32 rows of `dim`);
`kept(db, embedder)` -> [(dim, blob)] in the order kept.
"""
from store.db import now_iso
from store.transactions import write_transaction


def keep(db, embedder: str, dim: int, blob: bytes) -> None:
    with write_transaction(db):
        db.execute("INSERT INTO taken_back_keys (embedder, dim, vectors, created_at) VALUES (?, ?, ?, ?)",
                   [embedder, dim, blob, now_iso()])


def kept(db, embedder: str) -> list[tuple[int, bytes]]:
    return [(r[0], r[1]) for r in db.execute(
        "SELECT dim, vectors FROM taken_back_keys WHERE embedder = ? ORDER BY id", [embedder])]
