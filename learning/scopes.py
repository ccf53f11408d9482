"""What a version's scope records besides its prompts (meta.json "scope", read by
assistant/scope.py): computed from the version's training rows when the learner writes it.

Contract: `scope_told(rows)` -> the names and numbers the answers to questions about the user
told; `scope_personal(rows)` -> the prompts that came from a question about the user though their
own words do not say so; `told_by_answers(pairs)` -> the told words of (question, answer) pairs;
`scope_sources(rows, inherited)` -> per prompt, the feedback ids it was trained from.
"""
from assistant.language import about_user, told_words, words
from store.text import question_and_answer


def scope_told(rows: list[dict]) -> list[str]:
    """What the answers to questions about the user told (language.told_words), all rows together."""
    return sorted(told_by_answers(map(question_and_answer, rows)))


def told_by_answers(pairs) -> set[str]:
    """What the answers of (question, answer) pairs told, counting only questions about the user."""
    return {w for q, a in pairs if q is not None and about_user(words(q)) for w in told_words(q, a)}


def scope_personal(rows: list[dict]) -> list[str]:
    """The prompts that came from a question about the user though their own words do not say so:
    the keyword rewrite "taxes?" of "Who does my taxes?" (learning/augment.py). Rows come from the
    same question when they share feedback ids. Without this, such a prompt let the FIRST_PERSON
    guard pass general questions: "Is the cello hard to learn?" went to the expert of "Which
    instrument am I learning?" by its rewrite "instrument am learning?" (`python bench/routing.py`,
    bench/recall_dev_related.jsonl)."""
    questions: dict[tuple, list[str]] = {}
    for row in rows:
        q, _ = question_and_answer(row)
        if q is not None:
            questions.setdefault(tuple(row.get("feedback_ids") or (q,)), []).append(q)
    return sorted({q for qs in questions.values() if any(about_user(words(q)) for q in qs)
                   for q in qs if not about_user(words(q))})


def scope_sources(rows: list[dict], inherited: dict | None = None) -> dict[str, list[str]]:
    """Per prompt, the feedback it was trained from (`inherited`: the parent's, for the prompts it
    kept). Why: a correction the shared adapter learned and the user then took back must stop
    reaching it at once (assistant/scope.py route), not only with the next version."""
    trained: dict[str, list[str]] = {}
    for row in rows:
        q, _ = question_and_answer(row)
        if q is not None and row.get("feedback_ids"):
            trained[q] = list(dict.fromkeys([*trained.get(q, ()), *row["feedback_ids"]]))
    # a prompt trained again answers for this version's feedback: a later correction of the same
    # question replaced the one its parent learned from
    return {**{q: list(ids) for q, ids in (inherited or {}).items()}, **trained}
