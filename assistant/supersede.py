"""Supersession by meaning: which earlier corrections a new one replaces.

Why: a user who corrects "Which car do I own?" to a new car has changed the answer to "What car
do I drive?" too. If the old correction stayed live, its note and its expert would keep saying
the old car. The store links corrections of the same question itself (store/feedback.py); this
module links corrections of other questions about the same thing, when the correction is
recorded, so that recall, routing and training all read one decision (`superseded_by`).

How: MiniLM proposes the nearest earlier live corrections (question and question + answer, as
recall finds them); the chat model decides, under its base weights, by likelihood:
- `answer_shift`: how much less likely each correction's answer is after the other question
  than after its own (per answer token, the worse of the two directions). Two questions about
  one thing leave an answer about as likely; a question about another thing (the mother's
  birthday, not the sister's; the Premium plan, not the Basic one) makes the other answer,
  which names what it is about, clearly less likely.
- `question_shift`: how much less likely the new question is after the old answer than after
  the new one (query likelihood, assistant/rerank.py's TEMPLATE, per question token).
Their sum must stay within the policy's tolerance. Merging two different facts loses one of
them for good, missing an update leaves the old answer beside the new one, so the tolerance was
chosen on a dev set of both kinds written before measuring (bench/supersede_dev.jsonl,
`python bench/supersede.py`, bench/results/supersede.md) for no wrong merge, at the cost of
missed updates.

Contract: `Superseder(embedder, judge, policy).decide(new, earlier)` -> the ids of `earlier`
that `new` replaces; `supersede_by_meaning(db, feedback_id, superseder)` decides for a stored
correction and records it. A judge is anything with `answer_logprobs(pairs)` and
`question_logprobs(pairs)` (mean log-probabilities, see `ModelJudge`).
"""
import logging
from dataclasses import dataclass

import numpy as np

from assistant.matching import answer_key, unit_rows
from assistant.rerank import PAIR_MAX_TOKENS, TEMPLATE, answer_logprobs, mean_logprobs
from store import feedback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupersedePolicy:
    candidates: int = 3
    """Earlier corrections considered: the nearest by MiniLM."""
    min_similarity: float = 0.45
    """MiniLM similarity (question to question, or question + answer to question + answer) an
    earlier correction needs to be considered; recall's own threshold (matching.RECALL_POLICY)."""
    tolerance: float = 0.4
    """`answer_shift + question_shift` at most this (mean log-probabilities per token). On the dev
    set (23 updates, 27 pairs of different facts) 0.4 links 11 updates and merges no different
    facts. The nearest different pairs sum 0.56 (closing a bank account, a multi-sentence answer,
    and the card line's number: the long answer names the company so often that the new question
    is no less likely after it) and 0.58 (guest and staff wifi passwords); the updates sum 0 to
    2.9, and 0.5 would also link those at 0.43 and 0.46. A wrong merge loses a fact for good, so
    the margin is kept: a held-out run merged a contract's cancellation procedure into the support
    e-mail's update at 0.44 (bench/HISTORY.md)."""


@dataclass
class Correction:
    id: str
    prompt: str
    answer: str


class Superseder:
    def __init__(self, embedder, judge, policy: SupersedePolicy | None = None):
        self.embedder, self.judge, self.policy = embedder, judge, policy or SupersedePolicy()

    def candidates(self, new: Correction, earlier: list[Correction]) -> list[Correction]:
        """The nearest `policy.candidates` of `earlier` at `policy.min_similarity` or more."""
        if not earlier:
            return []
        texts = [new.prompt, answer_key(new.prompt, new.answer)]
        for c in earlier:
            texts += [c.prompt, answer_key(c.prompt, c.answer)]
        v = unit_rows(self.embedder.encode(texts))
        sims = np.maximum(v[2::2] @ v[0], v[3::2] @ v[1])
        order = [i for i in np.argsort(-sims, kind="stable") if sims[i] >= self.policy.min_similarity]
        return [earlier[i] for i in order[:self.policy.candidates]]

    def shifts(self, new: Correction, old: Correction) -> tuple[float, float]:
        """(answer_shift, question_shift) of the pair; see the module docstring. >= 0 each."""
        a = self.judge.answer_logprobs([(old.prompt, new.answer), (new.prompt, new.answer),
                                        (new.prompt, old.answer), (old.prompt, old.answer)])
        q = self.judge.question_logprobs([(old.answer, new.prompt), (new.answer, new.prompt)])
        if a == [0.0] * 4:  # too long to score: never merged by meaning
            return float("inf"), float("inf")
        return max(a[1] - a[0], a[3] - a[2], 0.0), max(q[1] - q[0], 0.0)

    def decide(self, new: Correction, earlier: list[Correction]) -> list[str]:
        found = []
        for old in self.candidates(new, earlier):
            if sum(self.shifts(new, old)) <= self.policy.tolerance:
                found.append(old.id)
        return found


def supersede_by_meaning(db, feedback_id: str, superseder: Superseder) -> list[str]:
    """Decide which live earlier corrections the correction `feedback_id` replaces and record it.
    Returns their ids (those the store already linked by the same question excluded)."""
    rows = list(db.query(
        "SELECT f.id, f.correction, t.user_message FROM feedback f JOIN turns t ON t.id = f.turn_id "
        "JOIN conversations c ON c.id = t.conversation_id WHERE f.kind = 'correction' AND f.quarantined = 0 "
        "AND c.no_learn = 0 AND f.superseded_by IS NULL AND f.id <= ? ORDER BY f.id", [feedback_id]))
    if not rows or rows[-1]["id"] != feedback_id:
        return []  # replaced already, taken back, or not a correction
    new = Correction(feedback_id, rows[-1]["user_message"], rows[-1]["correction"])
    earlier = [Correction(r["id"], r["user_message"], r["correction"]) for r in rows[:-1]]
    replaced = superseder.decide(new, earlier)
    if replaced:
        log.info("correction %s replaces %s", feedback_id, ", ".join(replaced))
    return feedback.supersede(db, replaced, feedback_id)


class ModelJudge:
    """Mean log-probabilities per token under a ServedModel's base weights (rerank.target_logprobs)."""

    def __init__(self, served, system_prompt: str):
        self.served, self.system_prompt = served, system_prompt

    def answer_logprobs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Per (question, answer): the answer after the question in the chat template."""
        return answer_logprobs(self.served, self.system_prompt, pairs)

    def question_logprobs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Per (answer, question): the question after TEMPLATE(answer) (assistant/rerank.py)."""
        tok = self.served.tokenizer
        return mean_logprobs(self.served, [(tok(TEMPLATE.format(answer=a.strip()), add_special_tokens=False)["input_ids"],
                                            tok(" " + q.strip(), add_special_tokens=False)["input_ids"])
                                           for a, q in pairs], PAIR_MAX_TOKENS)
