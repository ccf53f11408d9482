"""End to end on the real embedded model: a chat turn through the HTTP API is logged with its
tokens and timings."""
import openai
import pytest

from assistant.config import Config
from assistant.runtime import Runtime
from assistant.server import start_server
from store import conversations


@pytest.mark.e2e
def test_an_api_turn_on_the_embedded_model_is_logged_with_tokens_and_timings(tmp_path, embedded_model_dir):
    from assistant.model import ServedModel

    cfg = Config(home=tmp_path / "home", model=str(embedded_model_dir))
    runtime = Runtime.create(cfg, model=ServedModel(str(embedded_model_dir)), with_memory=False)
    server = start_server(runtime, ui=False)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        chunks = list(client.chat.completions.create(
            model="assistant", max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "What is the capital of France?"}]))
    finally:
        server.stop()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    row = conversations.get_turn(runtime.db, chunks[0].id)
    assert text.strip() and row["reply"] == text
    assert sum(w.isalpha() for w in text.replace(",", " ").split()) >= 3  # words, not noise
    assert row["prompt_tokens"] > 10 and 0 < row["completion_tokens"] <= 16
    assert chunks[-1].usage.completion_tokens == row["completion_tokens"]
    assert 0 < row["ttft_ms"] <= row["duration_ms"]
    assert row["source"] == "api" and row["model"] == str(embedded_model_dir)
    assert row["adapter_version"] is None and row["finish_reason"] in ("stop", "length")
