"""Word-neighbour rewrites (learning/neighbours.py): which words are swapped, which rewrites are
kept, and the rows they become. A stand-in embedder with a hand-made word geometry makes every
similarity known; one test runs the real MiniLM."""
import re

import numpy as np

from learning.neighbours import WordNeighbours, neighbour_rewrites, neighbour_rows, noun_phrase_words

# Each word's direction; words sharing an axis are neighbours. Unlisted words get their own axis.
AXES = {"bike": [1, 0, 0], "bicycle": [0.95, 0.31, 0], "bikes": [1, 0.05, 0], "motorcycle": [0.6, 0, 0.8],
        "ride": [0, 0, 0], "riding": [0, 0, 0], "tenant": [0, 0, 0], "landlord": [0, 0, 0]}


class Tokenizer:
    def get_vocab(self):
        return {w: i for i, w in enumerate(["bicycle", "bikes", "motorcycle", "riding", "tenant", "##ing", "ok"])}


class WordGeometryEmbedder:
    """Bag of words: a sentence is the sum of its words' vectors (unlisted words: one axis each)."""

    def __init__(self):
        self.extra: dict[str, int] = {}

    def load(self):
        return type("Model", (), {"tokenizer": Tokenizer()})()

    def vector(self, word: str) -> np.ndarray:
        v = np.zeros(64, dtype=np.float32)
        if word in AXES and any(AXES[word]):
            v[:3] = AXES[word]
        else:
            v[3 + self.extra.setdefault(word, len(self.extra))] = 1
        return v

    def encode(self, texts):
        out = np.stack([sum((self.vector(w) for w in re.findall(r"[a-z]+", t.lower())), np.zeros(64, np.float32))
                        for t in texts])
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_only_noun_phrase_words_are_swapped():
    assert [m.group() for m in noun_phrase_words("Which bike do I ride?")] == ["bike"]
    assert [m.group() for m in noun_phrase_words("What is my cat's favourite toy?")] == ["cat", "favourite", "toy"]
    assert [m.group() for m in noun_phrase_words("How do I keep basil fresh?")] == []


def test_neighbours_skip_forms_of_the_word_and_far_words(tmp_path):
    embedder = WordGeometryEmbedder()
    words = WordNeighbours(embedder, tmp_path)
    assert words.words == ["bicycle", "bikes", "motorcycle", "riding", "tenant"]  # no "##ing", no "ok"
    assert words.of("bike", k=5, min_similarity=0.5) == ["bicycle", "motorcycle"]  # "bikes" is the same word
    assert words.of("bike", k=5, min_similarity=0.9) == ["bicycle"]
    # the vocabulary's vectors are cached: a second instance embeds nothing
    assert list(tmp_path.glob("word-vectors-*.npy"))
    embedder.encode = None
    assert WordNeighbours(embedder, tmp_path).vectors.shape == words.vectors.shape


def test_rewrites_stay_near_and_never_drift_to_another_fact(tmp_path):
    embedder = WordGeometryEmbedder()
    words = WordNeighbours(embedder, tmp_path)
    alone = neighbour_rewrites(["Which bike do I ride?"], embedder, words, per_question=3, min_similarity=0.5)
    assert alone["Which bike do I ride?"] == ["Which bicycle do I ride?", "Which motorcycle do I ride?"]
    # with a motorcycle fact corrected too, "motorcycle" would ask that fact's question
    both = neighbour_rewrites(["Which bike do I ride?", "Which motorcycle do I ride?"], embedder, words,
                              per_question=3, min_similarity=0.5)
    assert both["Which bike do I ride?"] == ["Which bicycle do I ride?"]
    strict = neighbour_rewrites(["Which bike do I ride?"], embedder, words, per_question=3, min_similarity=0.995)
    assert strict["Which bike do I ride?"] == []


def test_rows_keep_answer_context_and_credit(tmp_path):
    embedder = WordGeometryEmbedder()
    system = {"role": "system", "content": "Be brief."}
    correction = {"messages": [system, {"role": "user", "content": "Which bike do I ride?"},
                               {"role": "assistant", "content": "A green Brompton."}],
                  "feedback_ids": ["f1"], "source": "correction"}
    liked = {**correction, "feedback_ids": ["f2"], "source": "liked"}
    rows = neighbour_rows([correction, liked], ["Which bike do I ride?"], embedder, 1, tmp_path)
    assert rows == [{"messages": [system, {"role": "user", "content": "Which bicycle do I ride?"},
                                  {"role": "assistant", "content": "A green Brompton."}],
                     "feedback_ids": ["f1"], "source": "neighbour"}]
    assert neighbour_rows([correction], [], embedder, 0, tmp_path) == []


def test_an_embedder_without_a_vocabulary_gives_no_rewrites(tmp_path):
    class Plain:
        def encode(self, texts):
            return np.ones((len(texts), 4), np.float32)

    assert WordNeighbours(Plain(), tmp_path).of("bike", 3, 0.0) == []
    assert neighbour_rewrites(["Which bike do I ride?"], Plain(), WordNeighbours(Plain()), 3) == \
        {"Which bike do I ride?": []}


def test_minilm_rewrites_a_real_question(tmp_path):
    from assistant.embedders import MiniLMEmbedder

    embedder = MiniLMEmbedder()
    found = neighbour_rewrites(["What bike do I ride?", "What is my cat's name?"], embedder,
                               WordNeighbours(embedder, tmp_path), per_question=3)
    assert "What bicycle do I ride?" in found["What bike do I ride?"]
    assert all(r.endswith("do I ride?") for r in found["What bike do I ride?"])  # the verb is kept
    assert found["What is my cat's name?"] and all("cat" not in r.split()[3] for r in found["What is my cat's name?"])
