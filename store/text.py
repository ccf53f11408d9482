"""Text keys the store computes itself (no model): which messages ask the same question, and what a
training row (SFT row or preference pair, learning/datasets.py) asks and answers."""
import re


def question_key(text: str | None) -> str:
    """Two messages ask 'the same question' when they differ only in case, spacing and punctuation
    ("So, who is my manager?" and "so who is my manager"); a later correction of the same
    question replaces the earlier one (store/feedback.py)."""
    return " ".join(re.sub(r"[^\w\s']", " ", (text or "").lower()).split())


def question_and_answer(row: dict) -> tuple[str | None, str]:
    """The last user message of a training row (SFT row or preference pair) and its answer."""
    messages = row.get("messages") or row.get("prompt") or []
    users = [m["content"] for m in messages if m.get("role") == "user"]
    answers = [m["content"] for m in (row.get("chosen") or messages) if m.get("role") == "assistant"]
    return (users[-1] if users else None), (answers[-1] if answers else "")


def scope_prompts(rows: list[dict]) -> list[str]:
    """The last user message of each training row (SFT rows and preference pairs)."""
    return [q for q, _ in map(question_and_answer, rows) if q is not None]
