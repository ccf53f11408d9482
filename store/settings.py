"""Key-value settings stored as JSON (system prompt, generation defaults, learner triggers)."""
import json
from typing import Any


def get_setting(db, key: str, default: Any = None) -> Any:
    row = db.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
    return default if row is None else json.loads(row[0])


def set_setting(db, key: str, value: Any) -> None:
    db["settings"].upsert({"key": key, "value": json.dumps(value)}, pk="key")


def all_settings(db) -> dict:
    return {r["key"]: json.loads(r["value"]) for r in db["settings"].rows}
