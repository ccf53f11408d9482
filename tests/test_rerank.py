"""Reranking close matches by the chat model (assistant/rerank.py): the rule, recall and expert
routing with a stand-in reranker, and the model's likelihoods on the tiny model."""
import json

import pytest

from assistant.matching import RECALL_POLICY
from assistant.memory import Memory
from assistant.rerank import ModelReranker, fitting
from assistant.rerank import reranked as reranked_by
from assistant.scope import AdapterScope
from store.manifest import EXPERTS_DIR
from tests.lora import make_adapter
from tests.test_memory import HashEmbedder, correct

WEIGHT, GAP, TOLERANCE = RECALL_POLICY.rerank_weight, RECALL_POLICY.rerank_gap, RECALL_POLICY.fit_tolerance


def reranked(question, similarities, answers, reranker):
    """`rerank.reranked` with the shipped policy's weight and gap."""
    return reranked_by(question, similarities, answers, reranker, weight=WEIGHT, gap=GAP)

SCHOOL = "You study at the University of Bergen."
HOSPITAL = "You work at Haukeland Hospital in Bergen."


class Prefers:
    """A reranker that finds the question far likelier after answers naming `word`."""

    def __init__(self, word: str):
        self.word = word
        self.calls = 0

    def likelihoods(self, question, answers):
        self.calls += 1
        return [-10.0 if self.word in a else -20.0 for a in answers]


def test_a_likelier_question_reorders_close_matches_but_not_a_clear_lead():
    close, clear = [0.60, 0.58], [0.60, 0.60 - 2 * GAP]
    assert reranked("q", close, [HOSPITAL, SCHOOL], Prefers("study")) == pytest.approx([0.60 - 10 * WEIGHT, 0.58])
    far = Prefers("study")
    assert reranked("q", clear, [HOSPITAL, SCHOOL], far) == clear and far.calls == 0  # beyond GAP: not scored
    assert reranked("q", close, [HOSPITAL, SCHOOL], None) == close  # no reranker: similarity alone
    assert reranked("q", close, [HOSPITAL, None], Prefers("study")) == close  # one answer: nothing to compare
    assert reranked("q", close, [HOSPITAL, SCHOOL], Broken()) == close  # a failing reranker: similarity alone


class Broken:
    def likelihoods(self, question, answers):
        raise RuntimeError("out of memory")


def test_recall_lists_the_reranked_order_and_keeps_the_similarity(cfg, db):
    correct(db, "Which hospital is my workplace?", HOSPITAL)
    correct(db, "Which university is my school?", SCHOOL)
    question = "What is my school workplace?"  # equally near both by words
    plain = Memory(cfg, embedder=HashEmbedder(), threshold=0.3, gap=None).recall(question)
    assert len(plain) == 2
    for word in ("study", "Hospital"):
        found = Memory(cfg, embedder=HashEmbedder(), threshold=0.3, gap=None,
                       reranker=Prefers(word)).recall(question)
        assert word in found[0]["correction"]
        assert found[0]["rank"] > found[1]["rank"]
        assert {r["feedback_id"]: r["score"] for r in found} == {r["feedback_id"]: r["score"] for r in plain}


def test_the_margin_selects_by_rank(cfg, db):
    correct(db, "Which hospital is my workplace?", HOSPITAL)
    correct(db, "Which university is my school?", SCHOOL)
    found = Memory(cfg, embedder=HashEmbedder(), threshold=0.3, reranker=Prefers("study")).recall(
        "What is my school workplace?")
    assert [r["correction"] for r in found] == [SCHOOL]  # the other one is now 10 * WEIGHT behind


def _two_experts(path):
    """A version whose scope holds two corrections' prompts, each with a stand-in expert (routing
    reads meta.json and checks the files exist; it never loads them)."""
    experts = [{"name": "work", "prompt": "Which hospital is my workplace?", "answer": HOSPITAL},
               {"name": "study", "prompt": "Which university is my school?", "answer": SCHOOL}]
    for e in experts:
        (path / EXPERTS_DIR / e["name"]).mkdir(parents=True)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            (path / EXPERTS_DIR / e["name"] / f).write_text("{}")
        e.update(feedback_ids=[e["name"]], prompts=[e["prompt"]], trained_in=1)
    scope = {"threshold": 0.3, "prompts": [e["prompt"] for e in experts]}
    (path / "meta.json").write_text(json.dumps({"scope": scope, "experts": experts}))
    return path


def test_routing_picks_the_expert_that_ranks_first(tmp_path):
    path = _two_experts(tmp_path / "v1")
    question = "What is my school workplace?"
    for word, name in (("study", "study"), ("Hospital", "work")):
        reranker = Prefers(word)
        key, _ = AdapterScope(HashEmbedder(), reranker).route(1, path, question)
        assert key == (1, f"expert:{name}") and reranker.calls == 1
    reranker = Prefers("study")
    assert AdapterScope(HashEmbedder(), reranker).route(1, path, "Which hospital is my workplace?")[0] == (1, "expert:work")
    assert AdapterScope(HashEmbedder(), reranker).route(1, path, "How many legs does a spider have?") == (None, None)


def test_the_models_likelihoods_are_the_base_weights_one_text_at_a_time(served, tiny_model_path, tmp_path):
    """Batched with padding, each answer scores as it does alone; a loaded adapter changes nothing."""
    answers = ["Your dog is called Biscuit.", "You work at Halvorsen Robotics in Trondheim, a long way north."]
    question = "What is the name of my dog?"
    together = ModelReranker(served).likelihoods(question, answers)
    alone = [ModelReranker(served).likelihoods(question, [a])[0] for a in answers]
    assert together == pytest.approx(alone, abs=1e-4)
    assert together[0] != pytest.approx(together[1], abs=1e-3)
    served.use(1, make_adapter(tiny_model_path, tmp_path / "v1", seed=3))
    assert ModelReranker(served).likelihoods(question, answers) == pytest.approx(together, abs=1e-4)
    huge = "What is the name of my dog? " * 200  # past MAX_TOKENS: no preference, no long forward pass
    assert ModelReranker(served).likelihoods(huge, answers) == [0.0, 0.0]
    with served.lock:  # re-entrant: a caller already holding the model's lock may rerank
        assert ModelReranker(served).likelihoods(question, answers[:1]) == pytest.approx(together[:1], abs=1e-4)


class Fits(Prefers):
    """A reranker with the answer-fit check: answers naming `misfit` fit no question."""

    def __init__(self, word: str, misfit: str):
        super().__init__(word)
        self.misfit = misfit
        self.asked, self.tolerances = [], []

    def fits(self, question, corrected, tolerance):
        self.asked.append(corrected)
        self.tolerances.append(tolerance)
        return [self.misfit not in a for _, a in corrected]


def test_an_answer_that_does_not_fit_the_question_is_not_recalled(cfg, db):
    correct(db, "Which hospital is my workplace?", HOSPITAL)
    correct(db, "Which university is my school?", SCHOOL)
    question = "What is my school workplace?"
    fits = Fits("Hospital", misfit="Hospital")
    found = Memory(cfg, embedder=HashEmbedder(), threshold=0.3, gap=None, reranker=fits).recall(question)
    assert [r["correction"] for r in found] == [SCHOOL]  # preferred by likelihood, but its answer does not fit
    assert sorted(a for _, a in fits.asked[0]) == sorted([HOSPITAL, SCHOOL])  # asked with its corrected question
    assert ("Which hospital is my workplace?", HOSPITAL) in fits.asked[0]
    assert fits.tolerances == [RECALL_POLICY.fit_tolerance]  # the matching policy's (MatchPolicy.fit_tolerance)
    none_fit = Fits("study", misfit="You")
    assert Memory(cfg, embedder=HashEmbedder(), threshold=0.3, gap=None, reranker=none_fit).recall(question) == []


def test_routing_skips_an_expert_whose_answer_does_not_fit(tmp_path):
    path = _two_experts(tmp_path / "v1")
    question = "What is my school workplace?"
    assert AdapterScope(HashEmbedder(), Fits("Hospital", misfit="Hospital")).route(1, path, question)[0] == (1, "expert:study")
    assert AdapterScope(HashEmbedder(), Fits("study", misfit="You")).route(1, path, question) == (None, None)


def test_a_failing_or_missing_fit_check_keeps_every_match():
    pairs = [("Which hospital is my workplace?", HOSPITAL), (None, SCHOOL)]
    assert fitting(None, "q", pairs, tolerance=TOLERANCE) == [True, True]
    assert fitting(Prefers("x"), "q", pairs, tolerance=TOLERANCE) == [True, True]  # a reranker without `fits`

    class Failing(Fits):
        def fits(self, question, corrected, tolerance):
            raise RuntimeError("out of memory")

    assert fitting(Failing("x", "x"), "q", pairs, tolerance=TOLERANCE) == [True, True]
    # a pair missing its question is kept
    assert fitting(Fits("x", misfit="Hospital"), "q", pairs, tolerance=TOLERANCE) == [False, True]


def test_the_embedded_model_tells_an_answer_about_another_thing(embedded_model_dir):
    """On the real chat model (a pair from bench/recall_dev.jsonl, never a scenario probe): the
    houseplant's name does not fit a question about the cat; the cat's does, asked another way."""
    from assistant.model import ServedModel

    reranker = ModelReranker(ServedModel(str(embedded_model_dir)))
    corrected = [("What did I name my houseplant?", "Your houseplant is named Gerald."),
                 ("What is my cat's name?", "Your cat is called Pemberton.")]
    assert reranker.fits("What do I call my cat?", corrected, TOLERANCE) == [False, True]
    assert reranker.fits("What did I name my houseplant?", corrected[:1], TOLERANCE) == [True]  # its own question
    assert ModelReranker(reranker.served, answer_fit=False).fits("What do I call my cat?", corrected,
                                                                 TOLERANCE) == [True, True]


def test_a_learners_memo_keeps_what_the_model_said_across_processes(served, tmp_path, monkeypatch):
    """learning/scoring.Likelihoods: the gate's routing asks the base weights about every earlier
    correction each cycle; with a memo the second evaluation (another process) asks nothing again,
    and a changed model or rerank code starts afresh."""
    from assistant import rerank
    from learning.scoring import Likelihoods

    corrected = [("What is my cat called?", "Your cat is Pemberton."), ("Where do I work?", "At Haukeland.")]
    path = tmp_path / "likelihoods.json"
    first = ModelReranker(served)
    first.memo = Likelihoods(path, served, first).values
    fits = first.fits("What do I call my cat?", corrected, 2.25)
    liked = first.likelihoods("What do I call my cat?", [a for _, a in corrected])
    kept = Likelihoods(path, served, first)
    kept.values.update(first.memo)
    kept.save()

    def asked(*a, **k):
        raise AssertionError("the model was asked again")

    monkeypatch.setattr(rerank, "answer_logprobs", asked)
    monkeypatch.setattr(rerank, "target_logprobs", asked)
    again = ModelReranker(served)
    again.memo = Likelihoods(path, served, first).values
    assert again.fits("What do I call my cat?", corrected, 2.25) == fits
    assert again.likelihoods("What do I call my cat?", [a for _, a in corrected]) == liked
    monkeypatch.setattr(served.model.config, "vocab_size", served.model.config.vocab_size + 1)
    assert Likelihoods(path, served, first).values == {}  # another model: nothing kept applies


def test_a_turn_asks_the_model_about_a_question_and_answer_once(served, monkeypatch):
    """Recall and then routing check the same question against the same answers in one turn: the
    second check is remembered (the last CACHE values), not asked of the model again."""
    from assistant import rerank

    reranker = ModelReranker(served)
    corrected = [("What is my cat called?", "Your cat is Pemberton.")]
    fits = reranker.fits("What do I call my cat?", corrected, 2.25)
    liked = reranker.likelihoods("What do I call my cat?", ["Your cat is Pemberton.", "At Haukeland."])

    def asked(*a, **k):
        raise AssertionError("the model was asked again")

    monkeypatch.setattr(rerank, "answer_logprobs", asked)
    monkeypatch.setattr(rerank, "target_logprobs", asked)
    assert reranker.fits("What do I call my cat?", corrected, 2.25) == fits
    assert reranker.likelihoods("What do I call my cat?", ["At Haukeland."]) == liked[1:]
