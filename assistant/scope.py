"""Scoped adapters: an adapter answers only the prompts it was trained for.

Why: fine-tuning the shared weights of the 135M model to learn a user's corrections also tips
over general knowledge it holds by a thin margin (bench/results/learn-dev.md: every setting
that learned lost 8-13 of 40 canaries; even 9 steps that taught nothing lost 5). So, as in
retrieval-routed model editing (GRACE, WISE), each adapter version records its scope, the user
prompts it was trained on (its ancestors' included, `meta.json` "scope"), and a prompt is
answered with the adapter only when its MiniLM embedding is within the scope's threshold of one
of them, or clearly nearer one of them than any ordinary request (the scope's "margin",
memory.relevant: "Where does my team file tickets?" is 0.39 from "What is my team's issue
tracker?" but 0.17 from every generic prompt); every other prompt is answered by the base
weights, exactly as before any training.
The answer itself still comes from the adapter's weights: nothing is put into the prompt.
A prompt about the user ("What is my cat's name?") covers only questions about the user, or
ones naming something the adapter's answers told ("told" in the scope), as in recall
(assistant/memory.py FIRST_PERSON): "What do you call a baby cat?" near it was answered "Your
baby cat is called Pemberton." by the adapter (bench/results/learn-dev.md).
A habit taught by style corrections ("Captain, ...") must reach every prompt, so a version
may also hold a habit adapter (`habit/`, learning/habits.py) that answers the prompts outside
its scope instead of the base weights.

Contract: `AdapterScope(embedder, reranker=None).covers(path, text)` -> bool; an adapter directory without
a scope (older versions, hand-made adapters, `scope_threshold` None) covers every prompt.
`route(version, path, text)` -> the (served-model key, path) that answers `text`: the version
itself, one of its per-correction experts (key `(version, "expert:<name>")`, learning/experts.py:
the nearest trained prompt, or correction prompt followed by its answer, is that correction's;
with a reranker, the nearest RERANK_CANDIDATES experts that matched are reordered by the chat
model, assistant/rerank.py),
its habit adapter (key `(version, "habit")`) or the base weights (None, None).
Scopes are read once per directory (versions never change after they are written).
"""
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assistant.memory import (
    DEFAULT_TOP_K,
    about_user,
    answer_key,
    asks_way,
    may_answer,
    named_things,
    ordinary_requests,
    readable,
    referred,
    told_words,
    unit_rows,
    words,
)
from assistant.rerank import fitting, reranked
from store.manifest import EXPERTS_DIR, habit_path, read_experts, read_scope
from store.text import (
    question_and_answer,
    scope_prompts,  # noqa: F401  (re-exported: bench/gpu.py imports it from here)
)

EXPERT_KEY = "expert:"  # served-model keys of experts: (version, "expert:<name>")
EXPERT_ANSWER_KEYS = True  # route by each expert's prompt + answer too (_routing_keys)
RERANK_CANDIDATES = DEFAULT_TOP_K  # experts reranked, as many as recall reranks notes


def scope_told(rows: list[dict]) -> list[str]:
    """What the answers to questions about the user told (memory.told_words), all rows together."""
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


class AdapterScope:
    def __init__(self, embedder=None, reranker=None):
        """`embedder`: anything with `encode(texts)`; None: `make_embedder()` (all-MiniLM-L6-v2
        unless ASSISTANT_EMBEDDER says otherwise), loaded only when an adapter with a scope is first met.
        `reranker` (assistant/rerank.py) reorders the experts a prompt matched; None: similarity alone."""
        self.reranker = reranker
        if embedder is None:
            from assistant.embedders import make_embedder

            embedder = make_embedder()
        self.embedder = embedder
        self._ordinary = ordinary_requests(embedder)
        self._lock = threading.Lock()
        self._cache: dict[str, _Scope | None] = {}
        self._habits: dict[str, str | None] = {}  # version dir -> its habit adapter's dir

    def _scope(self, path) -> "_Scope | None":
        key = str(path)
        with self._lock:
            if key not in self._cache:
                scope = read_scope(path)
                if scope is None:
                    self._cache[key] = None
                else:
                    experts = read_experts(path)
                    keys, owners = _routing_keys(experts, scope["prompts"])
                    self._cache[key] = _Scope(
                        float(scope["threshold"]), scope.get("margin"), unit_rows(self.embedder.encode(keys)),
                        *_key_kinds(keys, owners, experts, scope.get("personal") or ()),
                        set(scope.get("told") or ()), owners,
                        {e["name"]: list(e.get("feedback_ids") or ()) for e in experts},
                        {e["name"]: e.get("answer") or None for e in experts},
                        {e["name"]: e.get("prompt") or None for e in experts})
            return self._cache[key]

    def warm(self, path) -> None:
        """Read and embed the scope of the adapter at `path` now (the server's adapter watcher
        does this on promotion, so the first request after a swap does not pay for it)."""
        scope = self._scope(path)
        if scope is not None and scope.margin is not None:
            self._ordinary.warm()

    def similarity(self, path, text: str) -> float | None:
        """Best cosine similarity of `text` to the scope of the adapter at `path` (None: no scope)."""
        scope = self._scope(path)
        return None if scope is None else self._best(scope, text, self._query(text))

    def covers(self, path, text: str) -> bool:
        scope = self._scope(path)
        return scope is None or self._match(scope, text) is not None

    def route(self, version: int | None, path, text: str) -> tuple:
        scope = None if version is None or path is None else self._scope(path)
        if scope is None:
            return version, path
        best = self._match(scope, text)
        if best is not None:
            expert = scope.experts[best]  # the nearest trained prompt is a correction's: its expert
            return (version, path) if expert is None else (
                (version, f"{EXPERT_KEY}{expert}"), str(Path(path) / EXPERTS_DIR / expert))
        key = str(path)
        with self._lock:  # looked up once per directory, like the scope: not on every turn
            if key not in self._habits:
                habit = habit_path(path)
                self._habits[key] = None if habit is None else str(habit)
            habit = self._habits[key]
        return ((version, "habit"), habit) if habit else (None, None)

    def expert_feedback(self, path, name: str) -> list[str]:
        """The feedback ids of the correction the expert `name` of the version at `path` learned."""
        scope = self._scope(path)
        return [] if scope is None else scope.expert_feedback.get(name, [])

    def _query(self, text: str) -> np.ndarray:
        return unit_rows(self.embedder.encode([text]))[0]

    def _best(self, scope: "_Scope", text: str, query: np.ndarray) -> float:
        return float(self._sims(scope, text, query).max())

    def _match(self, scope: "_Scope", text: str) -> int | None:
        """The index of the scope prompt nearest `text` when it counts as a match (threshold, or
        margin above ordinary requests); None when `text` is outside the scope."""
        if not readable(self.embedder, text):
            return None
        query = self._query(text)
        sims = self._sims(scope, text, query)
        matched = np.flatnonzero(self._ordinary.relevant(sims, query, scope.threshold, scope.margin))
        return None if not len(matched) else self._reranked(scope, text, sims, matched)

    def _reranked(self, scope: "_Scope", text: str, sims: np.ndarray, matched: np.ndarray) -> int | None:
        """Of the matched keys, the best one of the expert that ranks first once the nearest
        RERANK_CANDIDATES experts (by their best key) whose answer fits `text` are reranked
        (assistant/rerank.py); None when no answer fits."""
        nearest: dict = {}  # expert (None: the shared adapter) -> its best matched key
        for i in matched[np.argsort(-sims[matched], kind="stable")]:
            nearest.setdefault(scope.experts[i], int(i))
        keys = list(nearest.values())[:RERANK_CANDIDATES]
        fit = fitting(self.reranker, text, [(scope.questions.get(scope.experts[i]), scope.answers.get(scope.experts[i]))
                                            for i in keys])
        keys = [i for i, ok in zip(keys, fit, strict=True) if ok]
        if not keys:
            return None
        ranks = reranked(text, [sims[i] for i in keys], [scope.answers.get(scope.experts[i]) for i in keys],
                         self.reranker)
        return keys[int(np.argmax(ranks))]

    def _sims(self, scope: "_Scope", text: str, query: np.ndarray) -> np.ndarray:
        """Similarity of `text` (embedded: `query`) to each scope prompt; -1 for those that may
        not answer it (memory.may_answer)."""
        sims = scope.matrix @ query
        asked = words(text)
        if not may_answer(asked, True, scope.told):  # only prompts not about the user may, or
            # those whose question named a thing this one names with "the" (memory.REFERRING)
            refers = np.zeros(len(sims), dtype=bool)
            for name in referred(text):
                refers[scope.things.get(name, [])] = True
            sims = np.where(scope.personal & ~refers, -1.0, sims)
        elif not may_answer(asked, True, scope.told, other_kind=asks_way(text)):  # or "how" ones
            sims = np.where(scope.personal & ~scope.ways, -1.0, sims)
        return sims


def _routing_keys(experts: list[dict], prompts: list[str]) -> tuple[list[str], list[str | None]]:
    """The texts a prompt is matched against and, per text, the expert that answers it (None: the
    version's shared adapter): the scope's prompts, owned by the expert trained on them (the
    newest when several were), and each expert's prompt followed by its answer, as recall finds
    a correction (memory.answer_key): a paraphrase may lie nearer what the answer says than the
    question's words. On the dev sets (`python bench/routing.py`) that sends 186 instead of 184 of
    192 paraphrases to their own expert, 1 instead of 2 to another one, and none of 60 unrelated
    questions to an expert either way."""
    owner = {q: e["name"] for e in experts for q in e.get("prompts") or [e["prompt"]]}
    answered = [(answer_key(e["prompt"], e["answer"]), e["name"]) for e in experts
                if e.get("answer") and EXPERT_ANSWER_KEYS]
    return prompts + [k for k, _ in answered], [owner.get(p) for p in prompts] + [n for _, n in answered]


def _key_kinds(keys: list[str], owners: list[str | None], experts: list[dict], personal) -> tuple:
    """Per routing key: is it about the user, does it ask how (memory.asks_way), and what things
    did its question name (memory.named_things)? A key an expert owns came from that expert's
    corrected prompt, which decides all three (with its own words
    for "about the user"); another key by its own words or, for "about the user", the scope's
    "personal" list (scope_personal; missing from versions written before it)."""
    personal = set(personal)
    prompt_of = {e["name"]: e.get("prompt") or "" for e in experts}
    source = [prompt_of.get(o, k) for k, o in zip(keys, owners, strict=True)]
    return (np.array([about_user(words(k)) or k in personal or about_user(words(q))
                      for k, q in zip(keys, source, strict=True)]),
            np.array([asks_way(q) for q in source]), _rows_naming([named_things(q) for q in source]))


def _rows_naming(things: list[frozenset]) -> dict[tuple[str, str], list[int]]:
    """(answer kind, head noun) -> the routing keys whose question named it: a question is matched
    against the things it names, not every key against the question (10,000 corrections make
    about 100,000 keys)."""
    index: dict[tuple[str, str], list[int]] = {}
    for i, named in enumerate(things):
        for name in named:
            index.setdefault(name, []).append(i)
    return index


@dataclass
class _Scope:
    threshold: float
    margin: float | None  # memory.relevant: None for versions written before it (threshold only)
    matrix: np.ndarray  # one unit row per scope prompt, then per expert's answer key (_routing_keys)
    personal: np.ndarray  # per matrix row: is it about the user?
    ways: np.ndarray  # per matrix row: does the question it came from ask how?
    things: dict  # (answer kind, head noun) -> the matrix rows whose question named it (_rows_naming)
    told: set[str]
    experts: list[str | None]  # per matrix row: the expert that answers it (None: the shared adapter)
    expert_feedback: dict[str, list[str]]  # expert name -> the feedback ids it learned
    answers: dict[str, str | None]  # expert name -> the answer it learned (for assistant/rerank.py)
    questions: dict[str, str | None]  # expert name -> the question it corrected (for rerank.fitting)

