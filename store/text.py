"""Text keys the store computes itself (no model): which messages ask the same question."""
import re


def question_key(text: str | None) -> str:
    """Two messages ask 'the same question' when they differ only in case, spacing and punctuation
    ("So, who is my manager?" and "so who is my manager"); a later correction of the same
    question replaces the earlier one (store/feedback.py)."""
    return " ".join(re.sub(r"[^\w\s']", " ", (text or "").lower()).split())
