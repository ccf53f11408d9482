"""What a version's weights still hold that the user took back: the warning shown before and
after making that version live again (promote or roll back, in the Versions tab and with
`assistant adapters`).

A version's weights hold the feedback of its own cycle (its adapter_feedback rows), every row
it trained on (meta "trained_on": a refit relearns old feedback without linking it) and, unless
it was a refit (a fresh LoRA), whatever its parent's weights held, since it continued from
them. A version trained before "trained_on" was recorded is taken to hold its parent's even
when it was a refit: a warning too many is better than a forgotten fact said again unannounced.

Taken back: forgotten (the fact deleted, its words gone), its conversation deleted or marked
don't-learn, quarantined by a rollback, or replaced by a later correction
(`store.feedback.taken_back`, the rule the chat uses to stop a correction's expert).
"""
from store import adapters, feedback, jobs

REPLACED = "replaced by a later correction"


def held(db, version: int | None) -> dict[str, int]:
    """feedback id -> the version (of `version`'s line) that learned it, for everything
    `version`'s weights hold; empty for the base model."""
    out: dict[str, int] = {}
    seen = set()
    while version is not None and version not in seen:
        seen.add(version)
        row = adapters.get_adapter(db, version)
        meta = row.get("meta") or {}
        for f in [*adapters.lineage_feedback(db, version), *meta.get("trained_on", ())]:
            out.setdefault(f, version)
        if meta.get("refit") and "trained_on" in meta:
            break  # a fresh LoRA: the parent's weights are not in it, and "trained_on" says what is
        version = row["parent_version"]
    return out


def _how(db, feedback_id: str) -> tuple[str, str | None]:
    """(how it was taken back, the question it answered or None when its words are gone)."""
    row = db.execute(
        "SELECT f.quarantined, f.superseded_by, c.no_learn, t.user_message FROM feedback f "
        "JOIN turns t ON t.id = f.turn_id JOIN conversations c ON c.id = t.conversation_id WHERE f.id = ?",
        [feedback_id]).fetchone()
    if row is None:
        return "forgotten", None
    quarantined, superseded, no_learn, question = row
    if quarantined:
        return "quarantined by a rollback", question
    if no_learn:
        return "its conversation is marked don't-learn", question
    if superseded:
        return REPLACED, question
    return "taken back", question


def taken_back_in(db, version: int | None) -> list[dict]:
    """What `version`'s weights hold that was taken back since: [{feedback_id, learned_by, how,
    question}], in the order the versions learned them."""
    holds = held(db, version)
    gone = feedback.taken_back(db, sorted(holds))
    out = [{"feedback_id": f, "learned_by": holds[f], **dict(zip(("how", "question"), _how(db, f), strict=True))}
           for f in gone]
    return sorted(out, key=lambda x: (x["learned_by"], x["feedback_id"]))


def taken_back_now(db) -> list[dict]:
    """`taken_back_in` the active version."""
    return taken_back_in(db, adapters.active_version(db))


def unacted(db, now: list[dict] | None = None) -> list[str]:
    """The ids of `now` (`taken_back_now`, read when not given) that no cycle has acted on yet: a
    take-back is something to learn, so it starts a cycle even without new feedback
    (learning/control.py), and that cycle drops the experts it concerns and refits or continues
    the shared adapter without it. Every finished cycle records the ids it saw (its result's
    "taken_back_seen"), so a take-back the shared adapter keeps holding (a continued LoRA cannot
    unlearn) does not start cycle after cycle."""
    last = jobs.last_successful_job(db)
    seen = set(((last or {}).get("result") or {}).get("taken_back_seen", ()))
    # a replaced correction comes with its replacement, new feedback that waits for the usual batch
    return [i["feedback_id"] for i in (taken_back_now(db) if now is None else now)
            if i["feedback_id"] not in seen and i["how"] != REPLACED]


def _clip(text: str, limit: int = 50) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def warning(db, version: int | None) -> str:
    """One paragraph in words, or "" when `version` holds nothing taken back."""
    items = taken_back_in(db, version)
    if not items:
        return ""
    named = [f"“{_clip(i['question'])}” ({i['how']})" for i in items if i["question"]]
    forgotten = sum(i["question"] is None for i in items)
    if forgotten:
        named.append(f"{forgotten} item{'s' * (forgotten != 1)} you forgot")
    return (f"⚠ v{version}'s weights were trained with feedback you took back since: {'; '.join(named)}. "
            f"Its answers may still use it while v{version} is live.")


def marked(db, version: int) -> bool:
    """Does `version` hold anything taken back (for a ⚠ beside its name in a picker)?"""
    return bool(feedback.taken_back(db, sorted(held(db, version))))
