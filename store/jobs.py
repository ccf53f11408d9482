"""The jobs table: one row per learning cycle with its stage, progress, status and error.

Only one cycle runs at a time; the guarantee comes from a file lock held by the learner
process (released by the OS if it dies), and the row records what happened.
"""
import json
import os

from store.db import now_iso
from store.ids import new_id


def start_job(db, kind: str = "learn") -> str:
    jid = new_id()
    now = now_iso()
    db["jobs"].insert({"id": jid, "kind": kind, "status": "running", "stage": "starting",
                       "progress": 0.0, "pid": os.getpid(), "started_at": now,
                       "heartbeat_at": now, "cancel_requested": 0, "losses_json": "[]"})
    return jid


def update_job(db, job_id: str, **fields) -> None:
    if "losses" in fields:
        fields["losses_json"] = json.dumps(fields.pop("losses"))
    if "result" in fields:
        fields["result_json"] = json.dumps(fields.pop("result"))
    fields["heartbeat_at"] = now_iso()
    db["jobs"].update(job_id, fields)


def finish_job(db, job_id: str, status: str, error: str | None = None, result: dict | None = None):
    update_job(db, job_id, status=status, error=error, ended_at=now_iso(),
               result=result or {}, progress=1.0 if status == "succeeded" else None)


def get_job(db, job_id: str) -> dict:
    row = next(iter(db["jobs"].rows_where("id = ?", [job_id])))
    row["losses"] = json.loads(row.pop("losses_json") or "[]")
    row["result"] = json.loads(row.pop("result_json") or "{}")
    return row


def latest_job(db) -> dict | None:
    row = db.execute("SELECT id FROM jobs ORDER BY id DESC LIMIT 1").fetchone()
    return get_job(db, row[0]) if row else None


def request_cancel(db, job_id: str) -> None:
    db["jobs"].update(job_id, {"cancel_requested": 1})


def cancel_requested(db, job_id: str) -> bool:
    return bool(db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", [job_id]).fetchone()[0])


def mark_orphans(db, alive_pids: set[int] | None = None) -> int:
    """A running job whose process is gone was killed: mark it failed so the record is honest."""
    n = 0
    for row in db["jobs"].rows_where("status = 'running'"):
        pid = row["pid"]
        alive = _pid_alive(pid) if alive_pids is None else pid in alive_pids
        if not alive:
            finish_job(db, row["id"], "failed", error="the learner process died (killed or crashed)")
            n += 1
    return n


def learner_running(db) -> bool:
    """Is a cycle running now: a job row says so and its process is alive (a dead learner's row
    reads running until `mark_orphans`)?"""
    return any(_pid_alive(pid) for (pid,) in db.execute("SELECT pid FROM jobs WHERE status = 'running'"))


def last_successful_job(db) -> dict | None:
    row = db.execute("SELECT id FROM jobs WHERE status = 'succeeded' ORDER BY id DESC LIMIT 1").fetchone()
    return get_job(db, row[0]) if row else None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
