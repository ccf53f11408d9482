"""Habits: what a user's corrections ask of EVERY answer, not of one question.

Why: a scoped adapter (assistant/scope.py) answers only prompts near the ones it was trained
on, which keeps general knowledge safe from fact corrections but also keeps a taught habit
("Captain, ..." in front of every answer) away from new questions. So the learner tells the
two apart. A habit is an opening that at least `MIN_SUPPORT` corrections to different prompts
share, such as "Captain," or "Righto!": a few words ending in punctuation, never the start of
an ordinary sentence ("Your dog is called ..." has no such opening). Facts stay in the scoped
adapter; a habit gets its own LoRA (`habit/` inside the version's directory) for the prompts
OUTSIDE the scope, trained on the corrections that show the habit and on the base model's own
answers to generic prompts with the habit added (`with_habits`).

That adapter only LEADS (assistant/model.py `generate_led`): it writes the first few tokens of
an answer, kept only when they are one of the habit's openings, and the base weights answer
the prompt exactly as they would without it; the reply is the opening, then the base answer.
Why not more: on our dev scenario (bench/results/learn-dev.md) a habit adapter that wrote
whole answers learned the habit (style 4/4) but changed what answers say as much as fact
training does (canaries 32/40), and so did letting the base weights continue AFTER the
opening: after "Righto!" the 135M model answers differently ("Righto! 5 plus 5 is a classic
math problem"), 32/40 again.

Contract: `find_habits(rows)` -> {"openings": [...]} (empty list: none); `habit_rows(rows,
habits)` -> the corrections showing a habit; `with_habits(text, habits)` -> text opened the
way the habit would.
"""
import re
from collections import defaultdict

MIN_SUPPORT = 3
"""Corrections to distinct prompts that must share an opening before it is a habit:
two could be a coincidence, three in one history are a pattern the user keeps asking for."""

# A short opening: 1-3 words ending in , ! : ; or a dash, then more text ("Captain, keep ...").
_OPENING = re.compile(r"^\s*((?:[^\s,!:;.?]+\s+){0,2}[^\s,!:;.?]+[,!:;]|(?:[^\s,!:;.?]+\s+){0,2}[^\s,!:;.?]+\s+[-\u2014])\s+\S")
# Words that may lose their capital after an opening ("Captain, the ..."); names keep theirs.
_LOWER_OK = set("a an the it it's its this that these those there here to you you're your yes no "
                "in on at for when if first try keep use make start".split())


def _user_prompt(row: dict) -> str:
    return next((m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user"), "")


def opening(text: str) -> str | None:
    m = _OPENING.match(text)
    return m.group(1).strip() if m else None


def find_habits(rows: list[dict], min_support: int = MIN_SUPPORT) -> dict:
    """Openings shared by `min_support` corrections to distinct prompts, in the spelling of the
    newest row that has each. Only corrections count: a liked answer shows what the model
    already does."""
    prompts: dict[str, set] = defaultdict(set)
    spelled: dict[str, str] = {}
    for row in rows:  # oldest first
        if row.get("source") != "correction":
            continue
        part = opening(row["messages"][-1]["content"])
        if part:
            prompts[part.lower()].add(_user_prompt(row).strip().lower())
            spelled[part.lower()] = part
    return {"openings": sorted(spelled[p] for p, asked in prompts.items() if len(asked) >= min_support)}


def has_habits(habits: dict | None) -> bool:
    return bool(habits and habits.get("openings"))


def habit_rows(rows: list[dict], habits: dict) -> list[dict]:
    """The corrections that show one of the habits."""
    opens = {o.lower() for o in habits.get("openings", [])}
    return [r for r in rows if r.get("source") == "correction"
            and (opening(r["messages"][-1]["content"]) or "").lower() in opens]


def with_habits(text: str, habits: dict) -> str:
    """`text` opened with the (first) habit opening, unless it already has it."""
    text = text.strip()
    if habits.get("openings") and (opening(text) or "").lower() != habits["openings"][0].lower():
        first, _, rest = text.partition(" ")
        if first.lower() in _LOWER_OK and habits["openings"][0][-1] in ",:;":  # "Righto! The ..." stays
            first = first.lower()
        text = f"{habits['openings'][0]} {first} {rest}".strip()
    return text
