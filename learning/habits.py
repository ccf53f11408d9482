"""Habits: what a user's corrections ask of EVERY answer, not of one question.

Why: a scoped adapter (assistant/scope.py) answers only prompts near the ones it was trained
on, which keeps general knowledge safe from fact corrections but also keeps a taught habit
("Captain, ..." in front of every answer) away from new questions. So the learner tells the
two apart. A habit is an opening that at least `habit_min_support` (learning/config.py
LearnConfig) corrections to different prompts share, such as "Captain," or "Righto!": a few
words ending in punctuation, never the start of an ordinary sentence ("Your dog is called ..."
has no such opening). Facts stay in the scoped adapter; a habit gets its own LoRA (`habit/`
inside the version's directory) for the prompts OUTSIDE the scope, trained on the corrections
that show the habit and on the base model's own answers to generic prompts with the habit added
(`with_habits`).

That adapter only LEADS (assistant/model.py `generate_led`): it writes the first few tokens of
an answer, kept only when they are one of the habit's openings, and the base weights answer
the prompt exactly as they would without it; the reply is the opening, then the base answer.
Why not more: on our dev scenario (bench/results/learn-dev.md) a habit adapter that wrote
whole answers learned the habit (style 4/4) but changed what answers say as much as fact
training does (canaries 32/40), and so did letting the base weights continue AFTER the
opening: after "Righto!" the 135M model answers differently ("Righto! 5 plus 5 is a classic
math problem"), 32/40 again.

A habit may also be a closing: a short last sentence ("Over and out.", "Hope this helps!") that
`habit_min_support` corrections to different prompts end with, after an answer of their own. It needs
no weights: the chat ends every reply that ended by itself without it with the closing
(assistant/chat.py), as a sign-off is the same words every time.

A habit may also be a format: answers written as a list ("- ..." or "1. ..." lines) by
`habit_min_support` corrections to different prompts. It needs no weights either: the chat writes
every reply as a list with that marker (`AsList`), one item per sentence or line of what the
model says, so what the answer says stays the base model's.

Contract: `find_habits(rows, min_support=, max_closing_words=)` (LearnConfig's `habit_min_support`,
`habit_max_closing_words`; their defaults unless given) -> {"openings": [...], "closings": [...],
"formats": [...]} (empty lists: none; a format is its list marker, "-", "*", "•" or "1.");
`habit_rows(rows, habits)` -> the corrections showing an opening; `with_habits(text, habits)`
-> text opened the way the habit would; `ends_with(text, closing)`.
"""
import re
from collections import defaultdict
from functools import partial

from assistant.language import MAY_LOSE_CAPITAL, SENTENCE_END
from learning.config import LearnConfig
from store.text import tokens

# The shapes of a habit (_OPENING, _ITEM and AsList's list markers) are punctuation, not English
# words, and stay here with the rules that read them; the word lists are in assistant/language.py.
# A short opening: 1-3 words ending in , ! : ; or a dash, then more text ("Captain, keep ...").
_OPENING = re.compile(r"^\s*((?:[^\s,!:;.?]+\s+){0,2}[^\s,!:;.?]+[,!:;]|(?:[^\s,!:;.?]+\s+){0,2}[^\s,!:;.?]+\s+[-\u2014])\s+\S")


def _user_prompt(row: dict) -> str:
    return next((m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user"), "")


def opening(text: str) -> str | None:
    m = _OPENING.match(text)
    return m.group(1).strip() if m else None


def closing(text: str, max_words: int = LearnConfig.habit_max_closing_words) -> str | None:
    """The last sentence of `text` when it is short (at most `max_words`: a sign-off, not content;
    LearnConfig.habit_max_closing_words) and follows another one."""
    sentences = [s for s in SENTENCE_END.split((text or "").strip()) if s]
    if len(sentences) < 2 or len(sentences[-1].split()) > max_words:
        return None
    return sentences[-1].strip()


# A list item: a marker, a space, then text. The marker alone names the format ("1." for any number).
_ITEM = re.compile(r"^\s*([-*\u2022]|\d{1,2}[.)])\s+\S")


def list_format(text: str) -> str | None:
    """The list marker when `text` is a list: at least two items, and every line but a first
    lead-in ("Three things:") is one."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    items = [m.group(1) for m in map(_ITEM.match, lines) if m]
    if len(items) < 2 or len(items) < len(lines) - 1 or (len(items) < len(lines) and _ITEM.match(lines[0])):
        return None
    return "1." if items[0][0].isdigit() else items[0]


class AsList:
    """Writes a streamed reply as list items with `marker`: the reply's first words open the
    first item, and each sentence end or line break that the model writes opens the next. A
    reply the model already writes as a list passes unchanged."""

    _BREAK = re.compile(r"(?<=[.!?])[ \t]+(?=\S)|\s*\n\s*(?=\S)")
    _OPENS_LIST = re.compile(r"^([-*\u2022]|\d{1,2}[.)])\s")
    _OWN_ITEM = re.compile(r"\n\s*([-*\u2022]|\d{1,2}[.)])\s")

    def __init__(self, marker: str):
        self.marker, self.items, self.held, self.last, self.as_is = marker, 0, "", "", None

    def _next_marker(self) -> str:
        self.items += 1
        return f"{self.items}. " if self.marker == "1." else f"{self.marker} "

    def feed(self, piece: str) -> str:
        """The text to show for `piece` ("" once the reply has ended: what is still held back)."""
        text = self.held + piece
        if self.as_is is None:
            text = text.lstrip()
            if len(text) < 4 and piece:  # too short to tell whether the model opens a list itself
                self.held = text
                return ""
            self.as_is = bool(self._OPENS_LIST.match(text))
        if self.as_is:
            self.held = ""
            return text
        keep = len(text.rstrip()) if piece else len(text)  # a trailing space may yet open an item
        line = text.rfind("\n")
        if piece and line >= 0 and len(text) - line <= 5:
            keep = min(keep, line)  # a line that may yet open with a list marker of the model's own
        body, self.held = text[:keep], text[keep:]
        own = self._OWN_ITEM.search(body)
        if own:  # the model starts a list of its own: its lines stay as they are from here on
            body, rest, self.as_is = body[:own.start()], body[own.start():], True
        else:
            rest = ""
        opening = self._next_marker() if body and not self.items else ""
        shown = self._BREAK.sub(lambda _: "\n" + self._next_marker(), self.last + body)[len(self.last):]
        self.last = body[-1:] or self.last
        return opening + shown + rest

    def close(self) -> str:
        return self.feed("")


def _bare(text: str) -> str:
    """`text` case, spacing and punctuation aside: its `store.text.tokens`."""
    return " ".join(tokens(text))


def ends_with(text: str, closing_text: str) -> bool:
    """Does `text` already end with `closing_text` (case, spacing and punctuation aside)?"""
    return bool(_bare(closing_text)) and _bare(text).endswith(_bare(closing_text))


def find_habits(rows: list[dict], min_support: int = LearnConfig.habit_min_support,
                max_closing_words: int = LearnConfig.habit_max_closing_words) -> dict:
    """Openings, closings (of at most `max_closing_words`) and list formats shared by `min_support`
    corrections to distinct prompts, in the spelling of the newest row that has each. Only
    corrections count: a liked answer shows what the model already does."""
    found = {}
    ends = partial(closing, max_words=max_closing_words)
    for kind, part_of in (("openings", opening), ("closings", ends), ("formats", list_format)):
        prompts: dict[str, set] = defaultdict(set)
        spelled: dict[str, str] = {}
        for row in rows:  # oldest first
            if row.get("source") != "correction":
                continue
            part = part_of(row["messages"][-1]["content"])
            if part:
                key = _bare(part) if kind == "closings" else part.lower()
                prompts[key].add(_user_prompt(row).strip().lower())
                spelled[key] = part
        found[kind] = sorted(spelled[p] for p, asked in prompts.items() if len(asked) >= min_support)
    return found


KINDS = ("openings", "closings", "formats")


def merged(*habits: dict | None) -> dict:
    """The habits of several habit dicts together (a version keeps its parent's)."""
    return {kind: sorted({h for hs in habits if hs for h in hs.get(kind) or ()}) for kind in KINDS}


def has_habits(habits: dict | None) -> bool:
    return bool(habits and any(habits.get(kind) for kind in KINDS))


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
        if first.lower() in MAY_LOSE_CAPITAL and habits["openings"][0][-1] in ",:;":  # "Righto! The ..." stays
            first = first.lower()
        text = f"{habits['openings'][0]} {first} {rest}".strip()
    return text
