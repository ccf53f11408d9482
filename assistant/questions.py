"""The question texts that recall and training share, in the lower layer both may import.

`reframings` (a corrected prompt's content asked in other frames) are search keys of a
correction in assistant/memory.py and training rewrites in learning/augment.py; `replay_prompts`
(ordinary requests, learning/replay_prompts.jsonl) are what recall's relative margin compares a
question with and what self-replay trains on. They lived in learning/augment.py, which made the
serving side import the learning side for recall while learning/augment.py imported
assistant/memory.py back (an import cycle hidden inside functions); the serving side needs
neither training code nor its dependencies to find a correction.

The question grammar below (the wh-question patterns, `_IRREGULAR_PAST`, `_NAMING`, `_BE`) is
the project's English rules for reframing; assistant/language.py, which holds the others, names
this module as its home.
"""
import json
import re
from pathlib import Path

# Shipped as package data of `learning` (pyproject.toml), which self-replay trains on.
REPLAY_PROMPTS = Path(__file__).resolve().parent.parent / "learning" / "replay_prompts.jsonl"


def replay_prompts(limit: int | None = None) -> list[str]:
    """Generic requests no correction wrote and no test set chose ("How do I plant a tree?")."""
    prompts = [json.loads(line)["prompt"] for line in REPLAY_PROMPTS.read_text().splitlines() if line.strip()]
    return prompts[:limit] if limit is not None else prompts


# Simple wh-questions, parsed into (wh phrase, subject, verb phrase) so that their content can be
# asked again in other question frames: "What language is our backend written in?" ->
# ("what language", "our backend", "is written in"); "Where did I grow up?" -> ("where", "I", "grew up").
_WH = r"(what|which|who|where|when|how)(?:\s+(\w+(?:\s\w+)?))?"
_BE_Q = re.compile(rf"^{_WH}\s+(is|are|was|were)\s+(.+)$", re.I)
_DO_Q = re.compile(rf"^{_WH}\s+(do|does|did)\s+(i|we|you|(?:my|our)\s+\w+)\s+(.+)$", re.I)
_AM_Q = re.compile(rf"^{_WH}\s+(am i|are we)\s+(.+)$", re.I)
_NAME_OF = re.compile(r"^(?:(.+)'s name|the name of (.+))$", re.I)
# Where a be-question's subject ends and its participle begins ("our backend | written in").
_PARTICIPLE = re.compile(r"^(?:called|named|known|written|made|built|held|kept|run|set|born|"
                         r"located|based|\w{3,}ed)$", re.I)
_NAMING = {"called", "named", "name", "call"}
_BE = ("is", "are", "was", "were")
_IRREGULAR_PAST = {"go": "went", "grow": "grew", "get": "got", "buy": "bought", "meet": "met", "leave": "left",
                   "see": "saw", "take": "took", "give": "gave", "find": "found", "make": "made", "have": "had",
                   "choose": "chose", "begin": "began", "come": "came", "do": "did", "eat": "ate", "drive": "drove",
                   "ride": "rode", "write": "wrote", "teach": "taught", "think": "thought", "keep": "kept",
                   "lose": "lost", "sell": "sold", "tell": "told", "win": "won", "pay": "paid", "put": "put",
                   "read": "read", "say": "said", "sit": "sat", "spend": "spent", "study": "studied"}


def _third_person(verb_phrase: str) -> str:
    """'go to' -> 'goes to', 'use' -> 'uses' (for 'which school does my son go to')."""
    verb, _, rest = verb_phrase.partition(" ")
    verb = verb + ("es" if verb.endswith(("o", "s", "sh", "ch", "x")) else "s")
    return f"{verb} {rest}".strip()


def _past(verb_phrase: str) -> str:
    """'grow up' -> 'grew up', 'name my plant' -> 'named my plant' (for 'where did I grow up')."""
    verb, _, rest = verb_phrase.partition(" ")
    low = verb.lower()
    if low in _IRREGULAR_PAST:
        verb = _IRREGULAR_PAST[low]
    elif low.endswith("e"):
        verb += "d"
    elif low.endswith("y") and low[-2:-1] not in "aeiou":
        verb = verb[:-1] + "ied"
    else:
        verb += "ed"
    return f"{verb} {rest}".strip()


def _parse(bare: str) -> tuple[str, str, str, str] | None:
    """(wh phrase, subject, verb phrase as stated, predicate head) of a simple wh-question, or None.
    The subject comes first in the stated form: "what language" + "our backend" + "is written in"."""
    if m := _AM_Q.match(bare):
        subj, be = ("I", "am") if m.group(3).lower() == "am i" else ("we", "are")
        return _wh(m), subj, f"{be} {m.group(4)}", ""
    if m := _DO_Q.match(bare):
        aux, subj, verb = m.group(3).lower(), m.group(4), m.group(5)
        subj = "I" if subj.lower() == "i" else subj
        stated = {"do": verb, "does": _third_person(verb), "did": _past(verb)}[aux]
        return _wh(m), subj, stated, verb.split()[0].lower()
    if m := _BE_Q.match(bare):
        be, words = m.group(3).lower(), m.group(4).split()
        cut = next((i for i, w in enumerate(words) if i and _PARTICIPLE.match(w)), len(words))
        subj, pred = " ".join(words[:cut]), " ".join(words[cut:])
        return _wh(m), subj, f"{be} {pred}".strip(), pred.split()[0].lower() if pred else ""
    return None


def _named(subj: str, stated: str) -> str:
    """What a naming question asks the name of: the subject of "what is X called", the object of
    "what did I name X" / "what do we call X"."""
    verb, _, obj = stated.partition(" ")
    return subj if verb in _BE else obj


def _wh(m: re.Match) -> str:
    return f"{m.group(1).lower()} {m.group(2)}" if m.group(2) else m.group(1).lower()


def reframings(question: str) -> list[str]:
    """The question's content asked in other frames: embedded ("Remind me what my cat's name
    is."), the content first ("My cat's name is what again?"), as a request ("Tell me where I
    grew up.") and, for names, how else a name is asked for ("What's my cat called?", "What is
    the name of our book club?"). Only simple wh-questions (be, do/does/did, am) are parsed;
    anything else gives no reframings. Varying everything around the question's content words
    is what makes a fact stick to them rather than to one wording."""
    bare = question.strip().rstrip("?.! ")
    parsed = _parse(bare)
    if parsed is None:
        return []
    wh, subj, stated, head = parsed
    embedded = f"{wh} {subj} {stated}"
    out = [f"Remind me {embedded}."]
    if wh != "how":  # "I boil an egg how again?" is not English
        out.append(f"{subj} {stated} {wh} again?")
    request = subj if wh == "what" and stated in _BE else embedded  # "Tell me my cat's name."
    out.append(f"Tell me {request}.")
    owner = {"I": "my", "we": "our"}.get(subj)
    if wh == "what" and stated in _BE and (n := _NAME_OF.match(subj)):
        named = n.group(1) or n.group(2)
        out += [f"What's {named} called?", f"What do I call {named}?", f"{named} is named what?"]
    elif wh == "what" and head in _NAMING and (named := _named(subj, stated)):
        out += [f"What is the name of {named}?", f"What's {named} called?", f"{named} is named what?"]
    elif owner and wh.startswith(("what ", "which ")) and stated.split()[0] not in ("am", "are"):
        noun = wh.split(None, 1)[1]
        out += [f"What is {owner} {noun}?", f"Name {owner} {noun}."]
    elif wh.startswith(("what ", "which ")) and subj.lower().startswith(("my ", "our ")) and stated not in _BE:
        # "which school does my son go to", not "which band is my favourite"
        out.append(f"What is {subj}'s {wh.split(None, 1)[1]}?")
    out += [f"Do you remember {embedded}?", f"Do you know {embedded}?"]
    return [r[:1].upper() + r[1:] for r in out]
