"""Recovery after a cycle that died: candidates whose decision never took effect.

Contract: `abandoned_candidates(db)` lists them; `drop_abandoned_candidates(db)` rejects each with
a recorded reason and deletes its weights, so its feedback is learned again. Called by the learner
under the cycle lock (learning/learner.py), before anything else.
"""
import logging

from store import adapters
from store.ids import new_id

log = logging.getLogger(__name__)


def abandoned_candidates(db) -> list[dict]:
    """Candidates whose cycle ended before its decision took effect: the learner was killed or
    failed after registering it, before or after the gate judged it (its job row is failed or
    cancelled, or gone). Called under the cycle lock, so no cycle is still deciding them. A
    candidate its cycle left on purpose (no gate installed: that job succeeded) waits for a
    person, as before."""
    out = []
    for a in adapters.list_adapters(db):
        job_id = (a["meta"] or {}).get("job_id")
        if a["status"] != "candidate" or not job_id:
            continue
        row = db.execute("SELECT status FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is None or row[0] not in ("running", "succeeded"):
            out.append(a)
    return out


def drop_abandoned_candidates(db) -> list[int]:
    """Reject each abandoned candidate with a recorded reason and delete its weights. Its
    feedback is then neither pending nor learned, so this cycle learns it again; re-gating
    instead would spend an evaluation on weights trained from older data."""
    from learning.pruning import delete_weights

    dropped = []
    for a in abandoned_candidates(db):
        job_id = a["meta"]["job_id"]
        reason = (f"FAILED: the learning cycle that trained it (job {job_id}) ended before its gate "
                  "decision took effect; its feedback is learned again by a later cycle")
        adapters.record_decision(db, new_id(), a["version"], a["parent_version"], False, [reason], {})
        adapters.reject(db, a["version"])
        try:
            delete_weights(a, "its cycle died before the gate judged it")
        except OSError as e:  # the rejection stands; the files go with the next prune
            log.warning("could not delete the weights of abandoned v%d: %s", a["version"], e)
        dropped.append(a["version"])
    return dropped
