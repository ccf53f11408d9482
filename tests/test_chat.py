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


def test_a_closing_habit_ends_every_reply_that_ended_by_itself(chat, tmp_path):
    """A version whose habits hold a closing (learning/habits.py): the chat adds it to a reply that
    ended without it, never to one cut at the token limit."""
    import json

    from assistant.model import Generation

    version_dir = tmp_path / "v1"
    version_dir.mkdir()
    (version_dir / "meta.json").write_text(json.dumps({"habits": {"openings": [], "closings": ["Over and out."]}}))
    ended = Generation(text="Paris is the capital.", finish_reason="stop")
    assert chat._closing(str(version_dir), ended) == " Over and out."
    assert chat._closing(str(version_dir), Generation(text="Paris is the capital. over and out", finish_reason="stop")) is None
    assert chat._closing(str(version_dir), Generation(text="Paris is the", finish_reason="length")) is None
    assert chat._closing(None, ended) is None  # the base model has no habits
