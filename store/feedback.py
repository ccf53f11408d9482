"""Feedback facts: votes, reasons, corrections, retries. Handlers write facts only;
`learning.datasets` turns them into training rows.

Supersession: a correction replaced by a later one carries the later one's id in
`superseded_by`, decided once, when the later one is recorded, and read by recall, routing,
training, the gate and every list of corrections. The store links a correction of the same
question (`question_key`) itself; `assistant/supersede.py` links corrections of other questions
about the same thing, by meaning, through `supersede`.
"""
from store.conversations import NotFound, get_turn
from store.db import now_iso
from store.ids import new_id
from store.text import question_key
from store.transactions import write_transaction

KINDS = ("up", "down", "correction", "retry")
MAX_TEXT = 20_000


def add_feedback(db, turn_id: str, kind: str, *, reason: str | None = None,
                 correction: str | None = None, retry_turn_id: str | None = None) -> str:
    """Record one feedback fact about a logged turn. Raises NotFound for an unknown turn."""
    if kind not in KINDS:
        raise ValueError(f"feedback kind must be one of {KINDS}, got {kind!r}")
    get_turn(db, turn_id)
    if kind == "correction":
        if not correction or not correction.strip():
            raise ValueError("a correction needs the corrected answer text")
        if len(correction) > MAX_TEXT:
            raise ValueError(f"a correction is limited to {MAX_TEXT} characters, got {len(correction)}")
        correction = correction.strip()
    if kind == "retry" and not retry_turn_id:
        raise ValueError("a retry needs the id of the new turn")
    if reason is not None and len(reason) > MAX_TEXT:
        raise ValueError(f"a reason is limited to {MAX_TEXT} characters")
    fid = new_id()
    with write_transaction(db):
        db["feedback"].insert({
            "id": fid, "turn_id": turn_id, "kind": kind, "reason": reason, "correction": correction,
            "retry_turn_id": retry_turn_id, "quarantined": 0, "created_at": now_iso(),
        })
        if kind == "correction":
            _supersede_same_question(db, fid)
    return fid


def _supersede_same_question(db, fid: str) -> None:
    """Link the live corrections of the same question as `fid`'s to it (the caller's transaction)."""
    message = db.execute("SELECT t.user_message FROM feedback f JOIN turns t ON t.id = f.turn_id WHERE f.id = ?",
                         [fid]).fetchone()[0]
    key = question_key(message)
    same = [r[0] for r in db.execute(
        "SELECT f.id, t.user_message FROM feedback f JOIN turns t ON t.id = f.turn_id "
        "WHERE f.kind = 'correction' AND f.superseded_by IS NULL AND f.id < ?", [fid]).fetchall()
        if question_key(r[1]) == key]
    _link(db, same, fid)


def supersede(db, older_ids: list[str], by: str) -> list[str]:
    """Mark the corrections `older_ids` as replaced by the correction `by` (newer than each of them).
    Returns those newly marked."""
    with write_transaction(db):
        return _link(db, older_ids, by)


def _link(db, older_ids: list[str], by: str) -> list[str]:
    older = [f for f in dict.fromkeys(older_ids) if f < by]
    marks = ",".join("?" * len(older))
    if not older:
        return []
    fresh = [r[0] for r in db.execute(f"SELECT id FROM feedback WHERE id IN ({marks}) AND kind = 'correction' "
                                      "AND superseded_by IS NULL", older).fetchall()]
    # what the older ones superseded is now replaced by `by` too: the chain stays one step deep
    db.execute(f"UPDATE feedback SET superseded_by = ? WHERE id IN ({marks}) OR superseded_by IN ({marks})",
               [by, *older, *older])
    return fresh


def replaced_by(db, feedback_id: str) -> list[str]:
    """The corrections `feedback_id` replaced."""
    return [r[0] for r in db.execute("SELECT id FROM feedback WHERE superseded_by = ? ORDER BY id", [feedback_id])]


def superseded_by(db, feedback_ids: list[str]) -> dict[str, str]:
    """{feedback id: the correction that replaced it} for those of `feedback_ids` replaced."""
    if not feedback_ids:
        return {}
    marks = ",".join("?" * len(feedback_ids))
    return dict(db.execute(f"SELECT id, superseded_by FROM feedback WHERE id IN ({marks}) "
                           "AND superseded_by IS NOT NULL", list(feedback_ids)).fetchall())


def corrections(db, feedback_ids) -> list[dict]:
    """The corrections among `feedback_ids`, oldest first: {"feedback_id", "prompt" (the question
    the user corrected), "correction"}; ids that are not corrections (a like) or gone are left out."""
    ids = list(feedback_ids)
    if not ids:
        return []
    rows = db.query(f"SELECT f.id, f.correction, t.user_message FROM feedback f JOIN turns t ON t.id = f.turn_id "
                    f"WHERE f.kind = 'correction' AND f.id IN ({','.join('?' * len(ids))}) ORDER BY f.id", ids)
    return [{"feedback_id": r["id"], "prompt": r["user_message"], "correction": r["correction"]} for r in rows]


def set_reason(db, feedback_id: str, reason: str) -> None:
    """Attach the reason a user typed after a one-click vote (so one vote stays one fact)."""
    if len(reason) > MAX_TEXT:
        raise ValueError(f"a reason is limited to {MAX_TEXT} characters")
    db["feedback"].update(feedback_id, {"reason": reason})


def feedback_for_turn(db, turn_id: str) -> list[dict]:
    return list(db["feedback"].rows_where("turn_id = ?", [turn_id], order_by="id"))


def recent_feedback(db, limit: int = 20) -> list[dict]:
    return list(db.query(
        "SELECT f.*, t.user_message, t.reply FROM feedback f JOIN turns t ON t.id = f.turn_id "
        "ORDER BY f.id DESC LIMIT ?", [limit]))


def feedback_since(db, after_id: str | None) -> int:
    """How many learnable feedback facts arrived after `after_id` (None: ever)."""
    sql = "SELECT count(*) FROM feedback WHERE quarantined = 0"
    args = []
    if after_id:
        sql += " AND id > ?"
        args.append(after_id)
    return db.execute(sql, args).fetchone()[0]


def quarantine(db, feedback_ids: list[str]) -> int:
    """Exclude feedback from every later learning cycle (used by a rollback)."""
    if not feedback_ids:
        return 0
    marks = ",".join("?" * len(feedback_ids))
    with write_transaction(db):
        cur = db.execute(f"UPDATE feedback SET quarantined = 1 WHERE id IN ({marks})", feedback_ids)
    return cur.rowcount


def taken_back(db, feedback_ids: list[str]) -> list[str]:
    """Those of `feedback_ids` the user took back: deleted (with their conversation), quarantined,
    from a conversation marked don't-learn, or replaced by a later correction. One indexed query: the chat asks it per turn that
    a correction's expert would answer (assistant/chat.py)."""
    if not feedback_ids:
        return []
    marks = ",".join("?" * len(feedback_ids))
    kept = {r[0] for r in db.execute(
        f"SELECT f.id FROM feedback f JOIN turns t ON t.id = f.turn_id JOIN conversations c ON c.id = t.conversation_id "
        f"WHERE f.id IN ({marks}) AND f.quarantined = 0 AND c.no_learn = 0 AND f.superseded_by IS NULL",
        list(feedback_ids))}
    return [f for f in feedback_ids if f not in kept]


def withdraw_retry(db, turn_id: str, retry_turn_id: str) -> int:
    """Take back the "retry" fact linking `turn_id` to `retry_turn_id`: the retry gave the same
    answer again, which says nothing about the earlier one being worse (assistant/ui_chat.py)."""
    with write_transaction(db):
        return db.execute("DELETE FROM feedback WHERE turn_id = ? AND kind = 'retry' AND retry_turn_id = ?",
                          [turn_id, retry_turn_id]).rowcount


def forget(db, feedback_id: str) -> list[int]:
    """Delete one feedback fact (the user forgot it: recall and later datasets no longer see it).
    Returns the adapter versions whose weights were trained with it; their link rows stay, so
    the page can still say which versions contain it."""
    with write_transaction(db):
        versions = [r[0] for r in db.execute(
            "SELECT version FROM adapter_feedback WHERE feedback_id = ? ORDER BY version", [feedback_id])]
        if not db.execute("DELETE FROM feedback WHERE id = ?", [feedback_id]).rowcount:
            raise NotFound(f"feedback {feedback_id} does not exist")
    return versions
