"""The "What it knows about me" tab: every correction and liked answer the assistant learns
from, newest first, searchable, each with its state in words; forget one item or its whole
conversation; edit one.

Contract: plain functions of a Runtime (tests call them directly), like the other ui_* modules.
The states of corrections come from `learning.versions.correction_states` (imported inside:
without the learner the tab still lists everything, state unknown). Raw ids appear only in the
details table. Times are shown in the browser's time zone (`tz`, an IANA name the page reads
with Intl on load; the server's zone when it is missing or unknown).

Forgetting an item deletes that feedback fact (`store.feedback.forget`): recall stops using it
at once (its index re-reads the store on the next turn) and later cycles build their data
without it. Adapter versions already trained with it keep it in their weights; the notice
names them. Forgetting a conversation marks it don't-learn, which recall, training and the
states already honour. Editing writes a new correction of the same answer through
`Runtime.record_feedback`, the chat's own path: it supersedes the earlier correction (listed as
such) and recall uses it at once; an edited liked answer is a correction now, so the like goes.
"""
import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import gradio as gr
import pandas as pd

from store import adapters, conversations, feedback

EMPTY = ("**Nothing yet.** Correct an answer in the chat (✎) or like one (👍): each one is listed "
         "here with what became of it.")
KIND_WORDS = {"correction": "your correction", "up": "an answer you liked"}


def _zone(tz: str | None):
    try:
        return ZoneInfo(tz) if tz else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local_time(iso: str | None, tz: str | None = None, now: dt.datetime | None = None) -> str:
    """'today 14:05', 'yesterday 09:12', 'Tue 3 Dec 14:05', '3 Dec 2024 14:05' in the user's zone."""
    if not iso:
        return ""
    t = dt.datetime.fromisoformat(iso)
    t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    zone = _zone(tz)
    t = t.astimezone(zone) if zone else t.astimezone()
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(t.tzinfo)
    days = (now.date() - t.date()).days
    clock = t.strftime("%H:%M")
    if days == 0:
        return f"today {clock}"
    if days == 1:
        return f"yesterday {clock}"
    if 0 < days < 300:
        return f"{t:%a} {t.day} {t:%b} {clock}"
    return f"{t.day} {t:%b %Y} {clock}"


def _lineage(db, version: int | None) -> set[int]:
    out = set()
    while version is not None and version not in out:
        out.add(version)
        version = adapters.get_adapter(db, version)["parent_version"]
    return out


def _trained_by(db) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in db.query("SELECT feedback_id, version FROM adapter_feedback ORDER BY version"):
        out.setdefault(r["feedback_id"], []).append(r["version"])
    return out


def _correction_state(s: dict) -> str:
    """A correction_states row in words ("learned by v2, which is live", ...)."""
    if s["state"] == "learned":
        return s["detail"]
    if s["state"] == "pending":
        return "waiting for the next learning cycle" if s["detail"].startswith("waits") else s["detail"]
    if s["state"] == "not learned":
        return f"not learned: {s['detail']}"
    return s["detail"]  # superseded: 'superseded by a later correction: "..."'


def _like_state(r: dict, trained: list[int], statuses: dict[int, str], live: set[int]) -> str:
    """A liked answer's state, by the same rules as a correction's (learning/versions.py _state)."""
    if r["quarantined"]:
        return "not learned: quarantined by a rollback"
    if r["no_learn"]:
        return "not learned: the conversation is marked don't-learn"
    served = [v for v in trained if statuses.get(v) in ("active", "retired")]
    in_live = [v for v in served if v in live]
    if in_live:
        return f"learned by v{in_live[0]}, which is live"
    if served:
        return f"learned by v{served[0]}, which is no longer live (rolled back)"
    if not trained:
        return "waiting for the next learning cycle"
    v = trained[-1]
    if statuses.get(v) == "candidate":
        return f"v{v} is trained and waits for a decision"
    return f"not learned: v{v} was rejected by the gate"


def items(db) -> list[dict]:
    """Every correction and liked answer, newest first: {id, kind, at, question, answer, state,
    conversation_id, turn_id, versions (those whose weights were trained with it)}."""
    trained = _trained_by(db)
    statuses = {a["version"]: a["status"] for a in adapters.list_adapters(db)}
    live = _lineage(db, adapters.active_version(db))
    rows = list(db.query(
        "SELECT f.id, f.kind, f.correction, f.quarantined, f.created_at, f.turn_id, t.user_message, t.reply, "
        "t.conversation_id, c.no_learn FROM feedback f JOIN turns t ON t.id = f.turn_id "
        "JOIN conversations c ON c.id = t.conversation_id WHERE f.kind IN ('correction', 'up') ORDER BY f.id DESC"))
    try:
        from learning.versions import correction_states

        states = {s["feedback_id"]: _correction_state(s) for s in correction_states(db)}
    except ImportError:
        states = {}
    out = []
    for r in rows:
        if r["kind"] == "correction":
            state = states.get(r["id"], "unknown (the learner is not installed)")
        else:
            state = _like_state(r, trained.get(r["id"], []), statuses, live)
        out.append({"id": r["id"], "kind": r["kind"], "at": r["created_at"], "question": r["user_message"],
                    "answer": r["correction"] if r["kind"] == "correction" else r["reply"], "state": state,
                    "conversation_id": r["conversation_id"], "turn_id": r["turn_id"],
                    "versions": trained.get(r["id"], [])})
    return out


def _clip(text: str | None, limit: int = 60) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _matches(item: dict, words: list[str]) -> bool:
    hay = " ".join((item["question"] or "", item["answer"] or "", item["state"], KIND_WORDS[item["kind"]])).lower()
    return all(w in hay for w in words)


def view(runtime, query: str = "", tz: str = "") -> dict:
    """-> {table, empty, summary, pick, details} updates for ui.py."""
    everything = items(runtime.db)
    words = str(query or "").lower().split()
    shown = [i for i in everything if _matches(i, words)]
    table = pd.DataFrame([{"when": local_time(i["at"], tz), "what": KIND_WORDS[i["kind"]],
                           "you asked": i["question"], "it should answer": i["answer"], "state": i["state"]}
                          for i in shown])
    details = pd.DataFrame([{"when": local_time(i["at"], tz), "feedback id": i["id"], "turn id": i["turn_id"],
                             "conversation id": i["conversation_id"],
                             "in the weights of": ", ".join(f"v{v}" for v in i["versions"]) or "no version"}
                            for i in shown])
    n_corr = sum(i["kind"] == "correction" for i in everything)
    waiting = sum(i["state"].startswith("waiting") for i in everything)
    summary = (f"{n_corr} correction{'s' * (n_corr != 1)} and {len(everything) - n_corr} liked "
               f"answer{'s' * (len(everything) - n_corr != 1)}; {waiting} waiting for the next learning cycle.")
    if words:
        summary += f" Showing {len(shown)} that match “{' '.join(words)}”."
    pick = [(f"{local_time(i['at'], tz)} — “{_clip(i['question'], 40)}” → “{_clip(i['answer'], 40)}”", i["id"])
            for i in shown]
    return {"table": gr.update(value=table, visible=bool(shown)),
            "empty": gr.update(visible=not everything),
            "summary": gr.update(value=summary if everything else "", visible=bool(everything)),
            "pick": gr.update(choices=pick, value=None),
            "details": gr.update(value=details, visible=bool(shown))}


def _versions_words(versions: list[int], db) -> str:
    if not versions:
        return " No version was trained with it."
    active = adapters.active_version(db)
    names = ", ".join(f"v{v}" + (" (live)" if v == active else "") for v in versions)
    return (f" Still in the weights of {names} until a learning cycle trains without it; "
            "rolling back to one of them brings it back.")


def _chosen(db, feedback_id) -> dict | None:
    """The listed item with id `feedback_id`; None once it is gone."""
    return next((i for i in items(db) if i["id"] == feedback_id), None)


def _sync_recall(runtime) -> None:
    memory = getattr(runtime, "memory", None)
    if memory is not None:
        memory.sync(runtime.db, wait_s=0)  # busy: the next recall re-reads the store anyway


def forget(runtime, feedback_id) -> str:
    """Forget one correction or liked answer. -> notice"""
    if not feedback_id:
        return "⚠ Choose the item to forget."
    db = runtime.db
    item = _chosen(db, feedback_id)
    if item is None:
        return "⚠ That item is already gone."
    versions = feedback.forget(db, feedback_id)
    _sync_recall(runtime)
    return (f"Forgotten: “{_clip(item['question'])}” → “{_clip(item['answer'])}”. Recall no longer uses it "
            "and the next learning cycle will not learn it." + _versions_words(versions, db))


def forget_conversation(runtime, feedback_id) -> str:
    """Mark the conversation of the chosen item don't-learn: everything in it is forgotten. -> notice"""
    if not feedback_id:
        return "⚠ Choose an item of the conversation to forget."
    db = runtime.db
    item = _chosen(db, feedback_id)
    if item is None:
        return "⚠ That item is already gone."
    cid = item["conversation_id"]
    conversations.update_conversation(db, cid, no_learn=1)
    _sync_recall(runtime)
    versions = sorted({v for i in items(db) if i["conversation_id"] == cid for v in i["versions"]})
    title = conversations.get_conversation(db, cid)["title"]
    return (f"The conversation “{_clip(title)}” is marked don't-learn: recall no longer uses anything in it "
            "and no later cycle learns from it." + _versions_words(versions, db))


def answer_of(runtime, feedback_id) -> str:
    """The chosen item's answer, for the edit box (the user changes it, as in the chat)."""
    item = _chosen(runtime.db, feedback_id) if feedback_id else None
    return item["answer"] or "" if item else ""


def edit(runtime, feedback_id, text) -> str:
    """Write what the chosen item's answer should say now. -> notice"""
    if not feedback_id:
        return "⚠ Choose the item to edit."
    db = runtime.db
    item = _chosen(db, feedback_id)
    if item is None:
        return "⚠ That item is already gone."
    text = str(text or "").strip()
    if not text:
        return "⚠ The new answer is empty: write what it should answer."
    if " ".join(text.split()) == " ".join((item["answer"] or "").split()):
        return "⚠ That is the answer as it is: change it, then save."
    try:
        runtime.record_feedback(item["turn_id"], "correction", correction=text)
    except (ValueError, conversations.NotFound) as e:
        return f"⚠ Not saved: {e}"
    liked = item["kind"] == "up"
    if liked:  # one answer, liked and corrected, would teach both
        feedback.forget(db, feedback_id)
        _sync_recall(runtime)
    return (f"✎ Saved: “{_clip(item['question'])}” → “{_clip(text)}”. Recall uses it from the next message "
            "and the next learning cycle learns it; " + ("the like is taken back." if liked else
                                                          "the earlier correction is superseded."))
