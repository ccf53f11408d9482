"""How recalled corrections enter a chat turn: the system prompt's addendum (`system_addendum`,
in the form `FORM`) and the words the reply starts with (`reply_lead`).

Contract: pure functions of the recalled corrections (dicts with prompt, correction, rank, as
`Memory.recall` returns them). The forms and the lead were chosen on the dev sets
(bench/results/memory.dev*.md; bench/HISTORY.md, "Recall in the prompt").
"""
import re

from assistant.language import naming, split_at_new_word, split_at_told

# A correction that tells no name or number ("You are learning the cello.") leads the reply up to
# and including the first word of its own (bench/results/memory.dev-leadcontent-*.md).
LEAD_NEW_WORD = "through"  # "off" | "before" | "through"
# A correction that tells a number (a phone number, a code, a date, a price) leads the reply
# through the last of them: an expert's weights garbled "+47 22 33 44 55" into
# "+48 22 33 47 58" after the lead stopped before it (bench/HISTORY.md, 2026-12-04).
LEAD_THROUGH_NUMBERS = True


def system_addendum(recalled: list[dict]) -> str:
    """The recalled corrections in the form the small model follows best. Measured on the dev
    set (bench/results/memory.dev.md, SmolLM2-135M-Instruct, greedy, 32 tokens): facts passed
    with "notes_last" 58/64 (with the margin selection too), "notes" 43/64, "exchange" (a
    prior user/assistant turn) 30/64, "facts" 29/64, "qa" 20/64, nothing 0/64; no form
    changed a control reply. A chat turn with recall also forbids the reply to open with the
    question's first word (Turn.avoid_first, against echoes): 60/64 instead of 58/64
    (bench/results/memory.dev-avoid.md)."""
    return render(recalled, FORM)


def reply_lead(recalled: list[dict]) -> str | None:
    """The opening words of the best recalled correction, up to the first name or number it told
    (`told_words`): "Your team writes its backend in" for "Your team writes its backend in
    Elixir."; through the last number it told when it tells one (`number_lead`,
    LEAD_THROUGH_NUMBERS). A chat turn with recall starts its reply with them, so the model goes on to say
    what the note says instead of what its weights believe. A correction that tells no name or
    number leads through the first word of its own (LEAD_NEW_WORD, `split_at_new_word`): "You
    are learning the cello" for "You are learning the cello.". None when the correction opens
    with what it tells (advice, style: "Captain, keep a regular bedtime ...": nothing to follow
    word for word)."""
    if not recalled:
        return None
    prompt, answer = recalled[0]["prompt"], recalled[0]["correction"]
    if LEAD_THROUGH_NUMBERS:
        through = number_lead(prompt, answer)
        if through:
            return through
    lead = split_at_told(prompt, answer)[0]
    if not lead and LEAD_NEW_WORD != "off":
        lead = split_at_new_word(prompt, answer, through=LEAD_NEW_WORD == "through")[0]
    return lead or None


def number_lead(prompt: str, answer: str) -> str | None:
    """`answer` up to and including the last number it told beyond `prompt` (a word with a
    digit: "Your dentist, Dr. Lund, is on +47 22 33 44 55" of "Your dentist, Dr. Lund, is on +47
    22 33 44 55."); None when it tells none."""
    told = {w for w in naming(prompt, answer) if any(c.isdigit() for c in w)}
    ends = [m.end() for m in re.finditer(r"\w+", answer) if m.group().lower() in told]
    return answer[:ends[-1]].strip() if ends else None


def select(recalled: list[dict], margin: float | None) -> list[dict]:
    """The best match, and each other one whose rank (its score, reranked: assistant/rerank.py)
    is within `margin` of it (None: all)."""
    if margin is None or not recalled:
        return list(recalled)
    best = recalled[0]["rank"]
    return [r for r in recalled if r["rank"] >= best - margin]


def render(recalled: list[dict], form: str) -> str:
    """One of the forms measured on the dev set; `FORM` is the one in use (bench/memory.py
    measures more candidates)."""
    if not recalled:
        return ""
    return FORMS[form](recalled)


def _facts(recalled):
    return "Facts about the user:\n" + "\n".join(f"- {r['correction']}" for r in recalled)


def _qa(recalled):
    return "\n".join(f"If asked \"{r['prompt']}\", answer: \"{r['correction']}\"" for r in recalled)


def _notes(recalled):
    lines = "\n".join(f"Q: {r['prompt']}\nA: {r['correction']}" for r in recalled)
    return ("The user corrected you earlier. Use these answers when the question is about the "
            "same thing:\n" + lines)


def _notes_last(recalled):
    """Q/A notes first (an echo of the block's start still carries the answer), a short remark
    on what they are (no instruction worth echoing), and the best answer again as the last line
    before the question (the model then follows it rather than ignoring the notes)."""
    lines = "\n".join(f"Q: {r['prompt']}\nA: {r['correction']}" for r in recalled)
    return lines + "\n(Earlier corrections from the user.)\n" + recalled[0]["correction"]


FORMS = {"facts": _facts, "qa": _qa, "notes": _notes, "notes_last": _notes_last}
FORM = "notes_last"
