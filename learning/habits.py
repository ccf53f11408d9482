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

A habit may also be a closing: a short last sentence ("Over and out.", "Hope this helps!") that
`MIN_SUPPORT` corrections to different prompts end with, after an answer of their own. It needs
no weights: the chat ends every reply that ended by itself without it with the closing
(assistant/chat.py), as a sign-off is the same words every time.

Contract: `find_habits(rows)` -> {"openings": [...], "closings": [...]} (empty lists: none);
`habit_rows(rows, habits)` -> the corrections showing an opening; `with_habits(text, habits)`
-> text opened the way the habit would; `ends_with(text, closing)`.
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


MAX_CLOSING_WORDS = 6
"""A closing is a sign-off, not content: a last sentence of at most this many words."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def closing(text: str) -> str | None:
    """The last sentence of `text` when it is short (MAX_CLOSING_WORDS) and follows another one."""
    sentences = [s for s in _SENTENCE_END.split((text or "").strip()) if s]
    if len(sentences) < 2 or len(sentences[-1].split()) > MAX_CLOSING_WORDS:
        return None
    return sentences[-1].strip()


def _bare(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def ends_with(text: str, closing_text: str) -> bool:
    """Does `text` already end with `closing_text` (case, spacing and punctuation aside)?"""
    return bool(_bare(closing_text)) and _bare(text).endswith(_bare(closing_text))


def find_habits(rows: list[dict], min_support: int = MIN_SUPPORT) -> dict:
    """Openings shared by `min_support` corrections to distinct prompts, in the spelling of the
    newest row that has each. Only corrections count: a liked answer shows what the model
    already does."""
    found = {}
    for kind, part_of in (("openings", opening), ("closings", closing)):
        prompts: dict[str, set] = defaultdict(set)
        spelled: dict[str, str] = {}
        for row in rows:  # oldest first
            if row.get("source") != "correction":
                continue
            part = part_of(row["messages"][-1]["content"])
            if part:
                key = part.lower() if kind == "openings" else _bare(part)
                prompts[key].add(_user_prompt(row).strip().lower())
                spelled[key] = part
        found[kind] = sorted(spelled[p] for p, asked in prompts.items() if len(asked) >= min_support)
    return found


def merged(*habits: dict | None) -> dict:
    """The openings and closings of several habit dicts together (a version keeps its parent's)."""
    return {kind: sorted({h for hs in habits if hs for h in hs.get(kind) or ()})
            for kind in ("openings", "closings")}


def has_habits(habits: dict | None) -> bool:
    return bool(habits and (habits.get("openings") or habits.get("closings")))


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
