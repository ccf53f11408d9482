"""Conversations and the turns logged in them."""
import json
from typing import Any, Iterable

from store.db import now_iso, write_transaction
from store.ids import new_id


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


def get_turn(db, turn_id: str) -> dict:
    rows = list(db["turns"].rows_where("id = ?", [turn_id]))
    if not rows:
        raise NotFound(f"turn {turn_id!r} does not exist")
    return rows[0]


def conversation_turns(db, conversation_id: str) -> list[dict]:
    """Turns of a conversation in order, retried-away turns included (see `visible_history`)."""
    return list(db["turns"].rows_where("conversation_id = ?", [conversation_id], order_by="id"))


def visible_history(db, conversation_id: str) -> list[dict]:
    """The turns the user currently sees: a turn replaced by a retry is hidden."""
    turns = conversation_turns(db, conversation_id)
    replaced = {t["retry_of"] for t in turns if t["retry_of"]}
    return [t for t in turns if t["id"] not in replaced]


def recent_turns(db, limit: int = 20) -> list[dict]:
    return list(db["turns"].rows_where(order_by="id desc", limit=limit))
