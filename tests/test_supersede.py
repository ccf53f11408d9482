"""A correction always wins: which earlier corrections a new one replaces (store/feedback.py,
assistant/supersede.py), and what reads the link: recall, training data, the chat's routing."""
import json

import pytest

from assistant.config import Config
from assistant.memory import Memory
from assistant.supersede import Correction, SupersedePolicy, Superseder, supersede_by_meaning
from learning import datasets
from learning.config import LearnConfig
from store import feedback
from tests.test_datasets import SYSTEM, turn
from tests.test_memory import HashEmbedder


def correct(db, question, answer, reply="I don't know."):
    _, tid = turn(db, question, reply)
    return feedback.add_feedback(db, tid, "correction", correction=answer)


def test_a_correction_of_the_same_question_replaces_the_earlier_one_in_one_step(db):
    first = correct(db, "What car do I drive?", "You drive a Skoda.")
    second = correct(db, "what car do I drive", "You drive a Volvo.")
    other = correct(db, "Where do I work?", "You work at Acme.")
    third = correct(db, "What car do I drive?!", "You drive a Tesla.")
    assert feedback.superseded_by(db, [first, second, other, third]) == {first: third, second: third}
    assert feedback.taken_back(db, [first, second, other, third]) == [first, second]


def test_supersede_links_older_ones_and_keeps_chains_one_step_deep(db):
    a = correct(db, "Who coaches me?", "Aiko Tanaka.")
    b = correct(db, "Who is my running coach?", "Lars Eklund.")
    c = correct(db, "Who trains me for runs?", "Mia Berg.")
    assert feedback.supersede(db, [a], by=b) == [a]
    assert feedback.supersede(db, [b], by=c) == [b]
    assert feedback.superseded_by(db, [a, b, c]) == {a: c, b: c}
    assert feedback.supersede(db, [c], by=a) == []  # never by an older one


def test_training_teaches_the_replaced_question_the_new_answer_against_the_old(db):
    old = correct(db, "What car do I drive?", "You drive a white Skoda Octavia.")
    new = correct(db, "Which car do I own?", "You own a green Volvo V60.", reply="You drive a white Skoda Octavia.")
    feedback.supersede(db, [old], by=new)
    data = datasets.build(db, LearnConfig(heldout_fraction=0.0), system_prompt=SYSTEM, embedder=HashEmbedder())
    assert data.superseded == [old]
    assert {(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in data.sft} == {
        ("Which car do I own?", "You own a green Volvo V60."), ("What car do I drive?", "You own a green Volvo V60.")}
    assert all(r["feedback_ids"] == [new] for r in data.sft + data.pairs)
    assert ("What car do I drive?", "You own a green Volvo V60.", "You drive a white Skoda Octavia.") in {
        (p["prompt"][-1]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in data.pairs}


def test_recall_finds_the_newest_answer_by_the_question_first_asked(db, cfg):
    old = correct(db, "What is the name of my running coach?", "Your running coach is Aiko Tanaka.")
    memory = Memory(cfg, embedder=HashEmbedder(), threshold=0.5)
    assert [r["feedback_id"] for r in memory.recall("What is the name of my running coach?")] == [old]
    new = correct(db, "Who trains me these days?", "Lars Eklund trains you now.")
    feedback.supersede(db, [old], by=new)
    found = memory.recall("What is the name of my running coach?")
    assert [r["correction"] for r in found] == ["Lars Eklund trains you now."]
    assert found[0]["learned"] is False  # no version learned it: the chat answers with the base model + note


class FixedJudge:
    """Per-token log-probabilities by table: (context, text) -> list; anything else four tokens at -1.0."""

    def __init__(self, table):
        self.table = table

    def answer_logprobs(self, pairs):
        return [self.table.get(p, [-1.0] * 4) for p in pairs]

    def question_logprobs(self, pairs):
        return [self.table.get(p, [-1.0] * 4) for p in pairs]


class OwnPairsJudge(FixedJudge):
    """Each correction's answer after its own question (and its question after its answer): likely;
    any other pairing far less likely, except the table's pairs."""

    def __init__(self, own, table):
        super().__init__(table)
        self.own = own

    def answer_logprobs(self, pairs):
        return [self.table.get(p, [-1.0] * 4 if p in self.own else [-9.0] * 4) for p in pairs]

    def question_logprobs(self, pairs):
        return [[-1.0] * 4 if (q, a) in self.own else [-9.0] * 4 for a, q in pairs]


DESK = ("What is my desk extension?", "Your desk extension is 4471.")
DIAL = ("What number do colleagues dial to reach me?", "Colleagues reach you on extension 5208.")


def undecided_superseder() -> Superseder:
    """A superseder that cannot decide whether DIAL replaces DESK (one answer token 4.5 less
    likely after the other question: beyond token_tolerance, within ask_tolerance), and keeps
    every other pair of corrections apart."""
    judge = OwnPairsJudge({DESK, DIAL}, {(DESK[0], DIAL[1]): [-1.0, -1.0, -1.0, -5.5], (DIAL[0], DESK[1]): [-1.0] * 4})
    return Superseder(HashEmbedder(), judge, SupersedePolicy(min_similarity=0.1))


def test_a_correction_of_a_reply_answered_from_an_earlier_correction_offers_to_replace_it(db):
    """The judge keeps the two apart (every pairing far less likely), yet the corrected reply came
    from the earlier correction (its note recalled first, or its expert routed): the user is asked,
    since only the user can tell an update from a question the earlier one should not have answered."""
    from assistant.supersede import may_replace

    cat, cat_now = ("What is my cat called?", "Your cat is called Miso."), ("Which cat do I have?", "Your cat is Tofu.")
    apart = Superseder(HashEmbedder(), OwnPairsJudge({DESK, DIAL, cat, cat_now}, {}), SupersedePolicy(min_similarity=0.1))
    unrelated = correct(db, *cat)
    desk = correct(db, *DESK)
    _, tid = turn(db, DIAL[0], "Your desk extension is 4471.")
    db["turns"].update(tid, {"recalled_json": json.dumps([desk, unrelated])})
    dial = feedback.add_feedback(db, tid, "correction", correction=DIAL[1])
    assert apart.decide(Correction(dial, *DIAL), [Correction(desk, *DESK)]) == []
    assert [c.id for c in may_replace(db, dial, apart)] == [desk]  # the first note only: it answered
    _, routed = turn(db, cat_now[0], cat[1])
    db["turns"].update(routed, {"answered_from_json": json.dumps([unrelated])})
    renamed = feedback.add_feedback(db, routed, "correction", correction=cat_now[1])
    assert apart.decide(Correction(renamed, *cat_now), [Correction(unrelated, *cat)]) == []
    assert [c.id for c in may_replace(db, renamed, apart)] == [unrelated]  # its expert answered
    feedback.supersede(db, [unrelated], by=renamed)
    assert may_replace(db, renamed, apart) == []  # replaced already: nothing left to ask


def test_the_superseder_merges_only_within_its_tolerance():
    old = Correction("f1", "What is my running coach called?", "Your running coach is Aiko Tanaka.")
    new = Correction("f2", "Who is my running coach now?", "Your running coach is Lars Eklund.")
    unrelated = Correction("f0", "What is the capital of Peru?", "Lima.")
    same_everywhere = Superseder(HashEmbedder(), FixedJudge({}), SupersedePolicy(min_similarity=0.1))
    assert same_everywhere.decide(new, [unrelated, old]) == ["f1"]  # unrelated: never a candidate

    def decide(new_answer_after_old_question, **policy):
        judge = FixedJudge({(old.prompt, new.answer): new_answer_after_old_question})
        return Superseder(HashEmbedder(), judge, SupersedePolicy(min_similarity=0.1, **policy)).decide(new, [old])

    # every token far less likely after the old question: another fact
    assert decide([-4.5] * 4) == []
    # one token (what the answer is about) far less likely, the mean beyond tolerance: another fact
    assert decide([-1.0, -1.0, -2.0, -4.5]) == []
    assert decide([-1.0, -1.0, -1.0, -2.2]) == ["f1"]  # the mean within tolerance (0.3 per token): one fact
    # the mean beyond tolerance (0.75 per token) but no token lost more than token_tolerance: one fact
    assert decide([-1.0, -2.5, -2.5, -1.0]) == ["f1"]
    assert decide([-1.0, -2.5, -2.5, -1.0], token_tolerance=None) == []  # the mean alone decides


def test_a_pair_too_long_to_score_is_never_merged():
    old = Correction("f1", "What is my running coach called?", "Your running coach is Aiko Tanaka.")
    new = Correction("f2", "Who is my running coach now?", "Your running coach is Lars Eklund.")

    class TooLong(FixedJudge):
        def answer_logprobs(self, pairs):
            return None

    shifts = Superseder(HashEmbedder(), TooLong({}), SupersedePolicy(min_similarity=0.1)).shifts(new, old)
    assert shifts.answer == shifts.worst_token == float("inf")
    assert Superseder(HashEmbedder(), TooLong({}), SupersedePolicy(min_similarity=0.1)).decide(new, [old]) == []


def test_supersede_by_meaning_records_the_decision(db):
    old = correct(db, "What is my running coach called?", "Your running coach is Aiko Tanaka.")
    new = correct(db, "Who is my running coach now?", "Your running coach is Lars Eklund.")
    superseder = Superseder(HashEmbedder(), FixedJudge({}), SupersedePolicy(min_similarity=0.1))
    assert supersede_by_meaning(db, new, superseder) == [old]
    assert feedback.superseded_by(db, [old]) == {old: new}
    assert supersede_by_meaning(db, old, superseder) == []  # a replaced correction replaces nothing


@pytest.mark.e2e
def test_a_learned_fact_corrected_through_another_question_is_answered_right_at_once(home, embedded_model_dir):
    """Real embedded model and MiniLM: a fact is learned by a real cycle and goes live; the user
    corrects it through another question; the very next message, asked the first way, says the
    new value and not the old one."""
    from assistant.model import ServedModel
    from assistant.runtime import Runtime
    from learning import learner
    from store import adapters

    cfg = Config(home=home, model=str(embedded_model_dir))
    rt = Runtime.create(cfg, model=ServedModel(str(embedded_model_dir)))
    first = rt.chat.reply("How long is the refund window?", max_new_tokens=16, recall=False)
    old = rt.record_feedback(first.turn_id, "correction", correction="Refunds are accepted within 14 days of purchase.")
    short = LearnConfig(sft_epochs=1, dpo_epochs=1, self_replay=4, sft_max_length=96, dpo_max_length=96,
                        heldout_fraction=0.0)
    version = learner.run_cycle(cfg, short)["version"]
    adapters.activate(rt.db, version)  # the gate's decision is tested elsewhere; here it must serve
    learned = rt.chat.reply("How long is the refund window?", max_new_tokens=24, recall=False)
    assert learned.generation.adapter_version == version

    asked = rt.chat.reply("How many days do customers have to ask for a refund?", max_new_tokens=24)
    new = rt.record_feedback(asked.turn_id, "correction", correction="The refund window is 30 days from delivery.")
    assert feedback.superseded_by(rt.db, [old]) == {old: new}

    reply = rt.chat.reply("How long is the refund window?", max_new_tokens=24).generation.text
    assert "30 days" in reply and "14" not in reply
    weights = rt.chat.reply("How long is the refund window?", max_new_tokens=24, recall=False).generation.text
    assert "14 days" not in weights  # the replaced correction's expert no longer answers


@pytest.mark.e2e
def test_the_real_judge_links_a_car_asked_another_way_and_keeps_two_flights_apart(embedded_model_dir):
    """The embedded chat model and MiniLM, as the server decides: an update through another
    question whose answer is reworded ("You own a green Volvo V60." for "What car do I drive?") is
    one fact; the outbound and the return flight, the nearest different pair of the dev set, stay
    two (bench/supersede_dev.jsonl; bench/results/supersede.md)."""
    from assistant.config import DEFAULT_SYSTEM_PROMPT
    from assistant.embedders import make_embedder
    from assistant.model import ServedModel
    from assistant.supersede import ModelJudge

    superseder = Superseder(make_embedder(), ModelJudge(ServedModel(str(embedded_model_dir)), DEFAULT_SYSTEM_PROMPT))
    car = Correction("car", "What car do I drive?", "You drive a white Skoda Octavia.")
    assert superseder.decide(Correction("new", "Which car do I own these days?", "You own a green Volvo V60."), [car]) == ["car"]
    outbound = Correction("out", "When is my flight to Lisbon?", "Your flight to Lisbon leaves on 27.11.2026 at 07:05.")
    back = Correction("back", "When do I fly back from Lisbon?", "Your return flight from Lisbon is on 03.12.2026 at 18:40.")
    assert superseder.decide(back, [outbound]) == []


def test_a_pairs_shifts_are_asked_once():
    """Saving a correction decides what it replaces; offering what it may replace asks about the
    same pairs again: the judge is asked once."""
    asked = []

    class Counting(FixedJudge):
        def answer_logprobs(self, pairs):
            asked.append(pairs)
            return super().answer_logprobs(pairs)

    superseder = Superseder(HashEmbedder(), Counting({}), SupersedePolicy(min_similarity=0.1))
    old, new = Correction("f1", *DESK), Correction("f2", *DIAL)
    assert superseder.shifts(new, old) == superseder.shifts(new, old) and len(asked) == 1
