"""The web UI's handlers, driven directly on the tiny model (the browser test drives the page)."""
import json
import sys
import threading

import gradio as gr
import numpy as np
import pytest
import torch

from assistant import ui_learning, ui_versions
from assistant.runtime import Runtime
from assistant.ui import build_ui
from assistant.ui_chat import feedback_values, new_session
from assistant.ui_conversations import ChatTab
from assistant.ui_messages import ANSWERED_MARK, CORRECTION_TITLE, text_of
from store import adapters, conversations, feedback, jobs
from tests.lora import make_adapter, register

GEN = (6, 0.0, False)  # max new tokens, temperature, recall


@pytest.fixture
def rt(cfg, tiny_served):
    tiny_served.use(None)
    return Runtime.create(cfg, model=tiny_served, with_memory=False)


@pytest.fixture
def tab(rt):
    return ChatTab(rt)


def last(gen):
    *_, final = gen
    return final


def send(tab, message, session=None, history=None, gen=GEN):
    """Run the send handler to the end; returns (all yields, history, session, notice)."""
    outs = list(tab.send(message, history or [], session or new_session(), *gen))
    _, history, session, notice, *_ = outs[-1]
    return outs, history, session, notice


def kinds(db, turn_id):
    return [f["kind"] for f in feedback.feedback_for_turn(db, turn_id)]


def test_build_ui_makes_blocks_without_launching(rt):
    ui = build_ui(rt)
    assert isinstance(ui, gr.Blocks) and not ui.is_running


def test_a_message_streams_and_is_logged_from_the_ui(tab, rt):
    # sampled (temperature 1) from the tiny random model: seeded, or an unlucky draw of
    # incomplete UTF-8 bytes arrives as one piece
    torch.manual_seed(0)
    outs, history, session, _ = send(tab, "What is the name of my dog?", gen=(6, 1.0, False))
    replies = [text_of(o[1][-1]["content"]) for o in outs]
    assert replies[0] == "" and len(set(replies)) >= 3  # empty, then it grows piece by piece
    assert all(b.startswith(a) for a, b in zip(replies, replies[1:], strict=False))
    tid = session["turn_ids"][-1]
    row = conversations.get_turn(rt.db, tid)
    assert row["source"] == "ui" and row["reply"] == text_of(history[-1]["content"])
    assert row["conversation_id"] == session["conversation_id"] and session["selected"] == tid
    assert len(session["turn_ids"]) == len(history) == 3
    # what wrote it, under the question: the base weights, stopped by the 6-token limit
    assert history[1]["metadata"]["title"] == f"{ANSWERED_MARK} answered by the base model · cut at 6 tokens"
    assert outs[-1][0] == ""  # the textbox is cleared


def test_empty_message_is_refused_and_nothing_is_logged(tab, rt):
    outs, history, session, notice = send(tab, "   ")
    assert "empty" in notice and history == [] and session["conversation_id"] is None
    assert rt.db["turns"].count == 0 and rt.db["conversations"].count == 0


def test_votes_reason_and_one_click_reasons_write_feedback(tab, rt):
    _, history, session, _ = send(tab, "Hello there")
    tid = session["turn_ids"][-1]
    session, notice = tab.vote(session, "up")
    assert kinds(rt.db, tid) == ["up"] and feedback_values(history, session) == [None, "Like"]  # a note, the reply
    # the chatbot's own 👎, then a reason typed in the panel: still one vote, now with its reason
    session, notice, *_ = tab.on_like(session, gr.LikeData(None, {"index": 2, "value": "", "liked": False}))
    session, notice = tab.vote(session, "down", "too vague")
    downs = [f for f in feedback.feedback_for_turn(rt.db, tid) if f["kind"] == "down"]
    assert [d["reason"] for d in downs] == ["too vague"]
    # a one-click reason option on the message is a 👎 with that reason
    _, notice, *_ = tab.on_like(session, gr.LikeData(None, {"index": 2, "value": "", "liked": "Too long"}))
    assert feedback.feedback_for_turn(rt.db, tid)[-1]["reason"] == "Too long"
    assert notice == "Noted: a bad answer (Too long)."  # the flag's option says what it recorded
    # Gradio sends an option's click twice: still one fact
    _, notice, *_ = tab.on_like(session, gr.LikeData(None, {"index": 2, "value": "", "liked": "Too long"}))
    assert [f["reason"] for f in feedback.feedback_for_turn(rt.db, tid)].count("Too long") == 1
    assert feedback_values(history, session) == [None, "Too long"]
    assert tab.resume(session["conversation_id"])[1]["votes"] == {tid: "Dislike"}  # shown again on resume
    # clicking on the user's message is not an answer
    session, notice, *_ = tab.on_like(session, gr.LikeData(None, {"index": 5, "value": "", "liked": True}))
    assert "not an answer" in notice and len(kinds(rt.db, tid)) == 3
    # a like on an answer still streaming (not logged yet) must not land on the previous answer
    streaming = {**session, "turn_ids": session["turn_ids"] + ["not-logged-yet"] * 2}
    _, notice, *_ = tab.on_like(streaming, gr.LikeData(None, {"index": 3, "value": "", "liked": True}))
    assert "Wait for the answer" in notice and len(kinds(rt.db, tid)) == 3


def test_feedback_without_a_selected_answer_is_refused(tab, rt):
    session, notice = tab.vote(new_session(), "up")
    assert "Click an answer" in notice and rt.db["feedback"].count == 0


def test_a_correction_offers_an_earlier_one_it_may_replace_and_the_user_confirms(tab, rt, monkeypatch):
    """When supersession by meaning cannot decide, the notice quotes the earlier correction and
    the replace button confirms it: the older one is superseded by the newer."""
    from tests.test_supersede import DESK, DIAL, undecided_superseder

    monkeypatch.setattr(rt, "superseder", undecided_superseder())
    ids = []
    history, session = None, None
    for question, answer in (DESK, DIAL):
        _, history, session, _ = send(tab, question, session, history)
        session, _, _ = tab.select(session, len(history) - 1)
        history, session, notice = tab.correct(history, session, answer)
        ids.append(feedback.feedback_for_turn(rt.db, session["selected"])[-1]["id"])
    assert "may say otherwise" in notice and DESK[1] in notice
    assert session["may_replace"] == {"by": ids[1], "ids": [ids[0]]}
    session, notice = tab.confirm_replace(session)
    assert "Replaced" in notice and feedback.superseded_by(rt.db, [ids[0]]) == {ids[0]: ids[1]}
    session, notice = tab.confirm_replace(session)
    assert "No earlier correction" in notice  # offered once


def test_correcting_any_answer_records_a_correction_and_shows_it(tab, rt):
    _, history, session, _ = send(tab, "What is the name of my dog?")
    _, history, session, _ = send(tab, "Where do I work?", session, history)
    first = session["turn_ids"][0]
    session, target, prefill = tab.select(session, 2)  # click the FIRST answer (after its note)
    assert session["selected"] == first and prefill == conversations.get_turn(rt.db, first)["reply"]
    history, session, notice = tab.correct(history, session, "Your dog is called Biscuit.")
    fix = feedback.feedback_for_turn(rt.db, first)
    assert [(f["kind"], f["correction"]) for f in fix] == [("correction", "Your dog is called Biscuit.")]
    assert history[3]["metadata"]["title"] == CORRECTION_TITLE and session["turn_ids"][3] == first
    assert len(history) == len(session["turn_ids"]) == 7
    # selecting it again (a 👍 arriving while the user types a correction) keeps their text
    session, _, prefill = tab.select(session, 2)
    assert prefill is not None and not isinstance(prefill, str)  # gr.skip(): the box is left alone
    history, session, notice = tab.correct(history, session, "  ")
    assert "empty" in notice and len(feedback.feedback_for_turn(rt.db, first)) == 1


def test_a_correction_saved_unchanged_is_refused(tab, rt):
    # the box is pre-filled with the answer: saving it as is would teach the wrong answer
    torch.manual_seed(0)  # sampled: greedy, the tiny model answers only newlines
    _, history, session, _ = send(tab, "What is the name of my dog?", gen=(6, 1.0, False))
    tid = session["turn_ids"][-1]
    prefill = conversations.get_turn(rt.db, tid)["reply"]  # what the box shows after the answer
    assert prefill.strip()
    history, session, notice = tab.correct(history, session, prefill)
    assert "as it was given" in notice and kinds(rt.db, tid) == []
    history, session, notice = tab.correct(history, session, "  " + prefill.replace(" ", "  ") + "\n")
    assert "as it was given" in notice and kinds(rt.db, tid) == []
    history, session, notice = tab.correct(history, session, prefill + " Biscuit.")
    assert "Correction saved" in notice and kinds(rt.db, tid) == ["correction"]


def test_editing_an_answer_in_the_chatbot_is_a_correction(tab, rt):
    _, history, session, _ = send(tab, "Hello there")
    tid = session["turn_ids"][1]
    original = text_of(history[2]["content"])
    edited = [dict(m) for m in history]
    edited[2]["content"] = "I am fine, thank you."
    history, session, _ = tab.on_edit(edited, session, gr.EditData(
        None, {"index": 2, "value": "I am fine, thank you.", "previous_value": original}))
    assert feedback.feedback_for_turn(rt.db, tid)[-1]["correction"] == "I am fine, thank you."
    assert text_of(history[2]["content"]) == original  # what the model said stays visible
    assert text_of(history[3]["content"]) == "I am fine, thank you."
    # editing the user's own message is not a correction
    edited = [dict(m) for m in history]
    edited[0]["content"] = "changed"
    history, session, notice = tab.on_edit(edited, session, gr.EditData(
        None, {"index": 0, "value": "changed", "previous_value": "Hello there"}))
    assert "Only an answer" in notice and text_of(history[0]["content"]) == "Hello there"
    assert kinds(rt.db, tid) == ["correction"]


def test_retry_regenerates_in_place_and_links_the_earlier_answer(tab, rt):
    _, history, session, _ = send(tab, "What is the name of my dog?")
    _, history, session, _ = send(tab, "Where do I work?", session, history)
    old = session["turn_ids"][0]
    final = last(tab.retry(history, session, 6, 1.0, False, turn_id=old))
    _, history, session, notice, *_ = final
    new = session["turn_ids"][0]
    assert new != old and len(history) == 6 and session["turn_ids"][3] != new
    row = conversations.get_turn(rt.db, new)
    assert row["retry_of"] == old and row["source"] == "ui"
    assert conversations.get_turn(rt.db, old)["reply"] is not None  # the earlier answer is kept
    assert [(f["kind"], f["retry_turn_id"]) for f in feedback.feedback_for_turn(rt.db, old)] == [("retry", new)]
    shown = [t["id"] for t in conversations.visible_history(rt.db, session["conversation_id"])]
    assert old not in shown and new in shown


def test_retry_at_temperature_zero_samples_and_never_records_the_same_answer(tab, rt, monkeypatch):
    from assistant import ui_chat

    torch.manual_seed(0)
    _, history, session, _ = send(tab, "What is the name of my dog?", gen=(6, 0.0, False))
    old = session["turn_ids"][-1]
    *_, (_, history, session, notice, *_) = tab.retry(history, session, 6, 0.0, False, turn_id=old)
    new = session["turn_ids"][-1]
    assert json.loads(conversations.get_turn(rt.db, new)["params_json"])["temperature"] >= ui_chat.RETRY_TEMPERATURE
    assert conversations.get_turn(rt.db, new)["reply"] != conversations.get_turn(rt.db, old)["reply"]
    assert "New answer kept" in notice and kinds(rt.db, old) == ["retry"]
    # a retry that gives the same answer again (greedy here) is no evidence against the first one
    monkeypatch.setattr(ui_chat, "RETRY_TEMPERATURE", 0.0)
    for _ in range(2):  # greedy twice: the second retry repeats the first
        before = session["turn_ids"][-1]
        *_, (_, history, session, notice, *_) = tab.retry(history, session, 6, 0.0, False, turn_id=before)
    after = session["turn_ids"][-1]
    assert conversations.get_turn(rt.db, after)["reply"] == conversations.get_turn(rt.db, before)["reply"]
    assert "same answer again" in notice and kinds(rt.db, before) == []


def test_dont_learn_applies_before_and_after_the_conversation_exists(tab, rt):
    session, _ = tab.set_no_learn(new_session(), True)
    _, history, session, _ = send(tab, "Hello there", session)
    cid = session["conversation_id"]
    assert conversations.get_conversation(rt.db, cid)["no_learn"] == 1
    session, notice = tab.set_no_learn(session, False)
    assert conversations.get_conversation(rt.db, cid)["no_learn"] == 0


def test_conversations_resume_rename_delete(tab, rt):
    _, history, session, _ = send(tab, "What is the name of my dog?")
    tab.correct(history, session, "Biscuit.")
    _, _, other, _ = send(tab, "Where do I work?")
    cid = session["conversation_id"]
    listed = tab.conversation_list(None)["choices"]
    assert {c[1] for c in listed} == {cid, other["conversation_id"]}

    history, resumed, notice, convs, system, no_learn, title, *_ = tab.resume(cid)
    assert resumed["conversation_id"] == cid and convs["value"] == cid
    assert [m["role"] for m in history] == ["user", "assistant", "assistant", "assistant"]
    assert history[1]["metadata"]["title"] == f"{ANSWERED_MARK} answered by the base model · cut at 6 tokens"
    assert text_of(history[3]["content"]) == "Biscuit." and title == "What is the name of my dog?"
    _, history, resumed, _ = send(tab, "And his age?", resumed, history)  # continues the same chat
    assert len(conversations.conversation_turns(rt.db, cid)) == 2

    notice, convs = tab.rename(resumed, "  Dog  facts ")
    assert conversations.get_conversation(rt.db, cid)["title"] == "Dog facts"
    notice, convs = tab.rename(resumed, "")
    assert "empty" in notice and conversations.get_conversation(rt.db, cid)["title"] == "Dog facts"

    history, fresh, notice, convs, *_ = tab.delete(resumed)
    assert history == [] and fresh["conversation_id"] is None and "Deleted" in notice
    assert rt.db["turns"].count_where("conversation_id = ?", [cid]) == 0
    assert rt.db["feedback"].count == 0 and [c[1] for c in convs["choices"]] == [other["conversation_id"]]


def test_api_calls_do_not_flood_the_conversation_list(tab, rt):
    _, _, session, _ = send(tab, "Where do I work?")
    calls = [rt.chat.reply("Say hi", source="api", max_new_tokens=2).conversation_id for _ in range(2)]
    listed = [c[1] for c in tab.conversation_list(None)["choices"]]
    assert listed == [session["conversation_id"]]  # the user's chats only
    api, box = tab.api_conversations()
    assert api["choices"] == [("Say hi ×2", calls[-1])] and box["visible"] is True and "2 calls" in box["label"]
    # opened from the API list, it shows in the sidebar while it is open
    history, _, _, convs, *_ = tab.resume(calls[-1])
    assert calls[-1] in [c[1] for c in convs["choices"]] and convs["value"] == calls[-1]


def test_sending_to_a_chat_deleted_in_another_tab_keeps_the_message(tab, rt):
    _, history, session, _ = send(tab, "Hello there")
    tab.delete(dict(session))  # the other tab
    outs = list(tab.send("Are you there?", history, session, *GEN))
    textbox, _, _, notice, *_ = outs[-1]
    assert textbox == "Are you there?" and "was deleted" in notice and rt.db["turns"].count == 0


def test_system_prompt_default_and_per_chat(tab, rt):
    session, _ = tab.save_system_prompt(new_session(), "Answer like a pirate.", "default")
    _, history, session, _ = send(tab, "Hello there", session)
    turn = conversations.get_turn(rt.db, session["turn_ids"][-1])
    assert '"Answer like a pirate."' in turn["messages_json"]
    session, _ = tab.save_system_prompt(session, "Answer in French.", "chat")
    _, history, session, _ = send(tab, "Hello again", session, history)
    assert "Answer in French." in conversations.get_turn(rt.db, session["turn_ids"][-1])["messages_json"]
    assert tab.new_chat()[4] == "Answer like a pirate."
    fresh, _ = tab.save_system_prompt(new_session(), "Answer briefly.", "chat")  # before the first message
    _, _, fresh, _ = send(tab, "Hello there", fresh)
    assert conversations.get_conversation(rt.db, fresh["conversation_id"])["system_prompt"] == "Answer briefly."
    assert tab.resume(fresh["conversation_id"])[4] == "Answer briefly."
    session, notice = tab.save_system_prompt(session, " ", "default")
    assert "cannot be empty" in notice


def test_two_sessions_at_once_both_get_answers(tab, rt):
    # Open (and migrate) the database first, as build_ui does: two threads opening a fresh
    # database at the same instant both run the migrations (store.migrations race, reported).
    assert rt.db["conversations"].exists()
    results = {}

    def chat(name, message):
        try:
            results[name] = send(tab, message)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[name] = e

    threads = [threading.Thread(target=chat, args=(n, m)) for n, m in
               (("a", "What is the name of my dog?"), ("b", "Where do I work?"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(results.get(n), tuple) for n in "ab"), results
    a, b = results["a"][2], results["b"][2]
    assert a["conversation_id"] != b["conversation_id"]
    for s, msg in ((a, "What is the name of my dog?"), (b, "Where do I work?")):
        row = conversations.get_turn(rt.db, s["turn_ids"][-1])
        assert row["user_message"] == msg and row["completion_tokens"] > 0


class WordEmbedder:
    """A deterministic bag-of-words embedder: recall without loading a sentence model."""

    def encode(self, texts, **kw):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, hash(w.strip("?.,!")) % 64] += 1
        return out


def test_recalled_corrections_are_noted_under_the_reply(cfg, tiny_served):
    from assistant.memory import Memory

    tiny_served.use(None)
    rt = Runtime.create(cfg, model=tiny_served, memory=Memory(cfg, embedder=WordEmbedder()))
    tab = ChatTab(rt)
    _, history, session, _ = send(tab, "What is the name of my dog?")
    tab.correct(history, session, "Your dog is called Biscuit.")
    _, history, session, _ = send(tab, "What is the name of my dog?", gen=(6, 0.0, True))
    # the note comes before the reply: the last message, which gets the chatbot's ↻, is the answer
    title = history[-2]["metadata"]["title"]
    assert title == f"{ANSWERED_MARK} answered by the base model · recalled 1 note · cut at 6 tokens", title
    assert not history[-1].get("metadata")
    assert "Biscuit" in history[-2]["content"] and len(history) == len(session["turn_ids"])
    assert "similarity" not in history[-2]["content"]  # a reframing's score would read 1.00
    assert feedback_values(history, session)[-2:] == [None, None]  # a note is never rated


def test_the_answered_by_note_names_the_version_expert_recall_and_cut():
    from assistant.chat_routing import route_kind
    from assistant.ui_messages import answered_note

    assert [route_kind(k) for k in (None, 3, (3, "habit"), (3, "expert:01ABC"))] == [None, "adapter", "habit", "expert"]
    title = lambda a, r=(): answered_note(a, r)["metadata"]["title"]  # noqa: E731
    note = {"prompt": "Dog?", "correction": "Biscuit."}
    assert title({"version": 3, "by": "expert", "cut_at": None}, [note]) == \
        f"{ANSWERED_MARK} answered by v3 · expert · recalled 1 note"
    assert title({"version": 2, "by": "habit", "cut_at": 256}) == \
        f"{ANSWERED_MARK} answered by v2 · habit opening · cut at 256 tokens"
    assert title({"version": None, "by": None, "cut_at": None}, [note, note]) == \
        f"{ANSWERED_MARK} answered by the base model · recalled 2 notes"
    assert title(None) == f"{ANSWERED_MARK} answering…"  # while the stream has not started
    body = answered_note({"version": 3, "by": "adapter", "cut_at": 256}, [note])["content"]
    assert "Biscuit." in body and "Max new tokens" in body


def test_a_reply_of_the_active_version_says_so_live_and_after_a_reload(rt, tiny_model_path, tmp_path):
    register(rt.db, 1, make_adapter(tiny_model_path, tmp_path / "v1", seed=1))
    adapters.activate(rt.db, 1)
    tab = ChatTab(rt)
    _, history, session, _ = send(tab, "Hello there", gen=(64, 0.0, False))
    row = conversations.get_turn(rt.db, session["turn_ids"][-1])
    assert row["adapter_version"] == 1 and row["answered_by"] == "adapter"  # no scope: the adapter answers
    said = history[1]["metadata"]["title"]
    assert said.startswith(f"{ANSWERED_MARK} answered by v1") and "expert" not in said
    assert ("cut at 64 tokens" in said) == (row["finish_reason"] == "length")
    assert tab.resume(session["conversation_id"])[0][1]["metadata"]["title"] == said  # the same after a reload


def test_learning_tab_shows_a_running_cycle_and_cancels_it(rt):
    pytest.importorskip("learning.control")
    stage, bar, losses, cancel = ui_learning.status_view(rt)
    assert "No learning cycle" in stage and cancel["visible"] is False
    assert "No learning cycle is running" in ui_learning.cancel(rt)
    jid = jobs.start_job(rt.db)  # as the learner process writes it (this pid: alive)
    jobs.update_job(rt.db, jid, stage="SFT", progress=0.4, eta_s=95,
                    losses=[{"step": 1, "loss": 2.5, "stage": "SFT"}, {"step": 2, "loss": 2.1, "stage": "SFT"}])
    stage, bar, losses, cancel = ui_learning.status_view(rt)
    assert "**SFT**" in stage and "Running" in stage and cancel["visible"] is True
    assert "habit" not in stage  # an optional stage this cycle does not reach is not listed
    assert 'aria-valuenow="40"' in bar and "1 min 35 s left" in bar
    assert [list(line.get_ydata()) for line in losses.axes[0].lines] == [[2.5, 2.1]]
    assert "already running" in ui_learning.learn_now(rt)  # one cycle at a time
    assert "Cancel requested" in ui_learning.cancel(rt) and jobs.cancel_requested(rt.db, jid)
    jobs.update_job(rt.db, jid, stage="habit", progress=0.7, eta_s=30)
    assert "DPO → **habit** → evaluating" in ui_learning.status_view(rt)[0]
    jobs.finish_job(rt.db, jid, "failed", error="out of memory")
    stage, bar, *_ = ui_learning.status_view(rt)
    assert "Failed" in stage and "out of memory" in stage


def test_learning_tab_says_whether_a_version_went_live_and_plots_each_stage_apart(rt):
    pytest.importorskip("learning.control")
    losses = [{"step": 1, "loss": 2.5, "stage": "SFT"}, {"step": 2, "loss": 2.0, "stage": "SFT"},
              {"step": 1, "loss": 0.7, "stage": "DPO"}] + [
        {"step": s, "loss": 1.0 / s, "stage": "experts"} for s in range(80, 1001, 40)]
    jid = jobs.start_job(rt.db)
    jobs.update_job(rt.db, jid, stage="gate", progress=1.0, losses=losses)
    reasons = ["taught 1/3 < 2/3 required", "canaries 38/38"]
    jobs.finish_job(rt.db, jid, "succeeded", result={
        "version": 3, "status": "rejected", "reasons": reasons, "message": "v3 rejected by the gate: ..."})
    stage, bar, figure, _ = ui_learning.status_view(rt)
    assert "No new version went live" in stage and "v3" in stage and "Succeeded" not in stage
    assert all(f"- {r}" in stage for r in reasons)
    assert "DPO → experts → evaluating → **gate**" in stage
    # each stage on its own step axis: experts' steps 80-1000 do not squeeze SFT and DPO
    assert [ax.get_title() for ax in figure.axes] == ["SFT loss", "DPO loss", "experts loss"]
    assert [max(ax.lines[0].get_xdata()) for ax in figure.axes] == [2, 1, 1000]

    jid = jobs.start_job(rt.db)
    jobs.finish_job(rt.db, jid, "succeeded", result={"version": 4, "status": "active", "reasons": ["taught 3/3"]})
    assert "v4 is live" in ui_learning.status_view(rt)[0]
    jid = jobs.start_job(rt.db)
    jobs.finish_job(rt.db, jid, "cancelled", error="cancelled during SFT at step 1")
    stage = ui_learning.status_view(rt)[0]
    assert "Cancelled" in stage and "Error" not in stage


def test_learning_tab_says_when_the_learner_is_missing(rt, monkeypatch):
    import learning

    monkeypatch.setitem(sys.modules, "learning.control", None)  # import fails
    monkeypatch.delattr(learning, "control", raising=False)
    assert ui_learning.learn_now(rt) == ui_learning.UNAVAILABLE
    assert ui_learning.status_view(rt)[0] == ui_learning.UNAVAILABLE


def test_versions_tab_promotes_after_confirming_and_rolls_back(rt, tiny_model_path, tmp_path):
    pytest.importorskip("learning.versions")
    _, history, session, _ = send(ChatTab(rt), "What is the name of my dog?")
    fid = rt.record_feedback(session["turn_ids"][-1], "correction", correction="Biscuit.")
    for v in (1, 2):
        register(rt.db, v, make_adapter(tiny_model_path, tmp_path / f"v{v}", seed=v), parent=v - 1 or None,
                 feedback_ids=[fid] if v == 2 else [])
    adapters.record_decision(rt.db, "d1", 1, None, True, ["learned 1/1"], {})
    adapters.record_decision(rt.db, "d2", 2, 1, False, ["controls 5/7"], {})
    parts = ui_versions.view(rt)
    table = parts["table"]["value"]
    assert list(table["version"]) == [1, 2] and "controls 5/7" in " ".join(table["reasons"])
    # the decision and its reasons are read first, not two screens to the right
    assert list(table.columns[:4]) == ["version", "status", "decision", "reasons"]
    assert list(table["decision"]) == ["passed the gate", "rejected by the gate"]
    assert parts["prompts"] == "What is the name of my dog?" and len(parts["corrections"]["value"]) == 1
    # the base model is active: it is not offered as a rollback target, and nothing else served
    assert parts["rollback_box"]["visible"] is False and "Nothing to roll back" in parts["rollback_none"]["value"]
    assert parts["promote_box"]["visible"] is True and parts["empty"]["visible"] is False

    notice, confirm = ui_versions.promote(rt, "1")
    assert adapters.active_version(rt.db) == 1 and confirm["visible"] is False
    notice, confirm = ui_versions.promote(rt, "2")  # the gate failed it: ask first
    assert "controls 5/7" in notice and confirm["visible"] is True and adapters.active_version(rt.db) == 1
    notice, confirm = ui_versions.promote(rt, "2", confirmed=True)
    assert adapters.active_version(rt.db) == 2, notice
    assert [c[1] for c in ui_versions.view(rt)["rollback"]["choices"]] == ["base", "1"]
    side_by_side, notice = ui_versions.compare(rt, "1", "", "Hello there\n\nWhere do I work?")
    side_by_side = side_by_side["value"]
    assert notice.startswith("v1 vs v2") and list(side_by_side["prompt"]) == ["Hello there", "Where do I work?"]
    assert "as the chat answers a new chat's first message" in notice and "recall on" in notice
    assert list(side_by_side.columns[1:3]) == ["v1", "v2"]

    notice = ui_versions.rollback(rt, "1", quarantine=True)
    assert adapters.active_version(rt.db) == 1 and "1 feedback item" in notice
    assert feedback.feedback_for_turn(rt.db, session["turn_ids"][-1])[0]["quarantined"] == 1
    notice = ui_versions.rollback(rt, "base", quarantine=False)
    assert adapters.active_version(rt.db) is None, notice
    # weights deleted to save disk: still in the table, gone from the choices that would load it
    from learning.pruning import prune_weights

    assert prune_weights(rt.db, keep=0) == [1, 2]
    parts = ui_versions.view(rt)
    assert list(parts["table"]["value"]["weights"]) == ["deleted", "deleted"]
    assert [c[1] for k in ("promote", "rollback", "compare") for c in parts[k]["choices"]] == ["base"]
    assert parts["promote_box"]["visible"] is False and "Nothing to promote" in parts["promote_none"]["value"]


def test_versions_tab_before_any_cycle_shows_words_not_empty_tables(rt):
    pytest.importorskip("learning.versions")
    parts = ui_versions.view(rt)
    assert parts["empty"]["visible"] is True and parts["table"]["visible"] is False
    assert parts["corrections"]["visible"] is False and parts["no_corrections"]["visible"] is True
    assert parts["plot"]["visible"] is False
    for action in ("promote", "rollback"):  # no empty drop-downs: a sentence instead
        assert parts[action + "_box"]["visible"] is False and parts[action + "_none"]["visible"] is True
    assert [c[1] for c in parts["rollback"]["choices"]] == []  # not "base model" while it is active
    table, notice = ui_versions.compare(rt, "base", "", "")
    assert table["visible"] is False and "prompt" in notice


def _knows_chat(cfg, tiny_served):
    """A runtime with recall on the stand-in embedder, and its chat tab, for the knows-tab tests."""
    from assistant.memory import Memory

    tiny_served.use(None)
    rt = Runtime.create(cfg, model=tiny_served, memory=Memory(cfg, embedder=WordEmbedder()))
    rt.superseder = None  # the tiny model's judgement would link unrelated corrections
    return rt, ChatTab(rt)


def test_what_it_knows_lists_states_searches_and_forgets(cfg, tiny_served, tiny_model_path, tmp_path):
    pytest.importorskip("learning.versions")
    import datetime as dt

    from assistant import ui_knows

    rt, tab = _knows_chat(cfg, tiny_served)
    _, history, session, _ = send(tab, "What is the name of my dog?")
    dog = rt.record_feedback(session["turn_ids"][-1], "correction", correction="Your dog is called Biscuit.")
    _, history, session, _ = send(tab, "Where do I work?", session, history)
    liked = rt.record_feedback(session["turn_ids"][-1], "up")
    _, _, other, _ = send(tab, "What is the capital of Japan?")
    tokyo = rt.record_feedback(other["turn_ids"][-1], "correction", correction="Tokyo.")
    register(rt.db, 1, make_adapter(tiny_model_path, tmp_path / "v1", seed=1), feedback_ids=[dog])
    adapters.activate(rt.db, 1)

    parts = ui_knows.view(rt, "", "Europe/Oslo")
    table = parts["table"]["value"]
    assert list(table["it should answer"][:1]) == ["Tokyo."]  # newest first
    assert list(table["state"]) == ["waiting for the next learning cycle"] * 2 + ["learned by v1, which is live"]
    assert list(table["what"]) == ["your correction", "an answer you liked", "your correction"]
    assert not any(fid in " ".join(map(str, table.to_numpy().ravel())) for fid in (dog, liked, tokyo))  # no ids
    assert dog in list(parts["details"]["value"]["feedback id"])  # only in the details
    assert "2 corrections and 1 liked answer" in parts["summary"]["value"]
    assert list(ui_knows.view(rt, "biscuit")["table"]["value"]["you asked"]) == ["What is the name of my dog?"]
    # readable local times
    now = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.timezone.utc)
    assert ui_knows.local_time("2026-03-10T11:30:00+00:00", "Europe/Oslo", now) == "today 12:30"
    assert ui_knows.local_time("2026-03-09T23:30:00+00:00", "Europe/Oslo", now) == "today 00:30"
    assert ui_knows.local_time("2026-03-03T08:00:00+00:00", "Europe/Oslo", now) == "Tue 3 Mar 09:00"

    # forgetting one item: recall drops it at once, and the page says which versions still hold it
    assert [r["feedback_id"] for r in rt.memory.recall("What is the name of my dog?")][:1] == [dog]
    notice = ui_knows.forget(rt, dog)
    assert "Forgotten" in notice and "v1 (live)" in notice
    assert dog not in [r["feedback_id"] for r in rt.memory.recall("What is the name of my dog?")]
    assert dog not in [i["id"] for i in ui_knows.items(rt.db)]
    # forgetting a whole conversation marks it don't-learn
    notice = ui_knows.forget_conversation(rt, tokyo)
    assert "don't-learn" in notice and "No version was trained with it" in notice
    assert rt.memory.recall("What is the capital of Japan?") == []
    state = {i["id"]: i["state"] for i in ui_knows.items(rt.db)}[tokyo]
    assert state == "not learned: the conversation is marked don't-learn"
    assert "Choose" in ui_knows.forget(rt, None)


def test_what_it_knows_edits_an_item_as_a_new_correction(cfg, tiny_served):
    """Editing writes a correction through the chat's own path (Runtime.record_feedback): the old
    one is listed as superseded, recall answers with the new one at once, and an edited liked
    answer is a correction now."""
    pytest.importorskip("learning.versions")
    from assistant import ui_knows

    rt, tab = _knows_chat(cfg, tiny_served)
    _, history, session, _ = send(tab, "Where do I work?")
    old = rt.record_feedback(session["turn_ids"][-1], "correction", correction="You work at Acme.")
    _, _, other, _ = send(tab, "How do I boil an egg?")
    liked = rt.record_feedback(other["turn_ids"][-1], "up")

    assert ui_knows.answer_of(rt, old) == "You work at Acme."  # the edit box starts from it
    assert "as it is" in ui_knows.edit(rt, old, " You work at  Acme. ")  # unchanged: refused
    assert "empty" in ui_knows.edit(rt, old, "  ") and "Choose" in ui_knows.edit(rt, None, "x")
    notice = ui_knows.edit(rt, old, "You work at Halvorsen Robotics.")
    assert notice.startswith("✎ Saved") and "superseded" in notice
    states = {i["answer"]: i["state"] for i in ui_knows.items(rt.db)}
    assert states["You work at Halvorsen Robotics."] == "waiting for the next learning cycle"
    assert states["You work at Acme."].startswith("superseded by a later correction") and "Halvorsen" in \
        states["You work at Acme."]
    assert [r["correction"] for r in rt.memory.recall("Where do I work?")][:1] == ["You work at Halvorsen Robotics."]

    notice = ui_knows.edit(rt, liked, "Simmer it for eight minutes.")
    assert "the like is taken back" in notice
    kinds = {i["question"]: i["kind"] for i in ui_knows.items(rt.db)}
    assert kinds["How do I boil an egg?"] == "correction" and liked not in [i["id"] for i in ui_knows.items(rt.db)]
