"""Reranking close candidates by what the chat model knows about words.

Why: recall (assistant/memory.py) and expert routing (assistant/scope.py) find a correction by
the MiniLM similarity of the question to the correction's search keys. MiniLM puts some
questions nearer the wrong one of two close corrections: "What's the name of my school?" nearer
"You work at Haukeland Hospital." than "You study at the University of Bergen." The chat model
knows more about what words mean together, so the candidates that matched are reordered by how
likely the model finds the question after the candidate's answer (query likelihood, as in
language-model retrieval): log P(question | TEMPLATE(answer)), under the base weights.

The model only reorders what MiniLM matched: whether anything matches is still MiniLM's
threshold and guards, so a question nothing matched stays unmatched. A candidate's rank is its
similarity plus `weight` times its log-likelihood minus the best candidate's (so <= 0): a clearly
less likely question costs a candidate a few hundredths, a similarity lead larger than that
stands. A candidate more than `gap` behind the nearest is not scored at all. Both numbers are
the matching policy's (assistant/matching.py MatchPolicy.rerank_weight, rerank_gap), chosen on
our dev sets only (`python bench/routing.py --rerank on|off`, never the scenario's probes).

Whether a candidate may answer at all is MiniLM's too, with one check by the model: a matched
correction's answer must fit the question (`fits`). A question about another thing of the same
company or person ("What is Solara's cheapest tariff called?" near the taught "What is the Solara
support number?") shares its names with the correction and lies near it, but makes the answer
("The Solara Energy support line is ...") clearly less likely than the question it corrected does.
So a candidate whose answer is more than `tolerance` less likely per token after the question
than after its own corrected question answers nothing (recall drops the note, routing the expert);
the tolerance is the matching policy's too (MatchPolicy.fit_tolerance, bench/results/answer-fit.md).

Contract: a reranker is anything with `likelihoods(question, answers) -> list[float]` and
optionally `fits(question, corrected, tolerance) -> list[bool]`; `ModelReranker(served)` uses a
ServedModel's base weights and remembers what it scored.
`reranked(question, similarities, answers, reranker, weight=, gap=)` -> the ranks, in the same
order (answers may be None: such a candidate is not scored and keeps its similarity).
`fitting(reranker, question, corrected, tolerance=)` -> per (corrected question, answer), whether
the answer fits `question` (True when there is no model to ask).
"""
import functools
import json
import logging
import threading
from typing import Protocol

from assistant.config import DEFAULT_SYSTEM_PROMPT
from assistant.memo import Kept

# The context a question is scored after (of three wordings tried on the dev sets, one of the two
# that reordered without a loss; bench/HISTORY.md, "Reranking").
TEMPLATE = "Here is something the user told me: {answer}\nA question the user might ask about it:"
# A longer question or answer (in tokens) is not scored: every candidate then gets the same
# likelihood, so MiniLM's order stands. Keeps a huge message from costing a long forward pass
# or running past the model's context.
MAX_TOKENS = 256
# The same for a question and answer scored together (answer fit, supersession): one forward pass's cost.
PAIR_MAX_TOKENS = 384

log = logging.getLogger(__name__)


class Reranker(Protocol):
    def likelihoods(self, question: str, answers: list[str]) -> list[float]: ...


def fitting(reranker, question: str, corrected: list[tuple[str | None, str | None]], *,
            tolerance: float) -> list[bool]:
    """Per (corrected question, answer): does the answer fit `question` within `tolerance` (module
    docstring; MatchPolicy.fit_tolerance)? True for a pair missing either, without a reranker that
    can tell, or when it fails (the check only turns candidates away: a turn never fails for it)."""
    known = [i for i, (q, a) in enumerate(corrected) if q and a]
    ok = [True] * len(corrected)
    if not known or reranker is None or not hasattr(reranker, "fits"):
        return ok
    found = _asked(lambda: reranker.fits(question, [corrected[i] for i in known], tolerance),
                   "answer fit not checked")
    if found is None:  # MiniLM's matches stand
        return ok
    for i, fits in zip(known, found, strict=True):
        ok[i] = bool(fits)
    return ok


def _asked(call, skipped: str):
    """What the model says, or None (logged as `skipped`) when asking fails, e.g. out of memory:
    the model only refines what MiniLM found, so a turn never fails for it."""
    try:
        return call()
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("%s: %s", skipped, e)
        return None


def reranked(question: str, similarities: list[float], answers: list[str | None],
             reranker: Reranker | None, *, weight: float, gap: float | None) -> list[float]:
    """Each candidate's rank (see the module docstring); the similarities themselves when there is
    no reranker, fewer than two candidates with an answer within `gap` of the nearest, or the
    reranker fails (reranking only refines: a turn never fails for it)."""
    lead = max(similarities, default=0.0)
    scored = [i for i, a in enumerate(answers) if a and (gap is None or similarities[i] >= lead - gap)]
    ranks = [float(s) for s in similarities]
    if reranker is None or len(scored) < 2:
        return ranks
    found = _asked(lambda: reranker.likelihoods(question, [answers[i] for i in scored]), "reranking skipped")
    if found is None:  # MiniLM's order stands
        return ranks
    best = max(found)
    for i, likelihood in zip(scored, found, strict=True):
        ranks[i] += weight * (likelihood - best)
    return ranks


class ModelReranker:
    """log P(question | TEMPLATE(answer)) under a ServedModel's base weights (adapters off: a
    candidate's answer must not be favoured because an adapter learned it), one batch per call,
    under the model's lock so no reply is generated meanwhile. Remembers the last CACHE values it
    computed (likelihoods and answer fits): a chat turn asks about the same question twice
    (recall, then the expert's routing); a learner's evaluation gives it a `memo` to keep instead."""

    CACHE = 512

    def __init__(self, served, system_prompt: str = DEFAULT_SYSTEM_PROMPT, answer_fit: bool = True):
        """`answer_fit` off (Config.answer_fit): `fits` lets every match answer."""
        self.served, self.system_prompt, self.answer_fit = served, system_prompt, answer_fit
        self._kept = Kept(self.CACHE)
        self._own_lock = threading.Lock()
        self._own: dict[tuple[str, str], float] = {}  # (corrected question, answer) -> its likelihood
        # what the model said before, kept between processes by a learner's evaluation
        # (learning/scoring.Likelihoods: the gate asks about every earlier correction each cycle)
        self.memo: dict | None = None

    def fits(self, question: str, corrected: list[tuple[str, str]], tolerance: float) -> list[bool]:
        """Per (corrected question, answer): is the answer at most `tolerance` less likely per
        token after `question` than after the corrected question? One batch; the corrected
        questions' own likelihoods are remembered (a correction never changes)."""
        if not self.answer_fit:
            return [True] * len(corrected)
        with self._own_lock:
            own_missing = list(dict.fromkeys(p for p in corrected if p not in self._own))
        if own_missing:  # a batch of its own: a long question must not spoil what is remembered
            own = self._remembered("answer", own_missing, self._answer_logprobs)
            with self._own_lock:
                self._own.update(zip(own_missing, own, strict=True))
        asked = self._remembered("answer", [(question, a) for _, a in corrected], self._answer_logprobs)
        if not any(asked):  # too long to score (answer_logprobs): MiniLM's matches stand
            return [True] * len(corrected)
        with self._own_lock:
            return [self._own[p] - lp <= tolerance for p, lp in zip(corrected, asked, strict=True)]

    def likelihoods(self, question: str, answers: list[str]) -> list[float]:
        return self._remembered("question", [(question, a) for a in answers],
                                lambda pairs: self._score(question, [a for _, a in pairs]))

    def _remembered(self, kind: str, pairs: list[tuple[str, str]], compute) -> list[float]:
        """`compute(pairs)` -> one value per (question, answer), asked only for the pairs not
        remembered: in `memo` when one is set, else among the last CACHE values."""
        keys = [json.dumps([kind, self.system_prompt, q, a]) for q, a in pairs]
        by_key = dict(zip(keys, pairs, strict=True))
        return self._kept.values(keys, lambda todo: compute([by_key[k] for k in todo]), store=self.memo)

    def _answer_logprobs(self, pairs: list[tuple[str, str]]) -> list[float]:
        return answer_logprobs(self.served, self.system_prompt, pairs)

    def _score(self, question: str, answers: list[str]) -> list[float]:
        tok = self.served.tokenizer
        asked = tok(" " + question.strip(), add_special_tokens=False)["input_ids"]
        rows = [(tok(TEMPLATE.format(answer=a.strip()), add_special_tokens=False)["input_ids"], asked)
                for a in answers]
        found = target_logprobs(self.served, rows, MAX_TOKENS)
        return [0.0] * len(answers) if found is None else [float(sum(f)) for f in found]


def target_logprobs(served, rows: list[tuple[list[int], list[int]]], max_tokens: int) -> list[list[float]] | None:
    """Per (context ids, target ids): the log-probability of each target token after the context,
    under the served model's base weights (adapters off: no adapter may favour what it learned),
    in one batch, under the model's lock so no reply is generated meanwhile. None when a row is
    longer than `max_tokens` (one long forward pass is not worth it)."""
    import torch

    width = max(len(c) + len(t) for c, t in rows)
    if width > max_tokens:
        return None
    tok = served.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([c + t + [pad] * (width - len(c) - len(t)) for c, t in rows])
    mask = torch.tensor([[1] * (len(c) + len(t)) + [0] * (width - len(c) - len(t)) for c, t in rows])
    # the vocabulary's logits only from the first position that predicts a target on (the
    # output layer is a fifth of this model's compute per position)
    first = min(len(c) for c, _ in rows) - 1
    keep = {"logits_to_keep": width - first} if _keeps_logits(type(served.base)) else {}
    with served.lock, torch.inference_mode(), served.base_weights():
        logits = served.model(input_ids=ids.to(served.device), attention_mask=mask.to(served.device), **keep).logits
    logprobs = logits.float().log_softmax(-1).cpu()
    skip = width - logprobs.shape[1]  # positions without logits (0 when the model kept them all)
    return [logprobs[i, len(c) - 1 - skip + torch.arange(len(t)), torch.tensor(t, dtype=torch.long)].tolist()
            for i, (c, t) in enumerate(rows)]


@functools.cache
def _keeps_logits(model_class: type) -> bool:
    """Does this model class's forward take `logits_to_keep` (transformers' causal LMs do)? Read
    once per class: every routed turn asks."""
    import inspect

    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def chat_reranker(served, cfg) -> "ModelReranker | None":
    """The reranker the chat uses with Config `cfg` (`rerank`, `answer_fit`): the learner's gate,
    the benchmarks and the server all build it here."""
    if not cfg.rerank:
        return None
    return ModelReranker(served, answer_fit=cfg.answer_fit)


def answer_logprobs(served, system_prompt: str, pairs: list[tuple[str, str]],
                    max_tokens: int = PAIR_MAX_TOKENS) -> list[float]:
    """Per (question, answer): the mean log-probability per token of the answer after the question
    in the chat template, under the base weights; 0.0 for every pair when one is longer than
    `max_tokens` (alike, so no pair stands out for its length)."""
    found = answer_token_logprobs(served, system_prompt, pairs, max_tokens)
    if found is None:
        return [0.0] * len(pairs)
    return [sum(f) / len(f) if f else 0.0 for f in found]


def answer_token_logprobs(served, system_prompt: str, pairs: list[tuple[str, str]],
                          max_tokens: int = PAIR_MAX_TOKENS) -> list[list[float]] | None:
    """Per (question, answer): the log-probability of each answer token after the question in the
    chat template, under the base weights; None when a pair is longer than `max_tokens`."""
    tok = served.tokenizer
    rows = []
    for question, answer in pairs:
        context = tok.apply_chat_template([{"role": "system", "content": system_prompt},
                                           {"role": "user", "content": question}],
                                          tokenize=False, add_generation_prompt=True)
        rows.append((tok(context, add_special_tokens=False)["input_ids"],
                     tok(answer, add_special_tokens=False)["input_ids"]))
    return target_logprobs(served, rows, max_tokens) if rows else []
