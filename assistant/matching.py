"""Matching a question against what was learned: the one mechanism recall (assistant/memory.py)
and expert routing (assistant/scope.py) share.

Contract:
- `MatchPolicy`: every number matching uses, in one documented dataclass. Recall uses
  `RECALL_POLICY`; a version's scope stores its own threshold and margin in meta.json
  (learning/config.py scope_threshold, scope_margin), applied over `ROUTING_POLICY`.
- `KeyIndex(matrix, owners, learned)`: unit vectors of search keys, each owned by an entry (a
  correction, an expert, or None for the shared adapter) and described by a `Learned` (what the
  question it came from asks, told and named). `.candidates(text, query, policy, ...)` -> the
  best matching key per owner, best first: similarity at least the threshold (or the relative
  margin above ordinary requests, `OrdinaryRequests`), and the guards passed (`allowed`).
- `rank(text, candidates, pairs, reranker, policy)`: the candidates whose answer fits the question
  (assistant/rerank.py), ordered by the chat model's likelihood where a reranker is given.
- `allowed(question, source, things, policy)`: the guards, in one place: the language rules
  (assistant/language.py `may_answer`) and, by the embedder, whether a question naming a thing of
  the user's own names the same thing the learned question did (`SameThing`).
- `search_keys(prompt, answer, policy)`: the texts a correction is found by.
"""
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from assistant.language import (
    THING_STOPWORDS,
    about_user,
    asks_way,
    described,
    may_answer,
    name_runs,
    named_things,
    names,
    owned_things,
    referred,
    split_at_told,
    told_words,
    words,
)
from assistant.memo import Kept
from assistant.questions import reframings, replay_prompts
from assistant.rerank import fitting, reranked


class Embedder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class MatchPolicy:
    """How close is close enough. Every value was chosen on the dev sets, never on a scenario's
    probes (bench/HISTORY.md, "Language rules and the matching policy" and "Reranking"):
    - `threshold`: cosine similarity a key must reach (recall: bench/results/memory.dev*.md).
    - `relative_margin`: or this much above the question's similarity to ordinary requests
      (memory.dev-relative*.md); None: the threshold alone.
    - `top_k`: at most this many matches go on (recalled notes; experts reranked).
    - `gap`: a recalled note weaker than the best by more than this leaves the prompt
      (memory.dev-margin*.md); None: all of the top k stay.
    - `same_thing`: a question naming a thing of the user's own ("my wife") matches a learned
      question naming one ("my cat") only when the embedder puts the two phrases at least this
      close (routing-things.md); None: no such check.
    - `same_names`: two questions that each use a name the other's side does not mention are
      about two different named things ("How much does a kWh cost on Fixed 24?" and "What does
      the Sunny Export tariff pay?"; a name: a capital not opening a sentence, language.names),
      and do not match; a name only the asked question uses ("... at Solara?") does not count
      against a learned question that names nothing (bench/results/routing-names-on.md against
      -off.md). Off: names are MiniLM's alone.
    - `same_thing_words`: where only the asked question names a thing of its own ("Who is my
      therapist?" and "Who do I report to now?"), that thing must be one of the learned
      question's and answer's words (but language.THING_STOPWORDS) or at least this close to one
      (routing-thingwords-*.md); None: such a pair is not checked.
    - `taken_back_floor`: a question nearer the search keys of a correction the user took back
      (deleted, marked don't-learn, quarantined) than to a live correction's gets nothing from
      that one: what the user took back is not answered with a neighbour's fact
      (bench/results/taken-back-on.md against -off.md). Off: taken-back corrections are simply gone.
    - `reframed_keys`: how many reframings of a corrected prompt are search keys
      (assistant/questions.py; memory.dev*.md).
    - `answer_key`: the corrected prompt followed by its answer is a search key too
      (memory.dev-answerkey-*.md, routing.md).
    - `rerank_weight`: a reranked candidate's rank is its similarity plus this much times its
      log-likelihood behind the best one (assistant/rerank.py; routing.py --rerank on|off).
    - `rerank_gap`: candidates further than this behind the nearest are not scored by the model
      (0.1 gave the ranks of no gap with a quarter of the forward passes); None: all are.
    - `fit_tolerance`: with the answer-fit check (Config.answer_fit), a matched correction's
      answer may be at most this much less likely (mean log-probability per answer token, base
      weights) after the question than after the question it corrected (assistant/rerank.py
      `fits`); 2.25 loses no own paraphrase on the dev sets (bench/results/answer-fit.md).
    - `linked_keys`: a correction whose question uses a name another correction's answer told
      ("How fast is Spark 30?" after "The cheapest plan is called Spark 30.") is found by its
      question with the name put as that one's question described the thing ("How fast is the
      cheapest plan?"), and it is about what that one is about (`naming_links`, `linked`,
      `learned` through): users ask about a named thing by what it is
      (bench/results/routing-linked-*.md).
    """
    threshold: float = 0.45
    relative_margin: float | None = 0.1
    top_k: int = 3
    gap: float | None = 0.05
    same_thing: float | None = 0.45
    same_names: bool = True
    same_thing_words: float | None = 0.4
    taken_back_floor: bool = True
    reframed_keys: int = 4
    answer_key: bool = True
    rerank_weight: float = 0.02
    rerank_gap: float | None = 0.1
    fit_tolerance: float = 2.25
    linked_keys: bool = True

    def __post_init__(self):
        if not self.fit_tolerance >= 0:  # below 0 not even its own question would fit
            raise ValueError(f"invalid MatchPolicy: fit_tolerance must be >= 0 (got {self.fit_tolerance})")


RECALL_POLICY = MatchPolicy()
ROUTING_POLICY = MatchPolicy(threshold=0.5)  # a version's meta.json threshold and margin replace these


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def readable(embedder, text: str) -> bool:
    """May `text` be matched by its embedding at all (SentenceEmbedder.readable)? Embedders
    without that check (tests' stand-ins) read everything."""
    check = getattr(embedder, "readable", None)
    return True if check is None else check(text)


def answer_key(prompt: str, answer: str) -> str:
    """A correction found by what its answer says (MatchPolicy.answer_key)."""
    return f"{prompt} {answer}"


def naming_links(pairs: list[tuple[str, str | None]]) -> list[list[int]]:
    """Per (question, answer), the others whose answer told one of the names its question uses
    whole (language.told_words, name_runs: "Spark 30", "Ingrid"; a code's letters, "EV" of
    "EV-24245", do not tell "Ember EV"), as the first thing it told (language.split_at_told: the
    name is what it answered, "The cheapest plan is called Spark 30."; not "From January, Spark
    30 charges ...", an answer about something else of it): the corrections that say what the
    named thing is. A name told by more than `MAX_NAMERS` corrections says nothing about which
    thing it is: no link."""
    told = [told_words(q, a or "") for q, a in pairs]
    first = [_first_word(split_at_told(q, a or "")[1]) for q, a in pairs]
    told_by: dict[str, set[int]] = {}
    for j, words_told in enumerate(told):
        for w in words_told:
            told_by.setdefault(w, set()).add(j)
    links = []
    for i, (q, _) in enumerate(pairs):
        found = set()
        for _, _, run in name_runs(q):
            namers = {j for j in set.intersection(*(told_by.get(w, set()) for w in run)) - {i} if first[j] in run}
            if len(namers) <= MAX_NAMERS:
                found |= namers
        links.append(sorted(found))
    return links


MAX_NAMERS = 2  # a name two corrections told may name either ("Ingrid" the sister and the colleague)


def _first_word(text: str) -> str:
    found = re.search(r"\w+", text)
    return found.group().lower() if found else ""


def linked(prompt: str, answer: str, other_prompt: str, other_answer: str) -> tuple[str, tuple[str, str]]:
    """A correction found through the correction that told a name it uses (`naming_links`): its
    search key, and the (question, answer) the fit check and the reranker read for a match on it.
    The key asks with the name put as that correction's question named the thing
    (language.described: "How fast is the cheapest broadband plan?"), else it is followed by that
    correction's answer; the answer comes after the one that told the name ("The cheapest plan is
    called Spark 30. Spark 30 gives up to 30 Mbit/s."), so that the question, which does not use
    the name, is weighed against an answer that says what the name is."""
    asked = described(prompt, told_words(other_prompt, other_answer), other_prompt)
    return asked or answer_key(prompt, other_answer), (asked or prompt, f"{other_answer} {answer}")


@dataclass(frozen=True)
class Link:
    """A correction found through another that told a name its question uses (`linked_keys`)."""
    key: str
    """The search key (`linked`)."""
    ranked_as: tuple[str, str]
    """The (question, answer) the fit check and the reranker read for a match on `key`."""
    naming: tuple[str, str]
    """The naming correction's (question, answer): what the name is (`learned(through=...)`)."""


def linked_keys(pairs: list[tuple[str, str | None]]) -> list[list[Link]]:
    """Per (question, answer), a Link through each correction that told a name its question uses
    (`naming_links`, `linked`); none where either answer is unknown (an old version's expert).
    Recall (assistant/memory.py) and routing (assistant/scope.py) both read this list."""
    return [[Link(*linked(q, a, *pairs[j]), pairs[j]) for j in js if a and pairs[j][1]]
            for (q, a), js in zip(pairs, naming_links(pairs), strict=True)]


def search_keys(prompt: str, answer: str | None = None, policy: MatchPolicy = RECALL_POLICY) -> list[str]:
    """The texts a correction is found by: its prompt, its first `reframed_keys` reframings and,
    with `answer_key`, the prompt followed by its corrected answer."""
    qa = [answer_key(prompt, answer)] if policy.answer_key and answer else []
    return [prompt] + reframings(prompt)[:policy.reframed_keys] + qa


def relevant(scores: np.ndarray, threshold: float, ordinary: float, margin: float | None) -> np.ndarray:
    """Which similarities count as a match: at least `threshold`, or (with a `margin`) at least
    `margin` above the query's similarity to ordinary requests."""
    scores = np.asarray(scores)
    hit = scores >= threshold
    return hit if margin is None else hit | (scores - ordinary >= margin)


class OrdinaryRequests:
    """How near a text is to what users ask in general: its best cosine similarity to the generic
    prompts of learning/replay_prompts.jsonl (capitals, recipes, "How do I plant a tree?"), which
    no correction wrote and no test set chose. Embedded once, on first use (144 prompts)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self._lock = threading.Lock()
        self._matrix: np.ndarray | None = None

    def warm(self) -> np.ndarray:
        """Embed the prompts now (about 0.25 s with MiniLM on this CPU) rather than in a turn."""
        with self._lock:
            if self._matrix is None:
                self._matrix = unit_rows(self.embedder.encode(replay_prompts()))
            return self._matrix

    def similarity(self, query: np.ndarray) -> float:
        """`query`: a unit vector from the same embedder."""
        return float((self.warm() @ query).max())

    def relevant(self, scores, query: np.ndarray, threshold: float, margin: float | None) -> np.ndarray:
        """`relevant` for a query embedded as `query`; the prompts are embedded only when a
        margin asks for them."""
        return relevant(scores, threshold, self.similarity(query) if margin is not None else 0.0, margin)


_SHARED: "weakref.WeakKeyDictionary[Embedder, dict]" = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def _one_per_embedder(embedder: Embedder, kind: type):
    """The one `kind(embedder)` of `embedder`: recall and the adapters' scope share the runtime's
    embedder, and so what it embeds for them (ordinary requests, phrases) is embedded once."""
    with _SHARED_LOCK:
        made = _SHARED.setdefault(embedder, {})
        if kind not in made:
            made[kind] = kind(embedder)
        return made[kind]


def ordinary_requests(embedder: Embedder) -> OrdinaryRequests:
    return _one_per_embedder(embedder, OrdinaryRequests)


class KeptVectors:
    """Unit vectors of texts by `embedder`, the last KEPT remembered (a text's vector never
    changes): what the same-thing check and supersession embed again and again is embedded once."""

    KEPT = 4096

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self._vectors = Kept(self.KEPT)

    def __call__(self, texts) -> np.ndarray:
        """One unit row per text of `texts`, in order."""
        return np.stack(self._vectors.values(texts, lambda todo: list(unit_rows(self.embedder.encode(todo)))))


class SameThing:
    """Do two questions name the same thing of the user's own? MiniLM puts "What is my X's name?"
    near "What is my Y's name?" whatever X and Y, so the sentences cannot tell; the phrases
    alone can ("wife" and "spouse" are close, "wife" and "cat" are not). Phrase vectors are
    kept (`KeptVectors`: a few thousand short texts at most)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self._embedded = KeptVectors(embedder)

    def similarity(self, asked: tuple[str, ...], learned: tuple[str, ...]) -> float:
        """The best cosine similarity between a phrase of `asked` and one of `learned`."""
        a, b = self._embedded(asked), self._embedded(learned)
        return float((a @ b.T).max())

    def allows(self, asked: tuple[str, ...], learned: tuple[str, ...], threshold: float | None) -> bool:
        """True unless both name things of their own and none of them is `threshold` close."""
        if threshold is None or not asked or not learned or set(asked) & set(learned):
            return True
        return self.similarity(asked, learned) >= threshold

    def among(self, asked: tuple[str, ...], learned_words: tuple[str, ...], threshold: float | None) -> bool:
        """For a learned question that names no thing of its own: True unless `asked` names things
        of its own and none of them is one of `learned_words` (the learned question's and answer's
        words) or `threshold` close to one ("my therapist" is none of "Who do I report to now?" /
        "... you report to Declan Moore.")."""
        if threshold is None or not asked or not learned_words:
            return True
        if {w for phrase in asked for w in phrase.split()} & set(learned_words):
            return True
        return self.similarity(asked, learned_words) >= threshold


def same_thing(embedder: Embedder) -> SameThing:
    return _one_per_embedder(embedder, SameThing)


@dataclass(frozen=True)
class Learned:
    """What the guards know about a learned question (and the answer it was taught)."""
    personal: bool  # about the user (language.about_user)
    way: bool  # asks how or what to do (language.asks_way)
    told: frozenset  # names and numbers its answer told (language.told_words)
    things: frozenset  # (answer kind, head noun) it named (language.named_things)
    owned: tuple  # the things it named as the user's own (language.owned_things)
    mentions: frozenset = frozenset()  # every word of the question and its answer (MatchPolicy.same_names)
    names: frozenset = frozenset()  # the names its question used (language.names): what it is about


def learned(question: str, answer: str | None = None, *, personal: bool | None = None,
            told: frozenset | None = None, also_named: tuple[str, ...] = (),
            through: tuple[tuple[str, str | None], ...] = ()) -> Learned:
    """A `Learned` for `question`; `personal` and `told` where the caller knows better than the
    question's own words (a keyword rewrite of a question about the user; a scope's told words),
    `also_named`: questions of the same thing whose owned things count too (ones it replaced).
    `through`: the (question, answer) of corrections that told a name `question` uses
    (`naming_links`): it is about what they are about (their owned things; the user, if they
    are), and a question using the name is about it (the name counts as told)."""
    named_by = tuple(q for q, _ in through)
    owned = tuple(dict.fromkeys(p for q in (question, *also_named, *named_by) for p in owned_things(q)))
    told = frozenset(told_words(question, answer or "")) if told is None else frozenset(told)
    told |= {w for q, a in through for w in told_words(q, a or "")} & names(question)
    if personal is None:
        personal = about_user(words(question)) or any(about_user(words(q)) for q in named_by)
    return Learned(personal=personal,
                   way=asks_way(question), told=told, things=named_things(question), owned=owned,
                   mentions=frozenset(words(question) | words(answer or "") | told),
                   names=frozenset(names(question)))


@dataclass(frozen=True)
class Asked:
    """The question being matched, read once."""
    words: frozenset
    way: bool
    referred: frozenset
    owned: tuple
    names: frozenset = frozenset()  # language.names


def asked(text: str) -> Asked:
    return Asked(frozenset(words(text)), asks_way(text), referred(text), owned_things(text), frozenset(names(text)))


def allowed(question: Asked, source: Learned, things: SameThing | None, policy: MatchPolicy) -> bool:
    """May what was learned from `source` answer `question`? The language guard
    (language.may_answer), the same-names check (MatchPolicy.same_names), then the same-thing
    check (`SameThing`, MatchPolicy.same_thing)."""
    other_kind = question.way and not source.way
    if not may_answer(question.words, source.personal, source.told, other_kind,
                      bool(question.referred & source.things)):
        return False
    if policy.same_names and question.names - source.mentions and source.names - question.words:
        return False
    if things is None:
        return True
    if source.owned:
        return things.allows(question.owned, source.owned, policy.same_thing)
    # a question naming what the answer told is about it, whatever else it names (as may_answer)
    return bool(question.words & source.told) or things.among(
        question.owned, tuple(sorted(source.mentions - THING_STOPWORDS)), policy.same_thing_words)


@dataclass(frozen=True)
class Candidate:
    owner: object  # the KeyIndex owner: a correction's position, an expert's name, None
    key: int  # the matched key's row
    score: float


class KeyIndex:
    """Search keys as unit rows of one matrix; per row, its owner and its `Learned`. One matrix
    product per question: 10,000 corrections (60,000 keys) cost a few milliseconds beyond
    embedding the question."""

    def __init__(self, matrix: np.ndarray, owners: list, sources: list[Learned]):
        if not (len(matrix) == len(owners) == len(sources)):
            raise ValueError(f"{len(matrix)} keys, {len(owners)} owners, {len(sources)} sources")
        self.matrix, self.owners, self.sources = matrix, owners, sources

    def __len__(self) -> int:
        return len(self.owners)

    def scores(self, query: np.ndarray) -> np.ndarray:
        return self.matrix @ query if len(self.owners) else np.zeros(0, dtype=np.float32)

    def candidates(self, text: str, query: np.ndarray, policy: MatchPolicy, ordinary: OrdinaryRequests,
                   things: SameThing | None, limit: int | None = None,
                   taken_back: np.ndarray | None = None) -> list[Candidate]:
        """The best matching key of each owner that may answer `text`, best first; at most `limit`
        owners (the guards, which may embed a phrase, run only until that many are found).
        `taken_back`: the search keys (unit rows) of corrections the user took back; with
        `policy.taken_back_floor`, a key no nearer `text` than the nearest of them does not match."""
        scores = self.scores(query)
        if not len(scores):
            return []
        hits = np.flatnonzero(ordinary.relevant(scores, query, policy.threshold, policy.relative_margin))
        if (policy.taken_back_floor and taken_back is not None and len(taken_back) and len(hits)
                and taken_back.shape[1] == len(query)):  # another embedder's keys mean nothing here
            hits = hits[scores[hits] > float((taken_back @ query).max())]
        question, found, seen = asked(text), [], set()
        for i in hits[np.argsort(-scores[hits], kind="stable")]:
            owner = self.owners[i]
            if owner in seen or not allowed(question, self.sources[i], things, policy):
                continue
            seen.add(owner)
            found.append(Candidate(owner, int(i), float(scores[i])))
            if limit is not None and len(found) >= limit:
                break
        return found


def rank(text: str, candidates: list[Candidate], pairs: list[tuple[str | None, str | None]],
         reranker, policy: MatchPolicy) -> list[tuple[Candidate, float]]:
    """Of `candidates` (each with its learned (question, answer) in `pairs`), those whose answer
    fits `text` (rerank.fitting, within `policy.fit_tolerance`), each with its rank
    (rerank.reranked: the chat model's likelihood, or the score without a reranker), best first."""
    fit = fitting(reranker, text, pairs, tolerance=policy.fit_tolerance)
    kept = [(c, p) for c, p, ok in zip(candidates, pairs, fit, strict=True) if ok]
    ranks = reranked(text, [c.score for c, _ in kept], [p[1] for _, p in kept], reranker,
                     weight=policy.rerank_weight, gap=policy.rerank_gap)
    return sorted(((c, float(r)) for (c, _), r in zip(kept, ranks, strict=True)), key=lambda cr: -cr[1])
