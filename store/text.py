"""Text keys the store computes itself (no model): which messages ask the same question, and what a
training row (SFT row or preference pair, learning/datasets.py) asks and answers."""
import re


def tokens(text: str | None) -> list[str]:
    """The project's one tokenizer: lower-case words and numbers in order, in any script
    ("What's" -> "what", "s"; "Tromsø" -> "tromsø"). The language rules (assistant/language.py)
    and the same-question key below both read text through it."""
    return re.findall(r"\w+", (text or "").lower())


def question_key(text: str | None) -> str:
    """Two messages ask 'the same question' when they have the same `tokens`: they differ only in
    case, spacing and punctuation ("So, who is my manager?" and "so who is my manager"); a later
    correction of the same question replaces the earlier one (store/feedback.py)."""
    return " ".join(tokens(text))


def question_and_answer(row: dict) -> tuple[str | None, str]:
    """The last user message of a training row (SFT row or preference pair) and its answer."""
    messages = row.get("messages") or row.get("prompt") or []
    users = [m["content"] for m in messages if m.get("role") == "user"]
    answers = [m["content"] for m in (row.get("chosen") or messages) if m.get("role") == "assistant"]
    return (users[-1] if users else None), (answers[-1] if answers else "")


def scope_prompts(rows: list[dict]) -> list[str]:
    """The last user message of each training row (SFT rows and preference pairs)."""
    return [q for q, _ in map(question_and_answer, rows) if q is not None]
