"""The adapter registry: versions, their status, lineage and metrics.

Status: candidate -> active | rejected; active -> retired (when another version is promoted).
Promotion and rollback are single transactions that move the one ACTIVE pointer; a partial
unique index makes two active versions impossible even if two processes race.
"""
import json

from store.conversations import NotFound
from store.db import now_iso
from store.transactions import write_transaction

STATUSES = ("candidate", "active", "rejected", "retired")
MAX_VERSION = 2**63 - 1  # SQLite's largest INTEGER


def parse_version(text: str) -> int:
    """A version number as a user types it: ASCII digits only. `int()` would also read "+1",
    " 1" and "١" (an Arabic-Indic digit) as 1, and a number past SQLite's INTEGER overflows at
    the query. Raises ValueError saying what a version looks like."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_VERSION:
        raise ValueError(f"an adapter version is a whole number from 0 to {MAX_VERSION} written in "
                         f"the digits 0-9, not {text!r}")
    return int(text)


def _decode(row: dict | None) -> dict | None:
    if row is None:
        return None
    row = dict(row)
    row["meta"] = json.loads(row.pop("meta_json") or "{}")
    row["metrics"] = json.loads(row.pop("metrics_json") or "{}")
    return row


def next_version(db) -> int:
    return (db.execute("SELECT max(version) FROM adapters").fetchone()[0] or 0) + 1


def register_candidate(db, version: int, path: str, parent_version: int | None, meta: dict,
                       feedback_ids: list[str], n_corrections: int, n_votes: int) -> int:
    """Record a freshly trained adapter (already written atomically to `path`) as a candidate."""
    with write_transaction(db):
        db["adapters"].insert({
            "version": version, "status": "candidate", "parent_version": parent_version,
            "path": str(path), "created_at": now_iso(), "status_changed_at": now_iso(),
            "meta_json": json.dumps(meta), "metrics_json": "{}",
            "n_corrections": n_corrections, "n_votes": n_votes,
        })
        db["adapter_feedback"].insert_all(
            [{"version": version, "feedback_id": f} for f in sorted(set(feedback_ids))])
    return version


def set_meta(db, version: int, meta: dict) -> None:
    """Replace a candidate's recorded meta.json (learning/repair.py rewrote it before the gate)."""
    with write_transaction(db):
        db.execute("UPDATE adapters SET meta_json = ? WHERE version = ?", [json.dumps(meta), version])


def unlearn_feedback(db, version: int, feedback_ids: list[str]) -> int:
    """The gate found `version` did not learn `feedback_ids`: they are no longer among what it
    learned, so they stay pending (recalled) and the next cycle teaches them again."""
    if not feedback_ids:
        return 0
    marks = ",".join("?" * len(feedback_ids))
    with write_transaction(db):
        return db.execute(f"DELETE FROM adapter_feedback WHERE version = ? AND feedback_id IN ({marks})",
                          [version, *feedback_ids]).rowcount


def get_adapter(db, version: int) -> dict:
    row = next(iter(db["adapters"].rows_where("version = ?", [version])), None)
    if row is None:
        raise NotFound(f"adapter version {version} does not exist")
    return _decode(row)


def list_adapters(db) -> list[dict]:
    return [_decode(r) for r in db["adapters"].rows_where(order_by="version")]


def active_version(db) -> int | None:
    """The live version, or None when the base model alone serves. Cheap: polled per request."""
    row = db.execute("SELECT version FROM adapters WHERE status = 'active'").fetchone()
    return row[0] if row else None


def active_adapter(db) -> dict | None:
    v = active_version(db)
    return None if v is None else get_adapter(db, v)


def set_metrics(db, version: int, metrics: dict) -> None:
    get_adapter(db, version)
    db["adapters"].update(version, {"metrics_json": json.dumps(metrics)})


def reject(db, version: int) -> None:
    with write_transaction(db):
        db.execute(
            "UPDATE adapters SET status = 'rejected', status_changed_at = ? WHERE version = ? "
            "AND status = 'candidate'", [now_iso(), version])


def activate(db, version: int | None) -> None:
    """Make `version` the one active adapter (None: base model alone), in one transaction.

    Used for promotion (candidate -> active) and rollback (an earlier version -> active):
    the incumbent becomes retired. Raises NotFound for an unknown version.
    """
    if version is not None:
        get_adapter(db, version)
    now = now_iso()
    with write_transaction(db):
        db.execute("UPDATE adapters SET status = 'retired', status_changed_at = ? "
                   "WHERE status = 'active'", [now])
        if version is not None:
            db.execute("UPDATE adapters SET status = 'active', status_changed_at = ? "
                       "WHERE version = ?", [now, version])


def lineage_feedback(db, version: int) -> list[str]:
    """The feedback ids that trained `version` (its own cycle, not its ancestors')."""
    return [r[0] for r in db.execute(
        "SELECT feedback_id FROM adapter_feedback WHERE version = ? ORDER BY feedback_id",
        [version]).fetchall()]


def version_that_learned(db, feedback_id: str) -> int | None:
    row = db.execute("SELECT min(version) FROM adapter_feedback af JOIN adapters a USING (version) "
                     "WHERE af.feedback_id = ? AND a.status IN ('active', 'retired')",
                     [feedback_id]).fetchone()
    return row[0] if row else None


def record_decision(db, decision_id: str, candidate: int, incumbent: int | None, passed: bool,
                    reasons: list[str], evidence: dict) -> None:
    db["gate_decisions"].insert({
        "id": decision_id, "candidate_version": candidate, "incumbent_version": incumbent,
        "passed": int(passed), "reasons_json": json.dumps(reasons),
        "evidence_json": json.dumps(evidence), "created_at": now_iso()})


def decisions_for(db, version: int) -> list[dict]:
    rows = db["gate_decisions"].rows_where("candidate_version = ?", [version], order_by="id")
    return [{**r, "reasons": json.loads(r["reasons_json"]),
             "evidence": json.loads(r["evidence_json"])} for r in rows]
