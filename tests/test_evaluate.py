"""learning.evaluate: what "carries a correction" means, the canary set, and evaluate() on the
tiny model (same items for both sides, consistent counts, exact log-likelihoods)."""
import json

import pytest
import torch

from learning import evaluate as ev_mod
from learning.datasets import heldout
from learning.evaluate import anchors, carries, contains_phrase, evaluate, load_canaries
from learning.scoring import Scorer
from store import adapters, conversations, feedback
from tests.lora import make_adapter, register


@pytest.mark.parametrize("correction,prompt,original,expected", [
    ("Your dog is called Biscuit.", "What is the name of my dog?", "I don't know your dog's name.", ["biscuit"]),
    ("You work at Halvorsen Robotics in Trondheim.", "Where do I work?", "You work at a company.",
     ["halvorsen", "robotics", "trondheim"]),
    ("You drive a green 2019 Volvo V60.", "What car do I drive?", "You drive a car.", ["2019", "volvo", "v60"]),
    # no name-like word: every taught content word counts
    ("Your favourite tea is smoked lapsang souchong.", "What is my favourite tea?", "Green tea.",
     ["smoked", "lapsang", "souchong"]),
    # a style correction: what the original lacked is the habit itself
    ("Captain, keep a regular bedtime and put screens away.", "Give me a tip for sleeping better.",
     "Keep a regular bedtime and put screens away.", ["captain"]),
])
def test_anchors_are_what_the_correction_taught(correction, prompt, original, expected):
    assert anchors(correction, prompt, original) == expected


@pytest.mark.parametrize("reply,anchor_words,expected", [
    ("Your dog is called Biscuit!", ["biscuit"], True),
    ("Your dog likes biscuits.", ["biscuit"], False),  # whole words only
    ("You work at Halvorsen Robotics.", ["halvorsen", "robotics", "trondheim"], True),  # 2 of 3
    ("Halvorsen, I think.", ["halvorsen", "robotics", "trondheim"], False),
    ("Priya", ["priya", "raman"], True),
    ("anything", [], False),
])
def test_carries_needs_half_the_anchors_as_whole_words(reply, anchor_words, expected):
    assert carries(reply, anchor_words) is expected


def test_contains_phrase_is_whole_word_and_case_insensitive():
    assert contains_phrase("It is on 14 March.", "14 march")
    assert not contains_phrase("It is on 114 March.", "14 march")
    assert contains_phrase("H2O!", "h2o") and not contains_phrase("Paris-based", "pari")


def test_the_shipped_canary_set():
    rows = load_canaries()
    assert len(rows) >= 35 and len({r["id"] for r in rows}) == len(rows)
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert all(r["expect"] and all(e == e.lower() for e in r["expect"]) for r in rows)


def _turn(db, cid, prompt, reply):
    return conversations.log_turn(db, cid, user_message=prompt, messages=[], reply=reply, source="test",
                                  model="tiny", adapter_version=None, prompt_tokens=1, completion_tokens=1,
                                  ttft_ms=1.0, duration_ms=1.0)


@pytest.fixture
def world(db, tiny_model_path, tmp_path, monkeypatch):
    """v1 (active) learned an earlier correction; v2 (candidate) was taught a new one; a
    held-out conversation holds a liked and a disliked answer to the same prompt."""
    small = tmp_path / "canaries.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in load_canaries()[:3]))
    monkeypatch.setattr(ev_mod, "CANARIES_PATH", small)
    cid = conversations.create_conversation(db)
    earlier = feedback.add_feedback(db, _turn(db, cid, "Where do I work?", "I do not know."), "correction",
                                    correction="You work at Halvorsen Robotics.")
    taught = feedback.add_feedback(db, _turn(db, cid, "What is the name of my dog?", "I do not know."),
                                   "correction", correction="Your dog is called Biscuit.")
    held = conversations.create_conversation(db)
    while not heldout(held, 0.2):  # the learner's stable split decides what is held out
        held = conversations.create_conversation(db)
    feedback.add_feedback(db, _turn(db, held, "How are you today?", "I am fine, thank you."), "up")
    feedback.add_feedback(db, _turn(db, held, "How are you today?", "Hello there."), "down")
    register(db, 1, make_adapter(tiny_model_path, tmp_path / "v1", seed=1), feedback_ids=[earlier])
    adapters.activate(db, 1)
    register(db, 2, make_adapter(tiny_model_path, tmp_path / "v2", seed=2), parent=1, feedback_ids=[taught])
    return {"earlier": earlier, "taught": taught, "v1": tmp_path / "v1"}


def test_evaluate_scores_both_sides_on_the_same_items(cfg, db, served, world):
    fractions = []
    ev = evaluate(cfg, db, 2, 1, [world["taught"]], progress=fractions.append, model=served, max_new_tokens=6)
    cand, inc, items = ev["candidate"], ev["incumbent"], ev["items"]
    assert (cand["version"], inc["version"]) == (2, 1)
    for family, total in (("taught", 1), ("retention", 1), ("canary", 3)):
        assert cand[family]["total"] == inc[family]["total"] == total
        mine = [i for i in items if i["kind"] == family]
        for side, other, m in (("candidate", "incumbent", cand), ("incumbent", "candidate", inc)):
            assert m[family]["passed"] == sum(i[side]["passed"] for i in mine)
            assert m[family]["lost"] == sum(i[other]["passed"] and not i[side]["passed"] for i in mine)
    assert [i["id"] for i in items if i["kind"] == "retention"] == [world["earlier"]]
    assert next(i for i in items if i["kind"] == "taught")["anchors"] == ["biscuit"]
    assert cand["preference"]["pairs"] == inc["preference"]["pairs"] == 1
    assert 0 <= cand["preference"]["accuracy"] <= 1
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # the incumbent's replies are what v1 answers greedily, one prompt at a time
    scorer = Scorer(served, max_new_tokens=6)
    scorer.select(1, world["v1"])
    canaries = [i for i in items if i["kind"] == "canary"]
    msgs = [[{"role": "system", "content": "You are a helpful personal assistant."},
             {"role": "user", "content": c["prompt"]}] for c in canaries]
    assert [c["incumbent"]["reply"] for c in canaries] == [
        served.generate(m, max_new_tokens=6, version=1, adapter_path=world["v1"]).text for m in msgs]
    # deterministic: the same numbers again
    again = evaluate(cfg, db, 2, 1, [world["taught"]], model=served, max_new_tokens=6)
    strip = lambda m: {k: v for k, v in m.items() if k != "eval_seconds"}  # noqa: E731
    assert strip(again["candidate"]) == strip(cand) and strip(again["incumbent"]) == strip(inc)


def test_the_same_weights_reply_once_per_home(cfg, db, served, world, monkeypatch):
    """scoring.Replies: a second evaluation takes the replies of weights asked before (the base's,
    an unchanged adapter's) from the home's cache and generates nothing; other weights, another
    budget or an unreadable cache are asked again."""
    first = evaluate(cfg, db, 1, None, [], model=served, max_new_tokens=4)
    generated, real = [], Scorer._batched_generate

    def spy(self, conversations, *a, **k):
        generated.append((self.version, len(conversations)))
        return real(self, conversations, *a, **k)

    monkeypatch.setattr(Scorer, "_batched_generate", spy)
    again = evaluate(cfg, db, 1, None, [], model=served, max_new_tokens=4)
    assert generated == []  # v1's files and the base weights did not change
    replies = lambda ev: [(i["candidate"]["reply"], i["incumbent"]["reply"]) for i in ev["items"] if "reply" in i["incumbent"]]  # noqa: E731
    assert replies(again) == replies(first)
    generated.clear()
    evaluate(cfg, db, 1, None, [], model=served, max_new_tokens=5)  # another budget: other replies
    assert None in {v for v, _ in generated}
    generated.clear()
    evaluate(cfg, db, 2, 1, [], model=served, max_new_tokens=4)  # v1's replies known: v2's weights only
    assert {v for v, _ in generated} == {2}
    generated.clear()
    (cfg.home / "cache" / ev_mod.REPLIES_FILE).write_text("{not json")
    assert replies(evaluate(cfg, db, 1, None, [], model=served, max_new_tokens=4)) == replies(first)
    assert None in {v for v, _ in generated}


def test_preference_log_likelihood_is_exact_and_the_base_has_zero_margin(cfg, db, served, world):
    ev = evaluate(cfg, db, 1, None, [], model=served, max_new_tokens=4)
    assert ev["incumbent"]["preference"]["reward_margin"] == 0.0
    assert ev["candidate"]["taught"]["total"] == 0
    pair = next(i for i in ev["items"] if i["kind"] == "preference")
    # recompute the chosen answer's log-likelihood under v1 with a plain forward pass
    tok = served.tokenizer
    prompt = served.encode(pair["messages"])[0].tolist()
    full = tok.apply_chat_template(pair["messages"] + [{"role": "assistant", "content": pair["chosen"]}],
                                   return_dict=True)["input_ids"]
    full = full[: full.index(tok.eos_token_id, len(prompt)) + 1]
    served.use(1, world["v1"])
    with torch.inference_mode():
        logits = served.model(input_ids=torch.tensor([full])).logits[0]
    lp = torch.log_softmax(logits[len(prompt) - 1:-1], -1).gather(1, torch.tensor(full[len(prompt):])[:, None]).sum()
    assert pair["candidate"]["chosen_logprob"] == pytest.approx(float(lp), abs=1e-3)
    margin = 0.1 * ((pair["candidate"]["chosen_logprob"] - pair["incumbent"]["chosen_logprob"])
                    - (pair["candidate"]["rejected_logprob"] - pair["incumbent"]["rejected_logprob"]))
    assert ev["candidate"]["preference"]["reward_margin"] == pytest.approx(margin, abs=1e-2)


def test_a_forbidden_first_token_is_avoided_the_same_way_streamed_and_batched(served):
    msgs = [[{"role": "system", "content": "You are a helpful personal assistant."},
             {"role": "user", "content": q}] for q in ("Remind me of my dog's name.", "What is two plus two?")]
    free = [served.generate(m, max_new_tokens=4) for m in msgs]
    first = [served.tokenizer(g.text, add_special_tokens=False)["input_ids"][0] for g in free]
    # forbid the first prompt's greedy first token, leave the second free
    guarded = served.generate(msgs[0], max_new_tokens=4, avoid_first=first[0])
    assert served.tokenizer(guarded.text, add_special_tokens=False)["input_ids"][0] != first[0]
    scorer = Scorer(served, max_new_tokens=4)
    scorer.select(None)
    assert scorer.generate(msgs, avoid_first=[first[0], None]) == [guarded.text, free[1].text]
    assert scorer.generate(msgs) == [g.text for g in free]


def test_a_given_lead_opens_the_reply_the_same_way_streamed_and_batched(served):
    msgs = [[{"role": "system", "content": "You are a helpful personal assistant."},
             {"role": "user", "content": q}] for q in ("Which language is our backend in?", "What is two plus two?")]
    led = served.generate(msgs[0], max_new_tokens=4, lead="Our backend is written in",
                          avoid_first=served.first_token("Which"))  # a lead makes the guard moot
    assert led.pieces[0] == "Our backend is written in" and led.text.startswith("Our backend is written in")
    assert len(led.text) > len("Our backend is written in")  # the model went on from it
    free = served.generate(msgs[1], max_new_tokens=4)
    # the lead counts as reply, not prompt
    assert led.prompt_tokens == served.encode(msgs[0]).shape[1]
    assert led.completion_tokens == 4 + served.count_tokens("Our backend is written in")
    scorer = Scorer(served, max_new_tokens=4)
    scorer.select(None)
    assert scorer.generate(msgs, avoid_first=[served.first_token("Which"), None],
                           leads=["Our backend is written in", None]) == [led.text, free.text]


def test_a_correction_taken_back_is_no_retention_item(db, world):
    """Season run 3's cycle 5: a candidate that forgot a correction whose conversation was marked
    don't-learn was rejected for losing it. Taken back, it must be forgotten, not kept."""
    from learning.evaluate import retention_items

    assert [i["id"] for i in retention_items(db, [])] == [world["earlier"]]
    cid = db.execute("SELECT t.conversation_id FROM feedback f JOIN turns t ON t.id = f.turn_id WHERE f.id = ?",
                     [world["earlier"]]).fetchone()[0]
    conversations.update_conversation(db, cid, no_learn=1)
    assert retention_items(db, []) == []
    conversations.update_conversation(db, cid, no_learn=0)
    feedback.quarantine(db, [world["earlier"]])
    assert retention_items(db, []) == []
