"""Word-neighbour rewrites: a corrected prompt asked with other words for its content words.

The template rewrites (learning/augment.py) vary everything AROUND a question's content words;
what they cannot teach is that "my bike" asks the same as "my bicycle". The embedding model
knows which words lie near each other, so each content word of a corrected prompt is swapped for
its nearest neighbours in the embedder's own vocabulary, and a rewrite is kept only when

- the whole rewritten question stays near the original (`min_similarity`): "Who is my tenant?"
  is a neighbour of "Who is my landlord?" word by word but not a question with the same answer;
- it stays nearer its own corrected prompt than any OTHER corrected prompt, by a margin
  (`own_margin`): a rewrite that reads like another fact's question would teach the facts to
  bleed into each other, the commonest wrong answer on our dev scenario.

Everything here comes from the user's own prompts and the embedding model; no test set. The
vocabulary's embeddings are computed once per embedding model (about 10 s for MiniLM's 21,000
words on this CPU) and cached in the assistant home.
"""
import hashlib
import logging
import re
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_WORD = re.compile(r"[A-Za-z]+")
# Words whose neighbours change what is asked, not how: question words, pronouns, auxiliaries.
_KEEP = set("a an the is are was were be been am do does did have has had i my me mine we our us you your "
            "he his him she her they their them it its of to in on at for from with by about what which "
            "who whom whose where when why how can could would should will shall may might must please "
            "tell remind again this that these those name named called call".split())
_DETERMINERS = set("my our your his her their a an the this that these those which what whose".split())


def vocabulary(embedder) -> list[str]:
    """Whole lower-case words (3+ letters) of the embedder's tokenizer, or [] when it has none."""
    try:
        vocab = embedder.load().tokenizer.get_vocab()
    except AttributeError:
        return []
    return sorted(w for w in vocab if len(w) >= 3 and w.isascii() and w.isalpha() and w.islower())


class WordNeighbours:
    """Nearest words of the embedder's vocabulary, by cosine similarity of their embeddings."""

    def __init__(self, embedder, cache_dir: Path | None = None):
        self.embedder = embedder
        self.words = vocabulary(embedder)
        self.vectors = self._vectors(cache_dir) if self.words else np.zeros((0, 1), np.float32)

    def _vectors(self, cache_dir: Path | None) -> np.ndarray:
        key = hashlib.sha256("\n".join([getattr(self.embedder, "MODEL_ID", type(self.embedder).__name__),
                                        *self.words]).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"word-vectors-{key}.npy" if cache_dir else None
        if cache and cache.exists():
            try:
                return np.load(cache)
            except (OSError, ValueError) as e:  # a torn cache file is rebuilt, not fatal
                log.warning("word vector cache %s unreadable (%s); recomputing", cache, e)
        vectors = np.asarray(self.embedder.encode(self.words), dtype=np.float16)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(cache)
        return vectors

    def of(self, word: str, k: int, min_similarity: float) -> list[str]:
        """Up to `k` nearest other words, nearest first; forms of the word itself are skipped
        ("bicycles" teaches nothing "bicycle" did not)."""
        if not self.words:
            return []
        low = word.lower()
        v = np.asarray(self.embedder.encode([low]), dtype=np.float32)[0]
        scores = self.vectors.astype(np.float32) @ v
        out = []
        for i in np.argsort(-scores):
            if scores[i] < min_similarity or len(out) == k:
                break
            w = self.words[i]
            if not (w.startswith(low[:4]) or low.startswith(w[:4])):
                out.append(w)
        return out


def _swap(question: str, start: int, end: int, word: str) -> str:
    old = question[start:end]
    return question[:start] + (word.capitalize() if old[:1].isupper() else word) + question[end:]


def noun_phrase_words(question: str) -> list[re.Match]:
    """The content words of the question's noun phrases: those after a determiner ("my", "a",
    "which", a possessive 's) up to the next function word. Verbs are left alone: their
    neighbours are mostly other forms or opposites ("keep" -> "kept", "clean" -> "dirty")."""
    out, inside = [], False
    for m in _WORD.finditer(question):
        low = m.group().lower()
        if low in _DETERMINERS or (low == "s" and question[m.start() - 1:m.start()] in "'’"):
            inside = True
        elif low in _KEEP or len(low) < 3:
            inside = False
        elif inside:
            out.append(m)
    return out


def _same_form(word: str, other: str) -> bool:
    """A swap keeps the word's inflection: no "ride" -> "riding", "school" -> "schools"."""
    return all(word.endswith(end) == other.endswith(end) for end in ("ing", "ed", "s"))


def neighbour_rewrites(questions: list[str], embedder, neighbours: WordNeighbours, per_question: int,
                       per_word: int = 4, word_similarity: float = 0.55, min_similarity: float = 0.8,
                       own_margin: float = 0.05) -> dict[str, list[str]]:
    """For each question, up to `per_question` rewrites with one content word swapped for a
    neighbour, the closest to the original first, one per swapped word before a second."""
    if per_question <= 0 or not questions:
        return {q: [] for q in questions}
    candidates: dict[str, list[tuple[str, str]]] = {}  # question -> [(swapped word, rewrite)]
    for q in questions:
        seen, found = {q.lower()}, []
        for m in noun_phrase_words(q):
            for n in (n for n in neighbours.of(m.group(), per_word, word_similarity)
                      if _same_form(m.group().lower(), n)):
                r = _swap(q, m.start(), m.end(), n)
                if r.lower() not in seen:
                    seen.add(r.lower())
                    found.append((m.group().lower(), r))
        candidates[q] = found
    flat = [r for found in candidates.values() for _, r in found]
    if not flat:
        return {q: [] for q in questions}
    own = np.asarray(embedder.encode(questions), dtype=np.float32)
    sims = np.asarray(embedder.encode(flat), dtype=np.float32) @ own.T  # rewrite x corrected prompt
    out, i = {}, 0
    for qi, q in enumerate(questions):
        kept = []
        for word, r in candidates[q]:
            s = sims[i]
            i += 1
            others = np.delete(s, qi)
            if s[qi] >= min_similarity and (others.size == 0 or s[qi] - others.max() >= own_margin):
                kept.append((float(s[qi]), word, r))
        kept.sort(key=lambda t: -t[0])
        # each swapped word's closest rewrite first, so a question's every content word gets a synonym
        swapped, firsts, rest = set(), [], []
        for _, word, r in kept:
            (rest if word in swapped else firsts).append(r)
            swapped.add(word)
        out[q] = (firsts + rest)[:per_question]
    return out


def neighbour_rows(rows: list[dict], corrected_prompts: list[str], embedder, per_question: int,
                   cache_dir: Path | None = None) -> list[dict]:
    """SFT rows that ask each correction of `rows` with neighbour words (its answer, context and
    feedback ids kept). `corrected_prompts`: every corrected prompt of the user's history, so that
    no rewrite drifts towards another fact, whether or not that fact trains in this cycle."""
    corrections = [r for r in rows if r.get("source") == "correction"]
    if per_question <= 0 or not corrections:
        return []
    neighbours = WordNeighbours(embedder, cache_dir)
    questions = list(dict.fromkeys([*corrected_prompts, *(r["messages"][-2]["content"] for r in corrections)]))
    found = neighbour_rewrites(questions, embedder, neighbours, per_question)
    out = []
    for row in corrections:
        *context, user, answer = row["messages"]
        out += [{**row, "messages": [*context, {"role": "user", "content": q}, answer], "source": "neighbour"}
                for q in found[user["content"]]]
    return out
