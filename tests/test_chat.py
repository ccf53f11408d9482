import json

import pytest

from assistant.chat import TRUNCATION_NOTICE, ChatService
from assistant.errors import EmptyMessage
from store import conversations


@pytest.fixture
def chat(cfg, tiny_served):
    tiny_served.use(None)
    return ChatService(cfg, tiny_served)


def test_a_turn_is_streamed_and_logged_with_tokens_and_timings(chat):
    turn = chat.start_turn("What is the name of my dog?")
    pieces = list(chat.pieces(turn, source="test", max_new_tokens=6))
    row = conversations.get_turn(chat.db, turn.turn_id)
    assert row["reply"] == "".join(pieces) == turn.generation.text
    assert row["completion_tokens"] == turn.generation.completion_tokens > 0
    assert row["prompt_tokens"] > 5 and row["duration_ms"] > 0 and row["adapter_version"] is None
    assert json.loads(row["messages_json"])[0]["role"] == "system"
    assert row["source"] == "test" and row["truncated"] == 0


def test_history_is_included_in_the_next_prompt(chat):
    first = chat.reply("Hello there", source="test", max_new_tokens=3)
    second = chat.reply("How are you?", source="test", conversation_id=first.conversation_id,
                        max_new_tokens=3)
    roles = [m["role"] for m in second.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert second.messages[1]["content"] == "Hello there"


def test_empty_message_is_refused(chat):
    for msg in ("", "   \n", None):
        with pytest.raises(EmptyMessage):
            chat.start_turn(msg)
    assert chat.db["turns"].count == 0


def test_overlong_message_is_cut_to_the_context_window_with_a_notice(chat):
    huge = "dog " * 5000  # far beyond the tiny model's 512-token window
    turn = chat.reply(huge, source="test", max_new_tokens=4)
    assert turn.truncated and turn.notice == TRUNCATION_NOTICE
    assert len(chat.model.encode(turn.messages)[0]) <= 512 - 4
    assert conversations.get_turn(chat.db, turn.turn_id)["truncated"] == 1


def test_old_history_is_dropped_before_the_new_message_is_cut(chat):
    first = chat.reply("dog " * 350, source="test", max_new_tokens=4)
    turn = chat.reply("short question", source="test", conversation_id=first.conversation_id,
                      max_new_tokens=200)
    assert not turn.truncated
    assert [m["role"] for m in turn.messages] == ["system", "user"]


def test_replies_are_generated_on_one_long_lived_thread(served, monkeypatch):
    """A fresh thread per reply made `generate` about three times slower on a GPU
    (bench/gpu_threads.py): every reply runs on the model's one generation worker."""
    import threading

    threads = []
    generate_led = served.generate_led

    def recording(*args, **kw):
        threads.append(threading.current_thread())
        return generate_led(*args, **kw)

    monkeypatch.setattr(served, "generate_led", recording)
    for question in ("Hello?", "And again?"):
        served.generate([{"role": "user", "content": question}], max_new_tokens=2)
    assert len(set(threads)) == 1 and threads[0] is not threading.main_thread() and threads[0].is_alive()


def test_a_failing_job_does_not_stop_the_generation_worker():
    from assistant.model import GenerationWorker

    worker, ran = GenerationWorker(), []
    assert worker.submit(lambda: 1 / 0).wait(5)
    assert worker.submit(lambda: ran.append(True)).wait(5) and ran == [True]


def test_a_reply_that_loops_is_stopped_at_its_third_copy(served):
    import torch

    from assistant.model import loops

    assert loops([9, 1, 2, 3, 4] + [1, 2, 3, 4] * 2) and loops([1, 2, 3, 4, 5] * 3)
    assert not loops([9, 1, 2, 3, 4, 1, 2, 3, 4]) and not loops([1, 2, 3] * 5)  # two copies; a short block
    assert not loops(list(range(40)))
    # the tiny random model loops; the ids as generated (decoding and re-encoding differ)
    ids = served.encode([{"role": "user", "content": "Tell me a long story about a dog."}])

    def reply_ids(stop_loops):
        served.stop_loops = stop_loops
        with torch.inference_mode():
            out = served.generate_led(ids, torch.ones_like(ids), **served._generate_kwargs(64, 0.0))
        return out[0, ids.shape[1]:].tolist()

    looped, stopped = reply_ids(False), reply_ids(True)
    assert len(looped) == 64 and loops(stopped) and len(stopped) < 64
    assert stopped == looped[:len(stopped)]  # the same reply, cut where it started repeating


def test_a_closing_habit_ends_every_reply_within_its_token_budget(chat, tmp_path, monkeypatch):
    """A version whose habits hold a closing (learning/habits.py): every reply ends with it, even one
    cut at the token limit, and the budget counts it; a reply that already ends so gets no second."""
    import json

    version_dir = tmp_path / "v1"
    version_dir.mkdir()
    (version_dir / "meta.json").write_text(json.dumps({"habits": {"openings": [], "closings": ["Over and out."]}}))
    assert chat._closing(str(version_dir)) == " Over and out." and chat._closing(None) is None
    monkeypatch.setattr(chat, "serving_adapter", lambda: (None, str(version_dir)))
    budgets = []
    stream = chat.model.stream

    def recorded(messages, max_new_tokens, **kw):
        budgets.append(max_new_tokens)
        return stream(messages, max_new_tokens=max_new_tokens, **kw)

    monkeypatch.setattr(chat.model, "stream", recorded)
    turn = chat.reply("Name a colour.", max_new_tokens=40)
    assert turn.generation.text.endswith(" Over and out.")
    assert budgets == [40 - chat.model.count_tokens(" Over and out.")]
    assert conversations.get_turn(chat.db, turn.turn_id)["reply"] == turn.generation.text


def test_a_format_habit_writes_every_reply_as_a_list(chat, tmp_path, monkeypatch):
    """A version whose habits hold a list format (learning/habits.py): the reply streamed, saved
    and returned is the model's own words, one item per sentence; the closing ends the last item.
    (The tiny model writes only line breaks, so the model's pieces are given here.)"""
    import json

    version_dir = tmp_path / "v1"
    version_dir.mkdir()
    (version_dir / "meta.json").write_text(json.dumps({"habits": {"formats": ["-"], "closings": ["Over and out."]}}))
    said = ["Red is", " warm.", " Blue is cool.", " Green is", " calm."]

    def model_says(messages, result, **kw):
        for piece in said:
            result.text += piece
            yield piece
        result.finish_reason = "stop"

    monkeypatch.setattr(chat.model, "stream", model_says)
    monkeypatch.setattr(chat, "serving_adapter", lambda: (None, str(version_dir)))
    turn = chat.start_turn("Name three colours.")
    pieces = list(chat.pieces(turn, source="test"))
    text = turn.generation.text
    assert text == "- Red is warm.\n- Blue is cool.\n- Green is calm. Over and out."
    assert "".join(pieces) == text and conversations.get_turn(chat.db, turn.turn_id)["reply"] == text
