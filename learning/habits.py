"""Habits: what a user's corrections ask of EVERY answer, not of one question.

Why: a scoped adapter (assistant/scope.py) answers only prompts near the ones it was trained
on, which keeps general knowledge safe from fact corrections but also keeps a taught habit
("Captain, ..." in front of every answer) away from new questions. So the learner tells the
two apart. A habit is an opening (or a closing) that at least `MIN_SUPPORT` corrections to
different prompts share, such as "Captain," or "Righto!": a few words ending in punctuation,
never the start of an ordinary sentence ("Your dog is called ..." has no such opening). Facts
stay in the scoped adapter; a habit gets its own small LoRA (`habit/` inside the version's
directory) that answers the prompts OUTSIDE the scope. It is trained on the corrections that
show the habit and on the base model's own answers to generic prompts with the habit added
(`habit_rows`), so it learns the habit while keeping the base model's content; the gate's
canaries then check that content on that adapter, as the chat routes them.

Measured (bench/results/learn-dev.md, our dev scenario): the habit adapter learns the habit
(style 4/4) but, like any global weight change of this 135M model, alters what answers say
(canaries 32/40), so it is off by default (`LearnConfig.habit_adapter`).

Contract: `find_habits(rows)` -> {"openings": [...], "closings": [...]} (empty lists: none);
`habit_rows(rows, habits)` -> the rows showing a habit; `with_habits(text, habits)` -> text
as the habit would have it.
"""
import re
from collections import defaultdict

MIN_SUPPORT = 3
"""Corrections to distinct prompts that must share an opening/closing before it is a habit:
two could be a coincidence, three in one history are a pattern the user keeps asking for."""

# A short opening: 1-3 words ending in , ! : ; or a dash, then more text ("Captain, keep ...").
_OPENING = re.compile(r"^\s*((?:[^\s,!:;.?]+\s+){0,2}[^\s,!:;.?]+[,!:;]|(?:[^\s,!:;.?]+\s+){0,2}[^\s,!:;.?]+\s+[-\u2014])\s+\S")
# A short closing sentence after the answer's last sentence end ("... Cheers!", "... Over and out.").
_CLOSING = re.compile(r"[.!?]\s+((?:\S+\s+){0,3}\S+[.!?])\s*$")
# Words that may lose their capital after an opening ("Captain, the ..."); names keep theirs.
_LOWER_OK = set("a an the it it's its this that these those there here to you you're your yes no "
                "in on at for when if first try keep use make start".split())


def _user_prompt(row: dict) -> str:
    return next((m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user"), "")


def opening(text: str) -> str | None:
    m = _OPENING.match(text)
    return m.group(1).strip() if m else None


def closing(text: str) -> str | None:
    m = _CLOSING.search(text.strip())
    return m.group(1).strip() if m else None


def find_habits(rows: list[dict], min_support: int = MIN_SUPPORT) -> dict:
    """Openings and closings shared by `min_support` corrections to distinct prompts.
    Only corrections count: a liked answer shows what the model already does."""
    seen: dict[str, dict[str, set]] = {"openings": defaultdict(set), "closings": defaultdict(set)}
    for row in rows:
        if row.get("source") != "correction":
            continue
        answer, prompt = row["messages"][-1]["content"], _user_prompt(row).strip().lower()
        for kind, part in (("openings", opening(answer)), ("closings", closing(answer))):
            if part:
                seen[kind][part.lower()].add(prompt)
    habits = {}
    for kind, parts in seen.items():
        # The spelling of the newest row that has it (rows are oldest first).
        spelled = {}
        for row in rows:
            answer = row["messages"][-1]["content"]
            part = opening(answer) if kind == "openings" else closing(answer)
            if part:
                spelled[part.lower()] = part
        habits[kind] = sorted(spelled[p] for p, prompts in parts.items() if len(prompts) >= min_support)
    return habits


def has_habits(habits: dict | None) -> bool:
    return bool(habits and (habits.get("openings") or habits.get("closings")))


def habit_rows(rows: list[dict], habits: dict) -> list[dict]:
    """The corrections that show one of the habits."""
    opens = {o.lower() for o in habits.get("openings", [])}
    closes = {c.lower() for c in habits.get("closings", [])}
    out = []
    for row in rows:
        if row.get("source") != "correction":
            continue
        answer = row["messages"][-1]["content"]
        if (opening(answer) or "").lower() in opens or (closing(answer) or "").lower() in closes:
            out.append(row)
    return out


def with_habits(text: str, habits: dict) -> str:
    """`text` with the (first) habit opening and closing added, unless it already has them."""
    text = text.strip()
    if habits.get("openings") and not (opening(text) or "").lower() == habits["openings"][0].lower():
        first, _, rest = text.partition(" ")
        if first.lower() in _LOWER_OK and habits["openings"][0][-1] in ",:;":  # "Righto! The ..." stays
            first = first.lower()
        text = f"{habits['openings'][0]} {first} {rest}".strip()
    if habits.get("closings") and not (closing(text) or "").lower() == habits["closings"][0].lower():
        text = f"{text} {habits['closings'][0]}"
    return text
