"""Supersession by meaning: which earlier corrections a new one replaces.

Why: a user who corrects "Which car do I own?" to a new car has changed the answer to "What car
do I drive?" too. If the old correction stayed live, its note and its expert would keep saying
the old car. The store links corrections of the same question itself (store/feedback.py); this
module links corrections of other questions about the same thing, when the correction is
recorded, so that recall, routing and training all read one decision (`superseded_by`).

How: MiniLM proposes the nearest earlier live corrections (question and question + answer, as
recall finds them); the chat model decides, under its base weights, by likelihood:
- `answer` shift: how much less likely each correction's answer is after the other question
  than after its own (per answer token, the worse of the two directions). Two questions about
  one thing leave an answer about as likely; a question about another thing (the mother's
  birthday, not the sister's; the Premium plan, not the Basic one) makes the other answer,
  which names what it is about, clearly less likely.
- `question` shift: how much less likely the new question is after the old answer than after
  the new one (query likelihood, assistant/rerank.py's TEMPLATE, per question token).
- `worst_token`: the most any single answer token loses after the other question (either
  direction). A different fact's answer names what it is about ("return flight", "mother"), and
  that one word becomes far less likely after the other question, while an update's answer about
  the same thing loses little anywhere, even when its wording changes ("You own a green Volvo V60"
  after "What car do I drive?"): the mean dilutes that one word over the sentence, the worst token
  does not.
A pair is one fact when the two mean shifts sum within the policy's `tolerance`, or when no answer
token loses more than its `token_tolerance`. Merging two different facts loses one of them for
good, missing an update leaves the old answer beside the new one, so both were chosen on dev sets
of both kinds written before measuring (bench/supersede_dev.jsonl and every earlier correction
MiniLM proposes in the dev scenarios, `python bench/supersede.py`, bench/results/supersede*.md)
for no wrong merge, at the cost of missed updates.

Contract: `Superseder(embedder, judge, policy).decide(new, earlier)` -> the ids of `earlier`
that `new` replaces; `.shifts(new, old)` -> the `Shifts` it decided by;
`supersede_by_meaning(db, feedback_id, superseder)` decides for a stored correction and records
it; `may_replace(db, feedback_id, superseder)` -> what the user is asked to confirm.
A judge is anything with `answer_logprobs(pairs)` and `question_logprobs(pairs)`: per pair,
the log-probability of each of its target's tokens, or None when too long to score (`ModelJudge`).
"""
import json
import logging
from dataclasses import dataclass

import numpy as np

from assistant.matching import KeptVectors, answer_key
from assistant.memo import Kept
from assistant.rerank import PAIR_MAX_TOKENS, TEMPLATE, answer_token_logprobs, target_logprobs
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
    """`answer + question` shifts at most this (mean log-probabilities per token) makes one
    fact. On the dev set (23 updates, 27 pairs of different facts) 0.4 alone links 11 updates and
    merges no different facts; the nearest different pairs sum 0.56 and 0.58, and a held-out run
    once merged a contract's cancellation procedure into the support e-mail's update at 0.44
    (bench/HISTORY.md), so the margin is kept."""
    token_tolerance: float | None = 3.0
    """Or `worst_token` at most this (a log-probability: no answer token 20 times less likely
    after the other question). On the same dev set the different pairs' worst tokens start at
    3.55 (outbound and return flight), among 147 pairs MiniLM proposes in the dev scenarios at
    4.15; 3.0 links 16 of the 23 updates (bench/results/supersede.md). None: the mean shifts alone."""
    ask_tolerance: float | None = 6.0
    """A candidate that is not one fact by the two rules above but whose worst token is at most
    this is offered to the user to confirm ("may replace", `may_replace`; POST
    /v1/corrections/{id}/replaces): the user knows what the model cannot tell. None: never asked."""


@dataclass(frozen=True)
class Shifts:
    """How much less likely each side of a pair is after the other's question or answer
    (log-probabilities, >= 0; infinite when too long to score: never merged by meaning)."""
    answer: float  # per answer token on average, the worse direction
    question: float  # per question token on average
    worst_token: float  # the most any one answer token loses, either direction


@dataclass(frozen=True)
class Correction:
    id: str
    prompt: str
    answer: str


class Superseder:
    KEPT = 256  # pairs whose shifts are remembered: saving a correction, then offering what it may replace

    def __init__(self, embedder, judge, policy: SupersedePolicy | None = None):
        self.embedder, self.judge, self.policy = embedder, judge, policy or SupersedePolicy()
        self._embedded = KeptVectors(embedder)  # every earlier correction is a candidate again each time
        self._kept = Kept(self.KEPT)

    def candidates(self, new: Correction, earlier: list[Correction]) -> list[Correction]:
        """The nearest `policy.candidates` of `earlier` at `policy.min_similarity` or more."""
        if not earlier:
            return []
        texts = [new.prompt, answer_key(new.prompt, new.answer)]
        for c in earlier:
            texts += [c.prompt, answer_key(c.prompt, c.answer)]
        v = self._embedded(texts)
        sims = np.maximum(v[2::2] @ v[0], v[3::2] @ v[1])
        order = [i for i in np.argsort(-sims, kind="stable") if sims[i] >= self.policy.min_similarity]
        return [earlier[i] for i in order[:self.policy.candidates]]

    def shifts(self, new: Correction, old: Correction) -> Shifts:
        """See the module docstring. Remembered for the last KEPT pairs (a correction never changes)."""
        return self._kept.values([(new, old)], lambda todo: [self._shifts(*pair) for pair in todo])[0]

    def _shifts(self, new: Correction, old: Correction) -> Shifts:
        a = self.judge.answer_logprobs([(old.prompt, new.answer), (new.prompt, new.answer),
                                        (new.prompt, old.answer), (old.prompt, old.answer)])
        q = self.judge.question_logprobs([(old.answer, new.prompt), (new.answer, new.prompt)])
        if a is None or q is None or not all(a + q):
            return Shifts(float("inf"), float("inf"), float("inf"))
        new_drops = [own - other for other, own in zip(a[0], a[1], strict=True)]
        old_drops = [own - other for other, own in zip(a[2], a[3], strict=True)]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return Shifts(answer=max(mean(new_drops), mean(old_drops), 0.0),
                      question=max(mean(q[1]) - mean(q[0]), 0.0),
                      worst_token=max(max(new_drops), max(old_drops), 0.0))

    def same_fact(self, shifts: Shifts) -> bool:
        p = self.policy
        return (shifts.answer + shifts.question <= p.tolerance
                or (p.token_tolerance is not None and shifts.worst_token <= p.token_tolerance))

    def unsure(self, shifts: Shifts) -> bool:
        """Not one fact by the policy, yet close enough to ask the user (`ask_tolerance`)."""
        p = self.policy
        return (not self.same_fact(shifts) and p.ask_tolerance is not None
                and shifts.worst_token <= p.ask_tolerance)

    def judged(self, new: Correction, earlier: list[Correction]) -> list[tuple[Correction, Shifts]]:
        """Each candidate of `earlier` (`candidates`) with its shifts against `new`."""
        return [(old, self.shifts(new, old)) for old in self.candidates(new, earlier)]

    def decide(self, new: Correction, earlier: list[Correction]) -> list[str]:
        return [old.id for old, s in self.judged(new, earlier) if self.same_fact(s)]


def supersede_by_meaning(db, feedback_id: str, superseder: Superseder) -> list[str]:
    """Decide which live earlier corrections the correction `feedback_id` replaces and record it.
    Returns their ids (those the store already linked by the same question excluded)."""
    pending = live_with_earlier(db, feedback_id)
    if pending is None:
        return []
    replaced = superseder.decide(*pending)
    if replaced:
        log.info("correction %s replaces %s", feedback_id, ", ".join(replaced))
    return feedback.supersede(db, replaced, feedback_id)


def live_corrections(db, up_to: str) -> list[Correction]:
    """The live corrections (not replaced, quarantined or in a don't-learn conversation) with ids
    up to `up_to`, oldest first."""
    rows = db.query(
        "SELECT f.id, f.correction, t.user_message FROM feedback f JOIN turns t ON t.id = f.turn_id "
        "JOIN conversations c ON c.id = t.conversation_id WHERE f.kind = 'correction' AND f.quarantined = 0 "
        "AND c.no_learn = 0 AND f.superseded_by IS NULL AND f.id <= ? ORDER BY f.id", [up_to])
    return [Correction(r["id"], r["user_message"], r["correction"]) for r in rows]


def may_replace(db, feedback_id: str, superseder: Superseder) -> list[Correction]:
    """The earlier live corrections the live correction `feedback_id` may replace, for the user to
    confirm: those the policy could not decide (`Superseder.unsure`), nearest first, then those the
    corrected reply was answered from (`answered_from`) that the policy kept apart. A reply
    answered from an earlier correction and then corrected is the user saying that correction's
    answer is wrong for this question: an update, or a question it should not have answered, which
    only the user can tell (recall's matcher cannot either: bench/HISTORY.md, 2026-12-05)."""
    pending = live_with_earlier(db, feedback_id)
    if pending is None:
        return []
    new, earlier = pending
    unsure = [old for old, s in superseder.judged(new, earlier) if superseder.unsure(s)]
    answered = set(answered_from(db, feedback_id))
    return unsure + [c for c in earlier if c.id in answered and c not in unsure]


def answered_from(db, feedback_id: str) -> list[str]:
    """The feedback the reply that `feedback_id` corrects was answered from: the learned question
    its route matched (chat.Turn.answered_from) and the first note recalled into its prompt."""
    row = db.execute("SELECT t.answered_from_json, t.recalled_json FROM feedback f JOIN turns t ON t.id = f.turn_id "
                     "WHERE f.id = ?", [feedback_id]).fetchone()
    if row is None:
        return []
    return list(dict.fromkeys(json.loads(row[0] or "[]") + json.loads(row[1] or "[]")[:1]))


def live_with_earlier(db, feedback_id: str) -> tuple[Correction, list[Correction]] | None:
    """The live correction `feedback_id` and the live ones before it; None when it is not live
    (replaced already, taken back, or not a correction)."""
    live = live_corrections(db, feedback_id)
    if not live or live[-1].id != feedback_id:
        return None
    return live[-1], live[:-1]


class ModelJudge:
    """Log-probabilities of each target token under a ServedModel's base weights
    (rerank.target_logprobs); None for a batch with a pair longer than PAIR_MAX_TOKENS."""

    def __init__(self, served, system_prompt: str):
        self.served, self.system_prompt = served, system_prompt

    def answer_logprobs(self, pairs: list[tuple[str, str]]) -> list[list[float]] | None:
        """Per (question, answer): the answer's tokens after the question in the chat template."""
        return answer_token_logprobs(self.served, self.system_prompt, pairs)

    def question_logprobs(self, pairs: list[tuple[str, str]]) -> list[list[float]] | None:
        """Per (answer, question): the question's tokens after TEMPLATE(answer) (assistant/rerank.py)."""
        tok = self.served.tokenizer
        return target_logprobs(self.served, [(tok(TEMPLATE.format(answer=a.strip()), add_special_tokens=False)["input_ids"],
                                              tok(" " + q.strip(), add_special_tokens=False)["input_ids"])
                                             for a, q in pairs], PAIR_MAX_TOKENS)
