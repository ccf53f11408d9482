"""Chat and recall on any script (issue 29): bench/recall_dev_multilingual.jsonl (Chinese, Russian,
Arabic, Greek, emoji, mixed) taught and asked through the real server with the real MiniLM recall.
No request may fail, and each correction is recalled when its question is asked again. How well
paraphrases and controls fare is measured, not asserted: bench/multilingual.py."""
import json
from pathlib import Path

import httpx
import pytest

from assistant.config import Config
from assistant.embedders import MiniLMEmbedder
from assistant.memory import Memory
from assistant.runtime import Runtime
from assistant.server import start_server
from store import conversations

DEV = Path(__file__).resolve().parents[1] / "bench" / "recall_dev_multilingual.jsonl"
ROWS = [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]
FACTS = [r for r in ROWS if r["kind"] == "fact"]
# All-MiniLM's vocabulary has no emoji: every emoji-only message embeds as the same [UNK], so
# "🐶❓" and "☕️❓" cannot be told apart; such a message is matched against nothing
# (SentenceEmbedder.readable) rather than against everything alike.
EMBEDDABLE = [f for f in FACTS if f["lang"] != "emoji"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_path, tiny_served):
    cfg = Config(home=tmp_path_factory.mktemp("multilingual-home"), model=str(tiny_model_path),
                 default_max_new_tokens=4)
    tiny_served.use(None)
    rt = Runtime.create(cfg, model=tiny_served, memory=Memory(cfg, embedder=MiniLMEmbedder()))
    # Supersession's judge is the chat model's likelihood: the tiny random model finds every two
    # corrections MiniLM puts near each other to be one fact and links them (same-script
    # questions sit near each other for MiniLM). Only the store's same-question rule here.
    rt.superseder = None
    running = start_server(rt, ui=False)
    yield running, rt
    running.stop()


def chat(url: str, text: str, stream: bool = False) -> str:
    """One turn; fails on anything but a whole, error-free reply. Returns the turn id."""
    body = {"model": "assistant", "max_tokens": 4, "stream": stream, "messages": [{"role": "user", "content": text}]}
    if not stream:
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, (text, r.text)
        return r.json()["id"]
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, text
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and not any('"error"' in e for e in events), (text, events[-2:])
    return r.headers["x-assistant-turn-id"]


def test_every_script_chats_and_its_corrections_are_recalled(server):
    running, rt = server
    taught = {}
    for f in FACTS:
        turn_id = chat(running.url, f["teach"]["prompt"])
        r = httpx.post(running.url + "/v1/feedback", timeout=60, json={
            "turn_id": turn_id, "rating": "down", "correction": f["teach"]["correction"]})
        assert r.status_code == 200, r.text
        taught[f["id"]] = r.json()["feedback_ids"][-1]
    recalled = {}
    for f in FACTS:  # with every correction present: each question streamed and not, each paraphrase
        recalled[f["id"]] = chat(running.url, f["teach"]["prompt"], stream=True)
        chat(running.url, f["teach"]["prompt"])
        for text in f["paraphrases"]:
            chat(running.url, text)
    for c in (r for r in ROWS if r["kind"] == "control"):
        for text in c["probes"]:
            chat(running.url, text, stream=True)
    first = {fid: json.loads(conversations.get_turn(rt.db, tid)["recalled_json"])[:1] for fid, tid in recalled.items()}
    assert {f["id"]: first[f["id"]] for f in EMBEDDABLE} == {f["id"]: [taught[f["id"]]] for f in EMBEDDABLE}
    unreadable = [f["id"] for f in FACTS if f["lang"] == "emoji"]
    assert unreadable and all(first[i] == [] for i in unreadable)  # recalls nothing, not the dog for "🎉🎉🎉"
    assert conversations.empty_conversations(rt.db) == []
