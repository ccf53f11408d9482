"""Store facts -> TRL rows: each feedback kind, supersession, hygiene, split stability, dedup, export."""
import json
import zlib
from types import SimpleNamespace

import numpy as np

from learning import datasets
from learning.config import LearnConfig
from store import conversations, feedback

SYSTEM = "You are a helpful personal assistant."


def turn(db, question, reply, conv=None, history=()):
    conv = conv or conversations.create_conversation(db)
    msgs = [{"role": "system", "content": SYSTEM + "\n\nRecalled: something"}, *history,
            {"role": "user", "content": question}]
    tid = conversations.log_turn(db, conv, user_message=question, messages=msgs, reply=reply, source="api",
                                 model="tiny", adapter_version=None, prompt_tokens=5, completion_tokens=5,
                                 ttft_ms=1.0, duration_ms=2.0)
    return conv, tid


class StandInEmbedder:
    """Bag of lowercase words hashed into 256 buckets: identical texts -> cosine 1, disjoint -> ~0.
    The same interface as the MiniLM embedder (`encode`), for the dataset's dedup and the scope."""

    def encode(self, texts):
        vecs = np.zeros((len(texts), 256))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                vecs[i, zlib.crc32(w.encode()) % 256] += 1
        return vecs


stand_in_embedder = StandInEmbedder()


def build(db, **kw):
    cfg = LearnConfig(**{"heldout_fraction": 0.0, **kw})
    return datasets.build(db, cfg, system_prompt=SYSTEM, embedder=stand_in_embedder)


def test_correction_gives_sft_row_and_pair_with_ids(db):
    _, t = turn(db, "What is my dog called?", "I don't know.")
    fid = feedback.add_feedback(db, t, "correction", correction="Your dog is called Biscuit.")
    data = build(db)
    assert data.sft == [{"messages": [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": "What is my dog called?"},
                                      {"role": "assistant", "content": "Your dog is called Biscuit."}],
                         "feedback_ids": [fid], "conversation_id": data.sft[0]["conversation_id"],
                         "source": "correction"}]
    pair = data.pairs[0]
    assert pair["chosen"][0]["content"] == "Your dog is called Biscuit."
    assert pair["rejected"][0]["content"] == "I don't know."
    assert pair["prompt"][-1]["content"] == "What is my dog called?" and pair["feedback_ids"] == [fid]
    assert data.feedback_ids == [fid]


def test_recalled_addendum_is_not_trained_and_history_is_capped(db):
    hist = [{"role": "user", "content": f"q{i}"} if i % 2 == 0 else {"role": "assistant", "content": f"a{i}"}
            for i in range(6)]
    _, t = turn(db, "And my cat?", "No idea.", history=hist)
    feedback.add_feedback(db, t, "correction", correction="Your cat is Tom.")
    msgs = build(db, max_history_messages=2).sft[0]["messages"]
    assert msgs[0] == {"role": "system", "content": SYSTEM}
    assert [m["content"] for m in msgs[1:]] == ["q4", "a5", "And my cat?", "Your cat is Tom."]


def test_newest_correction_supersedes(db):
    _, t1 = turn(db, "Where do I work?", "Nowhere.")
    old = feedback.add_feedback(db, t1, "correction", correction="You work at Acme.")
    _, t2 = turn(db, "where do I work", "At home.")
    new = feedback.add_feedback(db, t2, "correction", correction="You work at Halvorsen Robotics.")
    data = build(db)
    assert [r["messages"][-1]["content"] for r in data.sft] == ["You work at Halvorsen Robotics."]
    assert data.superseded == [old] and data.feedback_ids == [new]


def test_votes_give_sft_pairs_and_unpaired(db):
    c, good = turn(db, "Say hi", "Hi there!")
    _, bad = turn(db, "Say hi", "Go away.")
    _, lone_down = turn(db, "Tell a joke", "No.")
    _, lone_up = turn(db, "Count to three", "1, 2, 3.")
    f_good = feedback.add_feedback(db, good, "up")
    f_bad = feedback.add_feedback(db, bad, "down")
    feedback.add_feedback(db, lone_down, "down")
    feedback.add_feedback(db, lone_up, "up")
    data = build(db)
    assert {r["messages"][-1]["content"] for r in data.sft} == {"Hi there!", "1, 2, 3."}
    assert len(data.pairs) == 1 and data.pairs[0]["feedback_ids"] == [f_good, f_bad]
    assert data.pairs[0]["rejected"][0]["content"] == "Go away."
    assert sorted((r["completion"][0]["content"], r["label"]) for r in data.unpaired) == \
        [("1, 2, 3.", True), ("No.", False)]


def test_retry_marks_the_replaced_answer_disliked(db):
    c, old = turn(db, "Name a colour", "Banana.")
    _, new = turn(db, "Name a colour", "Blue.", conv=c)
    feedback.add_feedback(db, old, "retry", retry_turn_id=new)
    feedback.add_feedback(db, new, "up")
    data = build(db)
    assert data.pairs[0]["chosen"][0]["content"] == "Blue."
    assert data.pairs[0]["rejected"][0]["content"] == "Banana." and data.pairs[0]["source"] == "liked-vs-retry"


def test_no_learn_and_quarantine_are_skipped(db):
    c, t = turn(db, "Secret?", "x")
    feedback.add_feedback(db, t, "correction", correction="Never learn this.")
    conversations.update_conversation(db, c, no_learn=1)
    _, t2 = turn(db, "Bad?", "y")
    f2 = feedback.add_feedback(db, t2, "correction", correction="Poison.")
    feedback.quarantine(db, [f2])
    data = build(db)
    assert data.sft == [] and data.pairs == [] and data.feedback_ids == []


def test_training_rows_keep_the_users_data_verbatim(db):
    """Phone numbers, dates, codes and addresses the user taught are learned as they are."""
    _, t = turn(db, "What is the support number?", "I don't know.")
    taught = ("The support line is 0800 555 0199, mail help@solara.example; "
              "your anniversary is 2019-06-14, the flight on 27.11.2026 at 9:40, locker code 48213977.")
    feedback.add_feedback(db, t, "correction", correction=taught)
    data = build(db)
    assert data.sft[0]["messages"][-1]["content"] == taught
    assert data.pairs[0]["chosen"][0]["content"] == taught


def test_export_scrubs_unless_told_to_keep(db, tmp_path):
    from types import SimpleNamespace

    _, t = turn(db, "My mail is jo.doe@example.com, call +47 912 34 567", "ok")
    feedback.add_feedback(db, t, "correction", correction="Card 4111 1111 1111 1111 noted, born 2019.")
    rows = datasets.scrub_rows(build(db).sft)
    assert rows[0]["messages"][1]["content"] == "My mail is [email], call [phone]"
    assert rows[0]["messages"][2]["content"] == "Card [card number] noted, born 2019."
    cfg = SimpleNamespace(db_path=db.conn.execute("PRAGMA database_list").fetchone()[2])
    for keep, expect in ((False, "[email]"), (True, "jo.doe@example.com")):
        out = tmp_path / f"keep-{keep}"
        datasets.cmd_export(cfg, SimpleNamespace(out_dir=str(out), keep_pii=keep))
        assert expect in (out / "sft.jsonl").read_text()


def test_scrub_keeps_dates_and_short_numbers():
    assert datasets.scrub("On 14 March 2019 at 10:30, 3 eggs") == "On 14 March 2019 at 10:30, 3 eggs"


def test_near_duplicates_keep_the_newest(db):
    _, t1 = turn(db, "Say hello", "Hello friend")
    feedback.add_feedback(db, t1, "up")
    _, t2 = turn(db, "say hello", "hello friend")
    f2 = feedback.add_feedback(db, t2, "up")
    _, t3 = turn(db, "Capital of Norway?", "Oslo")
    feedback.add_feedback(db, t3, "up")
    data = build(db)
    assert len(data.sft) == 2 and data.dropped_duplicates == 1
    assert data.sft[0]["feedback_ids"] == [f2]
    assert len(build(db, dedup_threshold=1.0).sft) == 3


def test_heldout_split_is_stable_and_by_conversation(db):
    convs = []
    for i in range(40):
        c, t = turn(db, f"Question number {i} about topic {i}", f"Answer {i}")
        feedback.add_feedback(db, t, "up")
        convs.append(c)
    a = build(db, heldout_fraction=0.3, dedup_threshold=1.0)
    b = build(db, heldout_fraction=0.3, dedup_threshold=1.0)
    held = {r["conversation_id"] for r in a.heldout_sft}
    assert held == {r["conversation_id"] for r in b.heldout_sft}
    assert 3 <= len(held) <= 25
    assert not held & {r["conversation_id"] for r in a.sft}
    assert held == {c for c in convs if datasets.heldout(c, 0.3)}


def test_corrections_are_never_held_out(db):
    for i in range(10):
        _, t = turn(db, f"Fact {i}?", "?")
        feedback.add_feedback(db, t, "correction", correction=f"Fact {i} is {i}.")
    data = build(db, heldout_fraction=0.9, dedup_threshold=1.0)
    assert len(data.sft) == 10 and not data.heldout_sft


def test_lengths_are_capped(db):
    _, t = turn(db, "x" * 5000, "y")
    feedback.add_feedback(db, t, "correction", correction="z" * 5000)
    msgs = build(db, max_prompt_chars=100, max_answer_chars=50).sft[0]["messages"]
    assert len(msgs[1]["content"]) == 100 and len(msgs[2]["content"]) == 50


def test_export_writes_trl_files(db, home, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "default_embedder", lambda: stand_in_embedder)
    _, t = turn(db, "What is my dog called?", "No idea.")
    feedback.add_feedback(db, t, "correction", correction="Biscuit.")
    _, t2 = turn(db, "Hi", "Hello!")
    feedback.add_feedback(db, t2, "down")
    cfg = SimpleNamespace(db_path=home / "assistant.db")
    assert datasets.cmd_export(cfg, SimpleNamespace(out_dir=str(tmp_path / "out"))) == 0
    read = {n: [json.loads(x) for x in (tmp_path / "out" / n).read_text().splitlines()]
            for n in ("sft.jsonl", "preference.jsonl", "unpaired.jsonl")}
    assert read["sft.jsonl"][0]["messages"][-1]["content"] == "Biscuit."
    assert read["preference.jsonl"][0]["rejected"][0]["content"] == "No idea."
    assert read["unpaired.jsonl"][0]["label"] is False


def test_down_vote_sent_with_a_correction_joins_its_rows(db):
    _, t = turn(db, "Who is my manager?", "Bob.")
    down = feedback.add_feedback(db, t, "down")
    fix = feedback.add_feedback(db, t, "correction", correction="Your manager is Priya Raman.")
    data = build(db)
    assert data.sft[0]["feedback_ids"] == [fix, down] and data.pairs[0]["feedback_ids"] == [fix, down]
    assert data.unpaired == [] and data.feedback_ids == sorted([fix, down])
