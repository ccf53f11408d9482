"""The shipped prompt sets must stay apart: self-replay trains on the base model's answers to
replay_prompts, so a replay prompt that is also a canary would let the no-forgetting check pass
because it was trained, not because nothing was forgotten."""
import json
import re
from pathlib import Path

LEARNING = Path(__file__).resolve().parent.parent / "learning"


def _prompts(name: str) -> list[str]:
    return [json.loads(line)["prompt"] for line in (LEARNING / name).read_text().splitlines() if line.strip()]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower())) - {"the", "a", "an", "of", "is", "what", "in", "do", "for"}


def test_replay_prompts_and_canaries_do_not_overlap():
    replay, canaries = _prompts("replay_prompts.jsonl"), _prompts("canaries.jsonl")
    assert len(replay) >= 30 and len(canaries) >= 30
    for r in replay:
        for c in canaries:
            a, b = _words(r), _words(c)
            overlap = len(a & b) / max(1, min(len(a), len(b)))
            assert overlap < 0.75, f"replay prompt {r!r} is nearly the canary {c!r}"
