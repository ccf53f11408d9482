"""Scoped adapters: an adapter answers only the prompts it was trained for.

Why: fine-tuning the shared weights of the 135M model to learn a user's corrections also tips
over general knowledge it holds by a thin margin (bench/results/learn-dev.md: every setting
that learned lost 8-13 of 40 canaries; even 9 steps that taught nothing lost 5). So, as in
retrieval-routed model editing (GRACE, WISE), each adapter version records its scope, the user
prompts it was trained on (its ancestors' included, `meta.json` "scope"), and a prompt is
answered with the adapter only when its MiniLM embedding is within the scope's threshold of one
of them, or clearly nearer one of them than any ordinary request (the scope's "margin",
matching.relevant: "Where does my team file tickets?" is 0.39 from "What is my team's issue
tracker?" but 0.17 from every generic prompt); every other prompt is answered by the base
weights, exactly as before any training.
The answer itself still comes from the adapter's weights: nothing is put into the prompt.
Matching is recall's (assistant/matching.py `KeyIndex`, with its guards: a prompt about the
user covers only questions about the user, or ones naming something its answer told; "What do
you call a baby cat?" near "What is my cat's name?" was answered "Your baby cat is called
Pemberton." by the adapter before, bench/results/learn-dev.md).
A habit taught by style corrections ("Captain, ...") must reach every prompt, so a version
may also hold a habit adapter (`habit/`, learning/habits.py) that answers the prompts outside
its scope instead of the base weights.

Contract: `AdapterScope(embedder, reranker=None).covers(path, text)` -> bool; an adapter directory without
a scope (older versions, hand-made adapters, `scope_threshold` None) covers every prompt.
`route(version, path, text)` -> the (served-model key, path) that answers `text` (`route_from`: and
the feedback ids of the learned question it matched): the version
itself, one of its per-correction experts (key `(version, "expert:<name>")`, learning/experts.py:
the nearest trained prompt, or correction prompt followed by its answer, is that correction's;
with a reranker, the nearest `MatchPolicy.top_k` experts that matched are reordered by the
chat model, assistant/rerank.py),
its habit adapter (key `(version, "habit")`) or the base weights (None, None).
Scopes are read once per directory (versions never change after they are written).
`routing_keys(experts, prompts, answer_keys)` -> the search keys and their owners a scope routes
by (bench/gpu.py embeds the same list ahead of a GPU run).
"""
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from assistant.language import about_user, words
from assistant.matching import (
    ROUTING_POLICY,
    KeyIndex,
    Link,
    MatchPolicy,
    answer_key,
    learned,
    linked_keys,
    ordinary_requests,
    rank,
    readable,
    same_thing,
    unit_rows,
)
from store.manifest import EXPERTS_DIR, habit_path, read_experts, read_scope

EXPERT_KEY = "expert:"  # served-model keys of experts: (version, "expert:<name>")


def _expert(version: int, path, adapter: str) -> tuple[tuple, str]:
    """The served-model key and directory of expert adapter `adapter` of the version at `path`."""
    return (version, f"{EXPERT_KEY}{adapter}"), str(Path(path) / EXPERTS_DIR / adapter)


class AdapterScope:
    def __init__(self, embedder=None, reranker=None, policy: MatchPolicy = ROUTING_POLICY):
        """`embedder`: anything with `encode(texts)`; None: `make_embedder()` (all-MiniLM-L6-v2
        unless ASSISTANT_EMBEDDER says otherwise), loaded only when an adapter with a scope is first met.
        `reranker` (assistant/rerank.py) reorders the experts a prompt matched; None: similarity alone.
        `policy`: how close is close enough (assistant/matching.py); each version's meta.json
        threshold and margin replace the policy's."""
        self.reranker = reranker
        self.policy = policy
        if embedder is None:
            from assistant.embedders import make_embedder

            embedder = make_embedder()
        self.embedder = embedder
        self._ordinary = ordinary_requests(embedder)
        self._things = same_thing(embedder)
        self._lock = threading.Lock()
        self._cache: dict[str, _Scope | None] = {}
        self._habits: dict[str, str | None] = {}  # version dir -> its habit adapter's dir
        self._vectors: dict[str, np.ndarray] = {}  # the last scope read's keys, by text (`_embed`)

    def _scope(self, path) -> "_Scope | None":
        key = str(path)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._read(path)
            return self._cache[key]

    def _read(self, path) -> "_Scope | None":
        scope = read_scope(path)
        if scope is None:
            return None
        experts = read_experts(path)
        links = linked_keys([(e.get("prompt") or "", e.get("answer")) for e in experts]) \
            if self.policy.linked_keys else None
        keys, owners, key_pairs = routing_keys(experts, scope["prompts"], self.policy.answer_key, links)
        sources = _sources(keys, owners, experts, scope.get("personal") or (), scope.get("told") or (), links)
        policy = replace(self.policy, threshold=float(scope["threshold"]), relative_margin=scope.get("margin"))
        by_name = {e["name"]: list(e.get("feedback_ids") or ()) for e in experts}
        trained_from = scope.get("sources") or {}
        feedback = [by_name[o] if o in by_name else trained_from.get(k, []) for k, o in zip(keys, owners, strict=True)]
        return _Scope(policy, KeyIndex(self._embed(keys), owners, sources),
                      {e["name"]: e["adapter"] for e in experts}, feedback,
                      {e["name"]: (e.get("prompt") or None, e.get("answer") or None) for e in experts}, key_pairs)

    def _embed(self, keys: list[str]) -> np.ndarray:
        """The keys' unit vectors, embedding only those the last scope read did not have: a new
        version's scope repeats its parent's keys (1,134 on season run 6's tenth version, 1.8 s to
        read afresh) and adds a cycle's. Holds the lock (`_scope`)."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._vectors]
        vectors = dict(self._vectors)
        if todo:
            vectors.update(zip(todo, unit_rows(self.embedder.encode(todo)), strict=True))
        self._vectors = {k: vectors[k] for k in keys}
        return np.stack([vectors[k] for k in keys]) if keys else unit_rows(self.embedder.encode(keys))

    def forget(self, path) -> None:
        """Read the scope at `path` again when next asked: a candidate's meta.json was rewritten
        before its gate (learning/repair.py); versions never change once live."""
        with self._lock:
            self._cache.pop(str(path), None)
            self._habits.pop(str(path), None)

    def warm(self, path) -> None:
        """Read and embed the scope of the adapter at `path` now (the server's adapter watcher
        does this on promotion, so the first request after a swap does not pay for it)."""
        scope = self._scope(path)
        if scope is not None and scope.policy.relative_margin is not None:
            self._ordinary.warm()

    def experts(self, version: int, path) -> list[tuple[tuple, str]]:
        """The served-model key and directory of each expert adapter of the version at `path`, as
        `route` names them (newest first: the corrections most likely asked about soon)."""
        scope = self._scope(path)
        names = [] if scope is None else list(dict.fromkeys(reversed(scope.adapters.values())))
        return [_expert(version, path, name) for name in names]

    def similarity(self, path, text: str) -> float | None:
        """Best cosine similarity of `text` to the scope of the adapter at `path` (None: no scope)."""
        scope = self._scope(path)
        return None if scope is None else float(scope.index.scores(self._query(text)).max())

    def covers(self, path, text: str) -> bool:
        scope = self._scope(path)
        return scope is None or self._match(scope, text) is not None

    def route(self, version: int | None, path, text: str, taken_back=None, taken_back_keys=None) -> tuple:
        """`route_from` without the feedback ids: the (served-model key, path) that answers `text`."""
        return self.route_from(version, path, text, taken_back, taken_back_keys)[:2]

    def route_from(self, version: int | None, path, text: str, taken_back=None, taken_back_keys=None) -> tuple:
        """(served-model key, path, feedback ids): what answers `text` and the feedback whose learned
        question it matched (empty when no correction's was: a habit, the base, no scope).
        `taken_back(feedback_ids) -> bool`: was any of them taken back since the version was
        trained? Then a prompt whose match came from that feedback gets the base weights (None, None),
        whichever adapter learned it: the correction's expert (its group-mates' questions still
        reach it) or the shared adapter. `taken_back_keys`: the search keys of every correction
        taken back (assistant/memory.py `Memory.taken_back_keys`; MatchPolicy.taken_back_floor)."""
        scope = None if version is None or path is None else self._scope(path)
        if scope is None:
            return version, path, ()
        best = self._match(scope, text, taken_back_keys)
        if best is not None:
            learned_from = tuple(scope.feedback[best.key])
            if taken_back is not None and taken_back(list(learned_from)):
                return None, None, ()
            # the nearest trained prompt is a correction's: the expert adapter that learned it
            expert = scope.adapters.get(best.owner)
            return (version, path, learned_from) if expert is None else (*_expert(version, path, expert), learned_from)
        key = str(path)
        with self._lock:  # looked up once per directory, like the scope: not on every turn
            if key not in self._habits:
                habit = habit_path(path)
                self._habits[key] = None if habit is None else str(habit)
            habit = self._habits[key]
        return ((version, "habit"), habit, ()) if habit else (None, None, ())

    def _query(self, text: str):
        return unit_rows(self.embedder.encode([text]))[0]

    def _match(self, scope: "_Scope", text: str, taken_back_keys=None):
        """The matching key (matching.Candidate) whose owner answers `text`: of the nearest
        `top_k` owners that match (threshold or margin, guards), the one that ranks first once
        those whose answer fits `text` are reranked (assistant/rerank.py); None when `text` is
        outside the scope or no answer fits."""
        if not readable(self.embedder, text):
            return None
        top = scope.index.candidates(text, self._query(text), scope.policy, self._ordinary, self._things,
                                     limit=scope.policy.top_k, taken_back=taken_back_keys)
        pairs = [scope.key_pairs.get(c.key) or scope.pairs.get(c.owner, (None, None)) for c in top]
        ranked = rank(text, top, pairs, self.reranker, scope.policy)
        return ranked[0][0] if ranked else None


def routing_keys(experts: list[dict], prompts: list[str], answer_keys: bool = True,
                 links: list[list[Link]] | None = None) -> tuple[list[str], list[str | None], dict[int, tuple]]:
    """The texts a prompt is matched against and, per text, the expert that answers it (None: the
    version's shared adapter): the scope's prompts, owned by the expert trained on them (the
    newest when several were), and with `answer_keys` (MatchPolicy.answer_key) each expert's
    prompt followed by its answer, as recall finds a correction: a paraphrase may lie nearer what
    the answer says than the question's words (bench/results/routing.md); with `links`
    (matching.linked_keys over the experts, MatchPolicy.linked_keys), each expert's linked keys,
    whose rows the third value maps to the (question, answer) a match on one is ranked by."""
    owner = {q: e["name"] for e in experts for q in e.get("prompts") or [e["prompt"]]}
    answered = [(answer_key(e["prompt"], e["answer"]), e["name"]) for e in experts
                if e.get("answer") and answer_keys]
    through = [(link, e["name"]) for e, expert_links in zip(experts, links or [[]] * len(experts), strict=True)
               for link in expert_links]
    keys = prompts + [k for k, _ in answered] + [link.key for link, _ in through]
    owners = [owner.get(p) for p in prompts] + [n for _, n in answered] + [n for _, n in through]
    first = len(keys) - len(through)
    return keys, owners, {first + i: link.ranked_as for i, (link, _) in enumerate(through)}


def _sources(keys: list[str], owners: list[str | None], experts: list[dict], personal, told,
             links: list[list[Link]] | None = None) -> list:
    """Per routing key, what the guards know of the question it came from (matching.Learned). A
    key an expert owns came from that expert's corrected prompt and answer, which decide (a key
    of its own words about the user counts as about the user too); another key, the shared
    adapter's, by its own words, the scope's "personal" list (scope_personal) and what all the
    scope's answers told (the scope's "told": the shared adapter learned them together). The
    expert's linked keys (`links`) say what the names its question uses are (matching.learned `through`)."""
    personal, told = set(personal), frozenset(told)
    links = links or [[]] * len(experts)
    by_name = {e["name"]: learned(e.get("prompt") or "", e.get("answer"),
                                  through=tuple(link.naming for link in expert_links))
               for e, expert_links in zip(experts, links, strict=True)}
    sources = []
    for k, o in zip(keys, owners, strict=True):
        if o in by_name:
            source = by_name[o]
            sources.append(source if source.personal or not about_user(words(k))
                           else replace(source, personal=True))
        else:
            sources.append(learned(k, personal=about_user(words(k)) or k in personal, told=told))
    return sources


@dataclass
class _Scope:
    policy: MatchPolicy  # the scope's threshold and margin over AdapterScope.policy
    index: KeyIndex  # one key per scope prompt, then per expert's answer key (routing_keys)
    adapters: dict[str, str]  # a correction's expert name -> the adapter directory that learned it
    feedback: list[list[str]]  # per key, the feedback it came from: its expert's correction, or
    # the scope's "sources" for a shared adapter's prompt ([] unknown)
    pairs: dict[str, tuple]  # expert name -> (the question it corrected, the answer it learned), for rerank
    key_pairs: dict[int, tuple]  # a linked key's row -> the pair a match on it is ranked by (routing_keys)
