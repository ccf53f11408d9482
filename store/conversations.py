"""Conversations and the turns logged in them."""
import json
from typing import Any, Iterable

from store.db import now_iso
from store.ids import new_id
from store.transactions import write_transaction


class NotFound(LookupError):
    """A conversation, turn or adapter version that does not exist."""


def create_conversation(db, title: str = "New chat", system_prompt: str | None = None) -> str:
    cid = new_id()
    now = now_iso()
    db["conversations"].insert(
        {"id": cid, "title": title, "system_prompt": system_prompt, "no_learn": 0,
         "created_at": now, "updated_at": now}
    )
    return cid


def get_conversation(db, conversation_id: str) -> dict:
    rows = list(db["conversations"].rows_where("id = ?", [conversation_id]))
    if not rows:
        raise NotFound(f"conversation {conversation_id!r} does not exist")
    return rows[0]


def list_conversations(db, limit: int = 200) -> list[dict]:
    return list(db["conversations"].rows_where(order_by="updated_at desc", limit=limit))


def update_conversation(db, conversation_id: str, **fields: Any) -> None:
    get_conversation(db, conversation_id)
    allowed = {"title", "system_prompt", "no_learn"}
    bad = set(fields) - allowed
    if bad:
        raise ValueError(f"cannot update conversation fields {sorted(bad)}; allowed: {sorted(allowed)}")
    db["conversations"].update(conversation_id, {**fields, "updated_at": now_iso()})


def delete_conversation(db, conversation_id: str) -> None:
    """Delete a conversation with its turns and their feedback, in one transaction."""
    get_conversation(db, conversation_id)
    with write_transaction(db):
        db.execute(
            "DELETE FROM feedback WHERE turn_id IN (SELECT id FROM turns WHERE conversation_id = ?)",
            [conversation_id],
        )
        db.execute("DELETE FROM turns WHERE conversation_id = ?", [conversation_id])
        db.execute("DELETE FROM conversations WHERE id = ?", [conversation_id])


def log_turn(db, conversation_id: str, *, user_message: str, messages: list[dict], reply: str,
             source: str, model: str, adapter_version: int | None, prompt_tokens: int,
             completion_tokens: int, ttft_ms: float | None, duration_ms: float,
             truncated: bool = False, retry_of: str | None = None,
             recalled: Iterable[str] = (), params: dict | None = None,
             finish_reason: str = "stop", turn_id: str | None = None) -> str:
    """Write one finished turn. One INSERT: a turn is either fully logged or not at all."""
    tid = turn_id or new_id()
    now = now_iso()
    with write_transaction(db):
        db["turns"].insert({
            "id": tid, "conversation_id": conversation_id, "user_message": user_message,
            "messages_json": json.dumps(messages), "reply": reply, "retry_of": retry_of,
            "source": source, "model": model, "adapter_version": adapter_version,
            "recalled_json": json.dumps(list(recalled)), "params_json": json.dumps(params or {}),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "ttft_ms": ttft_ms, "duration_ms": duration_ms, "truncated": int(truncated),
            "finish_reason": finish_reason, "created_at": now,
        })
        db["conversations"].update(conversation_id, {"updated_at": now})
    return tid


INTERRUPTED = "interrupted"
"""finish_reason of a turn that never finished: its placeholder (`open_turn`) as a server killed
mid-reply leaves it, or a turn whose generation or final save failed. `reply` holds what was
generated up to the last save. A client that left keeps "abandoned" (chat.py)."""
UNFINISHED = (INTERRUPTED, "abandoned")


def open_turn(db, conversation_id: str, *, turn_id: str, user_message: str, messages: list[dict],
              source: str, model: str, truncated: bool = False, retry_of: str | None = None,
              recalled: Iterable[str] = (), params: dict | None = None,
              new_conversation: dict | None = None) -> None:
    """Write a turn's placeholder before its reply is generated (empty, finish_reason INTERRUPTED),
    so a turn whose id a client was given is on disk even if the server dies mid-reply;
    `finish_turn` completes it. With `new_conversation` ({"title", "system_prompt"}), the
    conversation is created in the same transaction: no conversation exists without a turn."""
    now = now_iso()
    with write_transaction(db):
        if new_conversation is not None:
            db["conversations"].insert({"id": conversation_id, "title": new_conversation.get("title", "New chat"),
                                        "system_prompt": new_conversation.get("system_prompt"),
                                        "no_learn": 0, "created_at": now, "updated_at": now})
        db["turns"].insert({
            "id": turn_id, "conversation_id": conversation_id, "user_message": user_message,
            "messages_json": json.dumps(messages), "reply": "", "retry_of": retry_of,
            "source": source, "model": model, "adapter_version": None,
            "recalled_json": json.dumps(list(recalled)), "params_json": json.dumps(params or {}),
            "prompt_tokens": 0, "completion_tokens": 0, "ttft_ms": None, "duration_ms": 0.0,
            "truncated": int(truncated), "finish_reason": INTERRUPTED, "created_at": now,
        })
        db["conversations"].update(conversation_id, {"updated_at": now})


def finish_turn(db, turn_id: str, *, reply: str, adapter_version: int | None = None,
                prompt_tokens: int = 0, completion_tokens: int = 0, ttft_ms: float | None = None,
                duration_ms: float = 0.0, finish_reason: str = INTERRUPTED,
                answered_by: str | None = None, answered_from=()) -> bool:
    """Write what a turn opened by `open_turn` generated so far (finish_reason INTERRUPTED: a
    progress save) or in the end. One UPDATE. False when the turn is gone (its conversation was
    deleted meanwhile). `answered_by`, `answered_from`: chat.Turn's."""
    with write_transaction(db):
        cur = db.execute(
            "UPDATE turns SET reply = ?, adapter_version = ?, prompt_tokens = ?, completion_tokens = ?, "
            "ttft_ms = ?, duration_ms = ?, finish_reason = ?, answered_by = ?, answered_from_json = ? WHERE id = ?",
            [reply, adapter_version, prompt_tokens, completion_tokens, ttft_ms, duration_ms,
             finish_reason, answered_by, json.dumps(list(answered_from)), turn_id])
        if cur.rowcount and finish_reason != INTERRUPTED:
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = "
                       "(SELECT conversation_id FROM turns WHERE id = ?)", [now_iso(), turn_id])
    return bool(cur.rowcount)


def drop_if_empty(db, conversation_id: str | None) -> bool:
    """Delete a conversation that has no turn (its first turn failed before it was saved).
    Returns whether it was deleted."""
    if not conversation_id:
        return False
    with write_transaction(db):
        cur = db.execute("DELETE FROM conversations WHERE id = ? AND NOT EXISTS "
                         "(SELECT 1 FROM turns WHERE conversation_id = ?)", [conversation_id, conversation_id])
    return bool(cur.rowcount)


def empty_conversations(db) -> list[str]:
    """Ids of conversations without a turn (none should exist: see `open_turn`, `drop_if_empty`)."""
    return [r[0] for r in db.execute("SELECT id FROM conversations c WHERE NOT EXISTS "
                                     "(SELECT 1 FROM turns t WHERE t.conversation_id = c.id)").fetchall()]


def get_turn(db, turn_id: str) -> dict:
    rows = list(db["turns"].rows_where("id = ?", [turn_id]))
    if not rows:
        raise NotFound(f"turn {turn_id!r} does not exist")
    return rows[0]


def conversation_turns(db, conversation_id: str) -> list[dict]:
    """Turns of a conversation in order, retried-away turns included (see `visible_history`)."""
    return list(db["turns"].rows_where("conversation_id = ?", [conversation_id], order_by="id"))


def visible_history(db, conversation_id: str) -> list[dict]:
    """The turns the user currently sees: a turn replaced by a retry is hidden. A retry that
    never said anything (unfinished and empty: still streaming, or killed) replaces nothing yet
    and is hidden itself."""
    turns = conversation_turns(db, conversation_id)
    void = {t["id"] for t in turns if t["retry_of"] and not t["reply"] and t["finish_reason"] in UNFINISHED}
    replaced = {t["retry_of"] for t in turns if t["retry_of"] and t["id"] not in void}
    return [t for t in turns if t["id"] not in replaced and t["id"] not in void]


def recent_turns(db, limit: int = 20) -> list[dict]:
    return list(db["turns"].rows_where(order_by="id desc", limit=limit))
