"""How the chat tab's chatbot shows a turn, as Gradio "messages" dicts; pure functions, no runtime.

Contract
- A turn is a block: user message, [cut notice], answered-by note, reply, [the user's
  correction] (`turn_block`). The answered-by note's title starts with ANSWERED_MARK and says
  what wrote the reply (a version or the base model, an expert or a habit opening, how many
  recalled notes, a cut at the token limit); its body lists the recalled notes and what each
  part means (`answered_note`). Notes are assistant messages with a metadata title (`note`,
  `is_note`); the page hides the like/retry/edit buttons of a note (ui.MOUNT_OPTIONS css).
- `text_of` reads message content as plain text, whatever shape Gradio hands back.
The handlers that fill these blocks are assistant/ui_chat.py's.
"""
CUT_TITLE = "⚠ Message cut"
ANSWERED_MARK = "ℹ"  # starts the title of a turn's answered-by note
CORRECTION_TITLE = "✎ Your correction"


def text_of(content) -> str:
    """Message content as plain text, whatever shape Gradio hands back (str, part dict, list)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(p) for p in content)
    return str(content)


def note(title: str, text: str) -> dict:
    return {"role": "assistant", "content": text, "metadata": {"title": title}}


def is_note(message: dict) -> bool:
    return bool((message.get("metadata") or {}).get("title"))


def recall_text(recalled: list[dict]) -> str:
    # No score: it is the best of several search keys (the question's reframings too), so a
    # paraphrase reads "similarity 1.00", which claims more than it means.
    return "Used to answer:\n" + listed(recalled)


def listed(corrections: list[dict]) -> str:
    """Corrections as a list of “question” → “answer” lines."""
    return "\n".join(f"- “{c['prompt']}” → “{c['correction']}”" for c in corrections)


def answered_note(answered: dict | None, recalled: list[dict] = ()) -> dict:
    """The note saying what wrote a reply. `answered`: {"version", "by" (chat.Turn.answered_by),
    "cut_at" (the token limit the reply stopped at, or None), "learned_from" (the corrections whose
    learned question routed it, store.feedback.corrections)}; None while it is not known yet.
    One short title, so it reads as a line under the question; the details are in its body."""
    n = len(recalled)
    if answered is None:
        return note(f"{ANSWERED_MARK} answering…", recall_text(recalled) if n else "Answering…")
    version, by, cut_at = answered.get("version"), answered.get("by"), answered.get("cut_at")
    parts = ["answered by " + ("the base model" if version is None else f"v{version}")]
    lines = ["No adapter: the model's own weights wrote it." if version is None else
             f"v{version}: the adapter version that was live (see Versions)."]
    if version is not None and by == "expert":
        parts.append("expert")
        lines.append("Expert: the small adapter trained on one of your corrections answered.")
    elif version is not None and by == "habit":
        parts.append("habit opening")
        lines.append("Habit opening: the habit adapter chose the first words, the base model the rest.")
    if version is not None and answered.get("learned_from"):
        lines.append("Learned from:\n" + listed(answered["learned_from"]))
    if n:
        parts.append(f"recalled {n} note{'s' * (n != 1)}")
        lines.append(recall_text(recalled))
    if cut_at:
        parts.append(f"cut at {cut_at} tokens")
        lines.append(f"The reply reached the limit of {cut_at} new tokens and stops there: "
                     "raise “Max new tokens” in Settings for longer replies.")
    said = note(f"{ANSWERED_MARK} " + " · ".join(parts), "\n\n".join(lines))
    said["metadata"]["status"] = "done"  # the page shows it folded: one line, details on a click
    return said


def answered_of(version, by, finish_reason, max_new_tokens, learned_from: list[dict] = ()) -> dict:
    """`answered_note`'s argument from what a turn records."""
    return {"version": version, "by": by, "cut_at": max_new_tokens if finish_reason == "length" else None,
            "learned_from": list(learned_from)}


def turn_block(user_message: str, reply: str, *, notice: str | None = None,
               recalled: list[dict] = (), correction: str | None = None,
               answered: dict | None = None) -> list[dict]:
    # Notes before the reply, except the user's own correction: the chatbot puts its ↻ button
    # on the last message only, and that must be an answer, not a note (notes carry no buttons).
    block = [{"role": "user", "content": user_message}]
    if notice:
        block.append(note(CUT_TITLE, notice))
    block.append(answered_note(answered, recalled))
    block.append({"role": "assistant", "content": reply})
    if correction:
        block.append(note(CORRECTION_TITLE, correction))
    return block
