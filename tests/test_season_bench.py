"""bench/season.py's bookkeeping: probes asked in turn, and disk counted as the disk holds it."""
import os
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # after the packages: no shadowing

import season  # noqa: E402


def test_rotation_takes_n_in_turn_and_every_value_over_the_cycles():
    values = ["re-ask", "p1", "p2", "p3"]
    assert season.rotation(values, None, 3) == list(enumerate(values))
    assert season.rotation(values, 9, 3) == list(enumerate(values))
    assert season.rotation(values, 1, 1) == [(1, "p1")]
    assert season.rotation(values, 2, 3) == [(0, "re-ask"), (3, "p3")]  # wraps, in index order
    seen = {i for cycle in range(4) for i, _ in season.rotation(values, 1, cycle)}
    assert seen == {0, 1, 2, 3}


def test_probes_at_scores_each_live_item_on_its_turn_and_keeps_the_reask_family():
    items = [{"id": "dog", "kind": "fact", "probes": ["What's my dog called?", "My dog's name?"],
              "expect": ["biscuit"]},
             {"id": "later", "kind": "fact", "probes": ["Q?", "Q2?"], "expect": ["x"]},
             {"id": "c", "kind": "control", "probes": ["What is 2+2?"], "expect": ["4"]}]
    state = {"taught": {"dog"}, "back": set(), "updated": set()}
    got = season.probes_at(items, state, [], per_item=1, cycle=1)
    assert [(p["item"], p["prompt"], p["family"]) for p in got] == [
        ("dog", "My dog's name?", "paraphrase"), ("c", "What is 2+2?", "reask")]
    got = season.probes_at(items, state, [], per_item=1, cycle=2)
    assert got[0]["prompt"] == "What's my dog called?" and got[0]["family"] == "reask"


def test_disk_counts_a_hard_linked_file_once(tmp_path):
    v1, v2 = tmp_path / "adapters" / "v1", tmp_path / "adapters" / "v2"
    v1.mkdir(parents=True)
    v2.mkdir()
    (v1 / "adapter_model.safetensors").write_bytes(b"x" * 1_000_000)
    os.link(v1 / "adapter_model.safetensors", v2 / "adapter_model.safetensors")
    (v2 / "other.safetensors").write_bytes(b"y" * 500_000)
    assert season.disk_mb(tmp_path)["adapters"] == 1.5
