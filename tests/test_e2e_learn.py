"""End to end on the real embedded model: real answers corrected, a short real TRL cycle
(SFT + DPO), a candidate adapter registered with its meta.json and loadable by the server."""
import json
from pathlib import Path

import pytest

from assistant.config import Config
from assistant.model import ServedModel
from assistant.runtime import Runtime
from learning import learner
from learning.config import LearnConfig
from store import adapters

pytestmark = pytest.mark.e2e

SHORT = LearnConfig(sft_epochs=1, dpo_epochs=1, self_replay=4, sft_batch_size=8, dpo_batch_size=2,
                    sft_max_length=96, dpo_max_length=96, heldout_fraction=0.0)


def test_short_cycle_on_the_embedded_model(home, embedded_model_dir, monkeypatch):
    cfg = Config(home=home, model=str(embedded_model_dir))
    runtime = Runtime.create(cfg, model=ServedModel(str(embedded_model_dir)), with_memory=False)
    for prompt, fix in [("What is the name of my dog?", "Your dog is called Biscuit."),
                        ("Where do I work?", "You work at Halvorsen Robotics in Trondheim.")]:
        turn = runtime.chat.reply(prompt, max_new_tokens=16, recall=False)
        runtime.record_feedback(turn.turn_id, "down")
        runtime.record_feedback(turn.turn_id, "correction", correction=fix)
    liked = runtime.chat.reply("How do I boil an egg?", max_new_tokens=16, recall=False)
    runtime.record_feedback(liked.turn_id, "up")  # the shared adapter's to learn: the corrections get experts
    monkeypatch.setattr(learner, "_gate", lambda: None)  # the gate's own e2e test covers it

    result = learner.run_cycle(cfg, SHORT)

    row = adapters.get_adapter(runtime.db, result["version"])
    assert row["status"] == "candidate" and row["n_corrections"] == 2
    meta = json.loads((cfg.adapters_dir / "v1" / "meta.json").read_text())
    assert len(meta["feedback_ids"]) == 5  # two corrections, the down votes sent with them, the up vote
    rows = meta["stats"]["sft_rows"]
    assert rows["augment"] > 0 and rows["to_experts"] == rows["given"] - 1 + rows["augment"]
    assert meta["stats"]["sft"]["rows"] == 1 + rows["self_replay"] and rows["self_replay"] > 0
    assert meta["stats"]["sft"]["tokens_per_s"] > 0 and "dpo" not in meta["stats"]  # each expert has its pair
    assert {x["stage"] for x in meta["losses"]} == {"SFT", "expert", "expert DPO"}
    assert [e["prompt"] for e in meta["experts"]] == ["What is the name of my dog?", "Where do I work?"]
    # The served model accepts it and answers differently from the base model.
    runtime.model.use(None)
    base = runtime.model.logits([{"role": "user", "content": "What is the name of my dog?"}])
    tuned = runtime.model.logits([{"role": "user", "content": "What is the name of my dog?"}],
                                 version=row["version"], adapter_path=row["path"])
    assert not (base == tuned).all()
    dog = meta["experts"][0]  # its expert loads too, and answers differently from the shared adapter
    expert = runtime.model.logits([{"role": "user", "content": "What is the name of my dog?"}],
                                  version=(row["version"], f"expert:{dog['adapter']}"),
                                  adapter_path=Path(row["path"]) / "experts" / dog["adapter"])
    assert not (expert == tuned).all() and not (expert == base).all()


def test_a_forgotten_fact_is_not_said_at_once_nor_after_the_next_cycle(home, embedded_model_dir, monkeypatch):
    """Issue 27: forgetting one item in the page removes it from recall at once and from the
    weights at the next cycle, which the take-back alone starts; weights alone and with recall,
    on the real embedded model and MiniLM. The other fact taught with it stays learned."""
    from assistant import ui_knows
    from learning import control

    cfg = Config(home=home, model=str(embedded_model_dir))
    runtime = Runtime.create(cfg, model=ServedModel(str(embedded_model_dir)))
    taught = {}
    for prompt, fix in [("What is the name of my dog?", "Your dog is called Biscuit."),
                        ("Where do I work?", "You work at Halvorsen Robotics in Trondheim.")]:
        turn = runtime.chat.reply(prompt, max_new_tokens=16, recall=False)
        taught[prompt] = runtime.record_feedback(turn.turn_id, "correction", correction=fix)
    monkeypatch.setattr(learner, "_gate", lambda: None)  # the gate's own e2e test covers it

    def says(prompt, word, recall):
        return word in runtime.chat.reply(prompt, max_new_tokens=24, recall=recall).generation.text.lower()

    adapters.activate(runtime.db, learner.run_cycle(cfg, SHORT)["version"])
    assert says("What is the name of my dog?", "biscuit", recall=False)  # learned: the test can fail

    notice = ui_knows.forget(runtime, taught["What is the name of my dog?"])
    assert "v1" in notice  # the page says which version still holds it
    assert not runtime.memory.recall("What is the name of my dog?")
    assert not says("What is the name of my dog?", "biscuit", recall=True)  # at once: its expert stops too
    assert control.should_start(runtime.db, LearnConfig(min_gap_s=0, min_new_feedback=1))[0]  # it counts as new

    second = learner.run_cycle(cfg, SHORT)
    adapters.activate(runtime.db, second["version"])
    for prompt in ("What is the name of my dog?", "What's my dog called?"):
        for recall in (False, True):
            assert not says(prompt, "biscuit", recall), (prompt, recall)
    assert says("Where do I work?", "halvorsen", recall=False)
