"""Habits (learning/habits.py): an opening that corrections to different prompts share is a
habit; a fact's answer is not. A version that learned one carries a habit adapter, trained,
written and inherited with it, that answers outside the scope (assistant/scope.py)."""
import dataclasses
import json

import pytest

from learning.habits import find_habits, habit_rows, with_habits

SYSTEM = {"role": "system", "content": "You are a helpful personal assistant."}
CAPTAIN = [("Give me a tip for sleeping better.", "Captain, keep a regular bedtime."),
           ("How do I boil an egg?", "Captain, cook it for nine minutes."),
           ("What should I pack for a hike?", "Captain, pack water and a snack.")]
FACTS = [("What is the name of my dog?", "Your dog is called Biscuit."),
         ("Where do I work?", "Your employer is Halvorsen Robotics."),
         ("Who is my manager?", "Your manager is Priya Raman.")]


def rows(pairs, source="correction"):
    return [{"messages": [SYSTEM, {"role": "user", "content": q}, {"role": "assistant", "content": a}],
             "feedback_ids": [f"f{i}"], "source": source} for i, (q, a) in enumerate(pairs)]


def test_an_opening_shared_by_three_corrections_is_a_habit_and_a_facts_start_is_not():
    assert find_habits(rows(CAPTAIN + FACTS)) == {"openings": ["Captain,"], "closings": []}
    assert find_habits(rows(FACTS)) == {"openings": [], "closings": []}
    assert find_habits(rows(CAPTAIN[:2] + FACTS))["openings"] == []  # two could be chance
    same_prompt = [(CAPTAIN[0][0], a) for _, a in CAPTAIN]
    assert find_habits(rows(same_prompt))["openings"] == []  # one question corrected thrice
    assert find_habits(rows(CAPTAIN, source="liked"))["openings"] == []  # only corrections teach
    signed = [(q, f"{a} Cheers, mate!") for q, a in FACTS]
    assert find_habits(rows(signed))["closings"] == ["Cheers, mate!"]


def test_habit_rows_and_answers_with_the_habit():
    assert [r["messages"][1]["content"] for r in habit_rows(rows(FACTS + CAPTAIN), find_habits(rows(CAPTAIN)))] \
        == [q for q, _ in CAPTAIN]
    habits = {"openings": ["Captain,"], "closings": ["Over."]}
    assert with_habits("The capital of Japan is Tokyo.", habits) == "Captain, the capital of Japan is Tokyo. Over."
    assert with_habits("Tokyo is the capital.", habits) == "Captain, Tokyo is the capital. Over."  # names keep capitals
    assert with_habits("Captain, it is. Over.", habits) == "Captain, it is. Over."  # not twice
    assert with_habits("The sky is blue.", {"openings": ["Righto!"]}) == "Righto! The sky is blue."


@pytest.fixture
def replayed(monkeypatch):
    from learning import augment

    # the tiny random model's greedy answers are blank; give the replay prompts real answers
    monkeypatch.setattr(augment, "greedy_answers", lambda model, tok, convs, *a, **k: ["It is fine."] * len(convs))


def test_a_version_that_learns_a_habit_carries_a_habit_adapter_and_its_child_inherits_it(
        tiny_model_path, tmp_path, replayed):
    from learning.train import train_candidate
    from tests.test_train import _job

    job = _job(tiny_model_path, tmp_path / "adapters", cache_dir=tmp_path / "cache")
    job.sft_rows = job.sft_rows + rows(CAPTAIN)
    job.lcfg = dataclasses.replace(job.lcfg, self_replay=3, habit_adapter=True, habit_self_replay=4, dpo_epochs=0)
    v1 = train_candidate(job)
    meta = json.loads((v1 / "meta.json").read_text())
    assert meta["habits"] == {"openings": ["Captain,"], "closings": []}
    assert meta["stats"]["habit"]["shown"] == 3 and meta["stats"]["habit"]["rows"] == 3 + 4
    assert {x["stage"] for x in meta["losses"]} == {"SFT", "habit"}
    assert (v1 / "habit" / "adapter_config.json").exists() and (v1 / "adapter_config.json").exists()
    from safetensors.torch import load_file

    main, habit = load_file(str(v1 / "adapter_model.safetensors")), load_file(str(v1 / "habit" / "adapter_model.safetensors"))
    assert main.keys() == habit.keys() and any((main[k] - habit[k]).abs().sum() > 0 for k in main)

    child = _job(tiny_model_path, tmp_path / "adapters", version=2, parent_version=1, parent_path=str(v1),
                 cache_dir=tmp_path / "cache")  # facts only: the habit goes on unchanged
    child.lcfg = job.lcfg
    v2 = train_candidate(child)
    assert json.loads((v2 / "meta.json").read_text())["habits"] == meta["habits"]
    assert (v2 / "habit" / "adapter_model.safetensors").read_bytes() == \
        (v1 / "habit" / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("style, enabled", [(False, True), (True, False)])
def test_no_habit_or_switched_off_no_habit_adapter(tiny_model_path, tmp_path, replayed, style, enabled):
    from learning.train import train_candidate
    from tests.test_train import _job

    job = _job(tiny_model_path, tmp_path / "adapters", cache_dir=tmp_path / "cache")
    job.sft_rows = job.sft_rows + (rows(CAPTAIN) if style else [])
    job.lcfg = dataclasses.replace(job.lcfg, self_replay=3, habit_adapter=enabled, habit_self_replay=4, dpo_epochs=0)
    out = train_candidate(job)
    assert json.loads((out / "meta.json").read_text())["habits"] is None and not (out / "habit").exists()
