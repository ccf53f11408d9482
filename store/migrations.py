"""Append-only, numbered migrations. Never edit one that has shipped: a fix is a new migration.

Each migration is a function taking the database; `apply_migrations` records the ones
applied in `_migrations`, so opening a database twice is a no-op.
"""
from typing import Callable

import sqlite_utils

from store.text import question_key
from store.transactions import write_transaction

MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = []


def migration(fn):
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_conversations_turns_feedback(db):
    db["conversations"].create(
        {
            "id": str,
            "title": str,
            "system_prompt": str,
            "no_learn": int,  # 1: "don't learn from this conversation"
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        defaults={"no_learn": 0},
        not_null={"created_at"},
    )
    db["turns"].create(
        {
            "id": str,
            "conversation_id": str,
            "user_message": str,  # what the user typed (after any cut to the context window)
            "messages_json": str,  # the full prompt sent to the model: system, history, user
            "reply": str,
            "retry_of": str,  # turn id this turn regenerates, if any
            "source": str,  # ui | api | cli
            "model": str,
            "adapter_version": int,  # NULL: base model alone
            "recalled_json": str,  # ids of corrections recalled into the prompt
            "params_json": str,  # max_new_tokens, temperature, ...
            "prompt_tokens": int,
            "completion_tokens": int,
            "ttft_ms": float,
            "duration_ms": float,
            "truncated": int,  # 1 when the user message was cut to fit the context
            "finish_reason": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
        defaults={"truncated": 0},
    )
    db["turns"].create_index(["conversation_id"])
    db["feedback"].create(
        {
            "id": str,
            "turn_id": str,
            "kind": str,  # up | down | correction | retry
            "reason": str,
            "correction": str,
            "retry_turn_id": str,  # for kind=retry: the new turn that replaced turn_id
            "quarantined": int,  # 1: excluded from learning (set by a rollback)
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("turn_id", "turns", "id")],
        defaults={"quarantined": 0},
    )
    db["feedback"].create_index(["turn_id"])
    db["settings"].create({"key": str, "value": str}, pk="key")


@migration
def m002_adapters_jobs(db):
    db["adapters"].create(
        {
            "version": int,
            "status": str,  # candidate | active | rejected | retired
            "parent_version": int,
            "path": str,
            "created_at": str,
            "status_changed_at": str,
            "meta_json": str,  # the adapter's meta.json: config, data hash, timings, losses
            "metrics_json": str,  # evaluation numbers
            "n_corrections": int,
            "n_votes": int,
        },
        pk="version",
    )
    # The database itself guarantees there is never more than one active version.
    db.execute(
        "CREATE UNIQUE INDEX adapters_one_active ON adapters(status) WHERE status = 'active'"
    )
    db["adapter_feedback"].create(
        {"version": int, "feedback_id": str}, pk=("version", "feedback_id")
    )
    db["adapter_feedback"].create_index(["feedback_id"])
    db["gate_decisions"].create(
        {
            "id": str,
            "candidate_version": int,
            "incumbent_version": int,
            "passed": int,
            "reasons_json": str,
            "evidence_json": str,
            "created_at": str,
        },
        pk="id",
    )
    db["jobs"].create(
        {
            "id": str,
            "kind": str,  # learn
            "status": str,  # running | succeeded | failed | cancelled
            "stage": str,  # preparing data | SFT | DPO | evaluating | gate | done
            "progress": float,  # 0..1 within the whole cycle
            "eta_s": float,
            "pid": int,
            "started_at": str,
            "heartbeat_at": str,
            "ended_at": str,
            "error": str,
            "losses_json": str,
            "result_json": str,
            "cancel_requested": int,
        },
        pk="id",
        defaults={"cancel_requested": 0, "progress": 0.0},
    )


@migration
def m003_feedback_superseded_by(db):
    """A correction replaced by a later one (store/feedback.py `supersede`): the id of the later one.
    Corrections already stored are linked as before, by the same question (`question_key`)."""
    db.execute("ALTER TABLE feedback ADD COLUMN superseded_by TEXT")
    newest: dict[str, str] = {}
    rows = db.execute("SELECT f.id, t.user_message FROM feedback f JOIN turns t ON t.id = f.turn_id "
                      "WHERE f.kind = 'correction' ORDER BY f.id").fetchall()
    for fid, message in rows:
        key = question_key(message)
        if key in newest:
            db.execute("UPDATE feedback SET superseded_by = ? WHERE id = ?", [fid, newest[key]])
        newest[key] = fid
    db["feedback"].create_index(["superseded_by"], if_not_exists=True)


@migration
def m004_turns_answered_by(db):
    """What in the weights wrote a turn's reply besides its version (chat.Turn.answered_by:
    adapter, expert or habit; NULL for the base weights), so a reloaded chat still says it."""
    db.execute("ALTER TABLE turns ADD COLUMN answered_by TEXT")


@migration
def m005_taken_back_keys(db):
    """The search-key vectors of deleted corrections, per embedding model (store/taken_back.py)."""
    db.execute("CREATE TABLE taken_back_keys (id INTEGER PRIMARY KEY, embedder TEXT NOT NULL, "
               "dim INTEGER NOT NULL, vectors BLOB NOT NULL, created_at TEXT NOT NULL)")


@migration
def m006_turns_answered_from(db):
    """The feedback ids of the learned question a turn was routed by (chat.Turn.answered_from):
    which correction answered it. Turns stored before say nothing ("[]")."""
    db.execute("ALTER TABLE turns ADD COLUMN answered_from_json TEXT DEFAULT '[]'")


def apply_migrations(db: sqlite_utils.Database) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction. Returns their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        # One transaction per migration: it lands whole or not at all. Re-checked under the
        # write lock, because two processes may open a fresh database at the same moment.
        with write_transaction(db):
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                continue
            fn(db)
            db.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, datetime('now'))",
                [name],
            )
        applied.append(name)
    return applied
