"""No reply is lost (issue 29): a turn is on disk, marked interrupted, from before its id reaches a
client; what is said is saved as it streams; a failure to save after generation still hands the
reply over with an error naming the disk; and no error leaves an empty conversation behind."""
import json
import sqlite3

import httpx
import pytest

from assistant import chat as chat_module
from assistant.chat import ChatService
from assistant.config import Config
from assistant.errors import TurnNotSaved, UnstorableText, is_disk_full
from assistant.runtime import Runtime
from assistant.server import start_server
from store import conversations

FULL = sqlite3.OperationalError("database or disk is full")


@pytest.fixture
def chat(cfg, tiny_served):
    tiny_served.use(None)
    return ChatService(cfg, tiny_served)


def full_on_finish(monkeypatch):
    """The disk fills after generation: progress saves pass, the final save fails."""
    real = conversations.finish_turn

    def finish(db, turn_id, **kw):
        if kw["finish_reason"] != conversations.INTERRUPTED:
            raise FULL
        return real(db, turn_id, **kw)

    monkeypatch.setattr(conversations, "finish_turn", finish)


def test_a_turn_is_saved_as_interrupted_before_its_reply_and_nothing_before_that(chat):
    turn = chat.start_turn("Hello there")
    assert chat.db["conversations"].count == 0 and chat.db["turns"].count == 0  # created lazily
    chat.open_turn(turn, source="test")
    row = conversations.get_turn(chat.db, turn.turn_id)  # as a server killed now leaves it
    assert row["finish_reason"] == conversations.INTERRUPTED and row["reply"] == ""
    assert conversations.get_conversation(chat.db, turn.conversation_id)["title"] == "Hello there"
    reply = "".join(chat.pieces(turn, source="test", max_new_tokens=4))
    row = conversations.get_turn(chat.db, turn.turn_id)
    assert row["reply"] == reply and row["finish_reason"] in ("stop", "length") and row["completion_tokens"] > 0
    assert chat.db["turns"].count == 1  # completed in place, not logged twice


def test_what_was_said_is_saved_while_it_streams(chat, monkeypatch):
    monkeypatch.setattr(chat_module, "PROGRESS_SAVE_S", 0.0)
    turn = chat.start_turn("Tell me a long story")
    stream = chat.pieces(turn, source="test", max_new_tokens=64)
    said = next(stream) + next(stream)
    row = conversations.get_turn(chat.db, turn.turn_id)
    assert row["finish_reason"] == conversations.INTERRUPTED and said.startswith(row["reply"]) and row["reply"]
    stream.close()  # the client leaves
    row = conversations.get_turn(chat.db, turn.turn_id)
    assert row["finish_reason"] == "abandoned" and row["reply"] == turn.generation.text


def test_a_failed_generation_keeps_the_turn_marked_interrupted(chat, monkeypatch):
    real = chat.model.stream

    def failing(*a, **kw):
        yield from list(real(*a, **kw))[:2]
        raise RuntimeError("the model broke")

    monkeypatch.setattr(chat.model, "stream", failing)
    turn = chat.start_turn("Hello")
    with pytest.raises(RuntimeError, match="the model broke"):
        list(chat.pieces(turn, source="test", max_new_tokens=8))
    row = conversations.get_turn(chat.db, turn.turn_id)
    assert row["finish_reason"] == conversations.INTERRUPTED and row["reply"] == turn.generation.text


def test_a_full_disk_after_generation_keeps_the_reply_in_hand(chat, monkeypatch):
    full_on_finish(monkeypatch)
    turn = chat.start_turn("Hello")
    pieces = []
    with pytest.raises(TurnNotSaved) as e:
        for p in chat.pieces(turn, source="test", max_new_tokens=4):
            pieces.append(p)
    assert is_disk_full(e.value) and e.value.turn is turn
    assert "".join(pieces) == turn.generation.text != ""  # every piece was delivered first


@pytest.mark.parametrize("text, why", [("a\x00b", "NUL"), ("hi \ud800", "surrogate")])
def test_text_the_store_cannot_keep_is_refused_with_the_reason(chat, text, why):
    with pytest.raises(UnstorableText, match=why):
        chat.start_turn(text)
    with pytest.raises(UnstorableText, match="system prompt"):
        chat.start_turn("hi", system_prompt=text)
    assert chat.db["conversations"].count == 0


def test_a_failing_recall_leaves_no_conversation(chat):
    class Broken:
        def recall(self, text):
            raise RuntimeError("index broken")

    chat.memory = Broken()
    with pytest.raises(RuntimeError):
        chat.start_turn("Hello")
    assert chat.db["conversations"].count == 0


def test_an_unfinished_empty_turn_is_left_out_of_the_next_prompt(chat):
    first = chat.reply("Hello there", source="test", max_new_tokens=3)
    killed = chat.start_turn("Are you there?", conversation_id=first.conversation_id)
    chat.open_turn(killed, source="test")  # ... and the server died before any reply
    nxt = chat.start_turn("Hello again", conversation_id=first.conversation_id)
    assert [m["content"] for m in nxt.messages if m["role"] == "user"] == ["Hello there", "Hello again"]
    retry = chat.start_retry(first.turn_id)
    chat.open_turn(retry, source="test", retry_of=first.turn_id)  # a retry killed before its reply
    shown = [t["id"] for t in conversations.visible_history(chat.db, first.conversation_id)]
    assert first.turn_id in shown and retry.turn_id not in shown  # the earlier answer stays


# ---- through the API ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runtime(tmp_path_factory, tiny_model_path, tiny_served):
    cfg = Config(home=tmp_path_factory.mktemp("lost-home"), model=str(tiny_model_path), default_max_new_tokens=6)
    tiny_served.use(None)
    return Runtime.create(cfg, model=tiny_served, with_memory=False)


@pytest.fixture(scope="module")
def server(runtime):
    running = start_server(runtime, ui=False)
    yield running
    running.stop()


def body(content="Hello", **extra) -> dict:
    return {"model": "assistant", "max_tokens": 4, "messages": [{"role": "user", "content": content}], **extra}


def test_api_full_disk_after_generation_is_a_507_that_carries_the_reply(server, runtime, monkeypatch):
    full_on_finish(monkeypatch)
    r = httpx.post(server.url + "/v1/chat/completions", json=body(), timeout=30)
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "disk_full" and str(runtime.cfg.home) in err["message"] and "generated" in err["message"]
    completion = r.json()["completion"]
    assert completion["choices"][0]["message"]["content"]
    assert completion["id"] == r.headers["x-assistant-turn-id"]


def test_api_stream_ends_with_an_error_and_done_when_saving_fails(server, runtime, monkeypatch):
    full_on_finish(monkeypatch)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body(stream=True), timeout=30) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "disk_full" and "generation failed" not in error["message"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, events[:-2]) if c["choices"])
    assert text and json.loads(events[-3])["choices"][0]["finish_reason"] in ("stop", "length")


def test_api_errors_leave_no_empty_conversation(server, runtime, monkeypatch):
    url = server.url + "/v1/chat/completions"
    assert httpx.post(url, json=body("a\x00b"), timeout=30).status_code == 400
    monkeypatch.setattr(conversations, "open_turn", lambda *a, **k: (_ for _ in ()).throw(FULL))
    assert httpx.post(url, json=body(stream=True), timeout=30).status_code == 507  # nothing generated yet
    monkeypatch.undo()
    real = runtime.chat.model.stream

    def broken(*a, **kw):
        raise RuntimeError("the model broke")
        yield from real(*a, **kw)

    monkeypatch.setattr(runtime.chat.model, "stream", broken)
    with httpx.stream("POST", url, json=body(stream=True), timeout=30) as r:
        turn_id = r.headers["x-assistant-turn-id"]
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "the model broke" in events[-2]
    assert conversations.get_turn(runtime.db, turn_id)["finish_reason"] == conversations.INTERRUPTED
    assert conversations.empty_conversations(runtime.db) == []


# ---- through the web page's handlers -----------------------------------------------------------
@pytest.fixture
def tab(cfg, tiny_served):
    from assistant.ui_conversations import ChatTab

    tiny_served.use(None)
    return ChatTab(Runtime.create(cfg, model=tiny_served, with_memory=False))


def ui_send(tab, message, session=None):
    from assistant.ui_chat import new_session

    *_, final = tab.send(message, [], session or new_session(), 4, 0.0, False)
    return final[2], final[3]  # session, notice


@pytest.mark.parametrize("text, why", [("a\x00b", "NUL"), ("hi \ud800", "surrogate")])
def test_the_web_page_refuses_nul_and_surrogates_and_keeps_no_empty_chat(tab, text, why):
    session, notice = ui_send(tab, text)
    assert why in notice and session["conversation_id"] is None
    assert tab.db["conversations"].count == 0 and tab.db["turns"].count == 0


def test_the_web_page_names_a_full_disk_and_keeps_no_empty_chat(tab, monkeypatch):
    monkeypatch.setattr(conversations, "open_turn", lambda *a, **k: (_ for _ in ()).throw(FULL))
    session, notice = ui_send(tab, "Hello")
    assert "disk" in notice and str(tab.rt.cfg.home) in notice and "nothing was saved" in notice
    assert session["conversation_id"] is None and tab.db["conversations"].count == 0
    monkeypatch.undo()
    full_on_finish(monkeypatch)
    session, notice = ui_send(tab, "Hello")
    assert "this reply was not saved" in notice
