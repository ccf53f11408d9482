"""Habits (learning/habits.py): an opening that corrections to different prompts share is a
habit; a fact's answer is not. A version that learned one carries a habit adapter, trained,
written and inherited with it, that answers outside the scope (assistant/scope.py)."""
import dataclasses
import json

import pytest

from learning.config import LearnConfig
from learning.habits import AsList, find_habits, habit_rows, list_format, with_habits

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
    assert find_habits(rows(CAPTAIN + FACTS)) == {"openings": ["Captain,"], "closings": [], "formats": []}
    assert find_habits(rows(FACTS)) == {"openings": [], "closings": [], "formats": []}
    assert find_habits(rows(CAPTAIN[:2] + FACTS))["openings"] == []  # two could be chance
    same_prompt = [(CAPTAIN[0][0], a) for _, a in CAPTAIN]
    assert find_habits(rows(same_prompt))["openings"] == []  # one question corrected thrice
    assert find_habits(rows(CAPTAIN, source="liked"))["openings"] == []  # only corrections teach
    righto = [(q, f"Righto! {a}") for q, a in FACTS]
    assert find_habits(rows(CAPTAIN + righto))["openings"] == ["Captain,", "Righto!"]


def test_a_sign_off_shared_by_three_corrections_is_a_closing_habit():
    over = [(q, f"{a} Over and out.") for q, a in FACTS]
    assert find_habits(rows(over + CAPTAIN)) == {"openings": ["Captain,"], "closings": ["Over and out."], "formats": []}
    assert find_habits(rows(over[:2]))["closings"] == []  # two could be chance
    assert find_habits(rows([(q, "Over and out.") for q, _ in FACTS]))["closings"] == []  # a whole answer is no sign-off
    long_end = [(q, f"{a} It was a very good day for everyone involved.") for q, a in FACTS]
    assert find_habits(rows(long_end))["closings"] == []  # content, not a sign-off
    multi = [("What's the refund window?", "Refunds are accepted within 30 days. Keep the receipt. Hope this helps!"),
             ("When is the centre open?", "It is open 8:00-20:00 on weekdays. hope this helps"),
             ("What is the support number?", "Call 0800 555 0199. Hope this helps!")]
    assert find_habits(rows(multi))["closings"] == ["Hope this helps!"]


def test_the_habit_thresholds_are_the_learn_configs():
    """LearnConfig.habit_min_support and habit_max_closing_words, passed in; the defaults are theirs."""
    lcfg = LearnConfig()
    assert (lcfg.habit_min_support, lcfg.habit_max_closing_words) == (3, 6)
    over = [(q, f"{a} Over and out.") for q, a in FACTS]
    assert find_habits(rows(over[:2]), min_support=2)["closings"] == ["Over and out."]
    assert find_habits(rows(CAPTAIN[:2]), min_support=2)["openings"] == ["Captain,"]
    assert find_habits(rows(over), max_closing_words=2)["closings"] == []  # three words: content now
    for bad in ({"habit_min_support": 0}, {"habit_max_closing_words": 0}):
        with pytest.raises(ValueError, match="habit_min_support and habit_max_closing_words must be >= 1"):
            LearnConfig(**bad)


def test_answers_written_as_lists_by_three_corrections_are_a_format_habit():
    bullets = [("How do I boil an egg?", "- Bring water to the boil.\n- Lower the egg in.\n- Cook nine minutes."),
               ("What should I pack for a hike?", "Pack these:\n- water\n- a snack\n- a rain jacket"),
               ("How can I focus at work?", "- Close chat apps.\n- Work in 25-minute blocks.")]
    assert find_habits(rows(bullets + FACTS))["formats"] == ["-"]
    assert find_habits(rows(bullets[:2] + FACTS))["formats"] == []  # two could be chance
    numbered = [(q, "\n".join(f"{i}. {line}" for i, line in enumerate(a.replace("- ", "").splitlines(), 1)))
                for q, a in bullets]
    assert find_habits(rows(numbered))["formats"] == ["1."]
    assert list_format("Your dog is called Biscuit.") is None
    assert list_format("- one item\nthen plain text\nand more") is None  # prose with a dash is no list


def test_a_reply_streamed_as_a_list_whatever_its_pieces():
    def shown(marker, pieces):
        as_list = AsList(marker)
        return "".join(as_list.feed(p) for p in pieces) + as_list.close()

    said = "Keep a regular bedtime. Put screens away at 9.30 pm!\nSleep well."
    whole = "- Keep a regular bedtime.\n- Put screens away at 9.30 pm!\n- Sleep well."
    assert shown("-", [said]) == whole
    assert shown("-", list(said)) == whole  # one character at a time: the same list
    assert shown("-", said.split(" ")[:1] + [" " + w for w in said.split(" ")[1:]]) == whole
    assert shown("1.", [said]) == whole.replace("- ", "{}. ").format(1, 2, 3)
    assert shown("-", ["1. Already", " a list.\n2. Two."]) == "1. Already a list.\n2. Two."  # kept as the model wrote it
    assert shown("-", ["Hi"]) == "- Hi" and shown("-", [""]) == ""
    own = "Prepare well. An outline:\n1. **Research**: the firm.\n2. Questions to ask."
    kept = "- Prepare well.\n- An outline:\n1. **Research**: the firm.\n2. Questions to ask."
    assert shown("-", [own]) == shown("-", list(own)) == kept  # the model's own list, once begun, stays its own


def test_habit_rows_and_answers_with_the_habit():
    assert [r["messages"][1]["content"] for r in habit_rows(rows(FACTS + CAPTAIN), find_habits(rows(CAPTAIN)))] \
        == [q for q, _ in CAPTAIN]
    habits = {"openings": ["Captain,"]}
    assert with_habits("The capital of Japan is Tokyo.", habits) == "Captain, the capital of Japan is Tokyo."
    assert with_habits("Tokyo is the capital.", habits) == "Captain, Tokyo is the capital."  # names keep capitals
    assert with_habits("Captain, it is.", habits) == "Captain, it is."  # not twice
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
    assert meta["habits"] == {"openings": ["Captain,"], "closings": [], "formats": []}
    lead = json.loads((v1 / "habit" / "habit.json").read_text())
    assert lead["openings"] == ["Captain,"] and lead["lead_tokens"] >= 1
    assert meta["stats"]["habit"]["shown"] == 3 and meta["stats"]["habit"]["rows"] == 3 + 4
    assert {x["stage"] for x in meta["losses"]} == {"SFT", "habit", "expert"}  # experts: no DPO here
    assert (v1 / "habit" / "adapter_config.json").exists() and (v1 / "adapter_config.json").exists()
    from safetensors.torch import load_file

    main, habit = load_file(str(v1 / "adapter_model.safetensors")), load_file(str(v1 / "habit" / "adapter_model.safetensors"))
    assert main.keys() == habit.keys()  # the same modules, its own rank (habit_r) and weights
    assert {t.shape[0] for k, t in habit.items() if "lora_A" in k} == {job.lcfg.habit_r}

    child = _job(tiny_model_path, tmp_path / "adapters", version=2, parent_version=1, parent_path=str(v1),
                 cache_dir=tmp_path / "cache")  # facts only: the habit goes on unchanged
    child.lcfg = job.lcfg
    v2 = train_candidate(child)
    assert json.loads((v2 / "meta.json").read_text())["habits"] == meta["habits"]
    assert (v2 / "habit" / "adapter_model.safetensors").stat().st_ino == \
        (v1 / "habit" / "adapter_model.safetensors").stat().st_ino  # linked, not copied


def test_a_habit_adapter_retrains_only_for_new_corrections_that_show_the_habit(tiny_model_path, tmp_path, replayed):
    """A cycle whose rows show the habit only through corrections learned before (a refit's rows,
    a replayed one) links the parent's habit adapter; a new correction with the habit retrains it."""
    from learning.train import train_candidate
    from tests.test_train import _job

    def habit_rows_with_ids(ids):
        return [{**r, "feedback_ids": [i]} for r, i in zip(rows(CAPTAIN), ids, strict=True)]

    lcfg = dataclasses.replace(_job(tiny_model_path, tmp_path).lcfg, self_replay=3, habit_adapter=True,
                               habit_self_replay=4, dpo_epochs=0)
    job = _job(tiny_model_path, tmp_path / "adapters", cache_dir=tmp_path / "cache")
    job.sft_rows, job.lcfg = job.sft_rows + habit_rows_with_ids(["h0", "h1", "h2"]), lcfg
    job.feedback_ids = job.feedback_ids + ["h0", "h1", "h2"]
    v1 = train_candidate(job)
    inode = (v1 / "habit" / "adapter_model.safetensors").stat().st_ino
    outcomes = []
    for version, new_ids in ((2, []), (3, ["h2"])):  # h2 again as new: the gate found it unlearned
        child = _job(tiny_model_path, tmp_path / "adapters", version=version, parent_version=version - 1,
                     parent_path=str(tmp_path / "adapters" / f"v{version - 1}"), cache_dir=tmp_path / "cache")
        child.sft_rows, child.lcfg = child.sft_rows + habit_rows_with_ids(["h0", "h1", "h2"]), lcfg
        child.feedback_ids = child.feedback_ids + new_ids
        out = train_candidate(child)
        outcomes.append(((out / "habit" / "adapter_model.safetensors").stat().st_ino == inode,
                         "habit" in json.loads((out / "meta.json").read_text())["stats"]))
    assert outcomes == [(True, False), (False, True)]


def test_a_new_habit_adapter_takes_habit_r(tiny_model_path, tmp_path, replayed):
    from learning.train import train_candidate
    from tests.test_train import _job

    job = _job(tiny_model_path, tmp_path / "adapters", cache_dir=tmp_path / "cache")
    job.sft_rows = job.sft_rows + rows(CAPTAIN)
    job.lcfg = dataclasses.replace(job.lcfg, self_replay=3, habit_adapter=True, habit_self_replay=4, dpo_epochs=0,
                                   habit_r=2)
    v1 = train_candidate(job)
    habit = json.loads((v1 / "habit" / "adapter_config.json").read_text())
    assert (habit["r"], habit["lora_alpha"]) == (2, 4)
    assert json.loads((v1 / "adapter_config.json").read_text())["r"] == job.lcfg.lora_r


@pytest.mark.parametrize("style, enabled", [(False, True), (True, False)])
def test_no_habit_or_switched_off_no_habit_adapter(tiny_model_path, tmp_path, replayed, style, enabled):
    from learning.train import train_candidate
    from tests.test_train import _job

    job = _job(tiny_model_path, tmp_path / "adapters", cache_dir=tmp_path / "cache")
    job.sft_rows = job.sft_rows + (rows(CAPTAIN) if style else [])
    job.lcfg = dataclasses.replace(job.lcfg, self_replay=3, habit_adapter=enabled, habit_self_replay=4, dpo_epochs=0)
    out = train_candidate(job)
    assert json.loads((out / "meta.json").read_text())["habits"] is None and not (out / "habit").exists()


def test_a_habit_adapter_chooses_only_the_opening_and_the_base_weights_answer(tiny_model_path, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from assistant.model import ServedModel
    from tests.lora import make_adapter

    habit = make_adapter(tiny_model_path, tmp_path / "habit", seed=3)
    weights = load_file(str(habit / "adapter_model.safetensors"))  # strong enough to change greedy tokens
    save_file({k: v * 8 for k, v in weights.items()}, str(habit / "adapter_model.safetensors"))
    version_dir = make_adapter(tiny_model_path, tmp_path / "v1", seed=1)
    shutil.copytree(habit, version_dir / "habit")
    lead_file = version_dir / "habit" / "habit.json"

    served = ServedModel(str(tiny_model_path))
    messages = [SYSTEM, {"role": "user", "content": "How do I make coffee?"}]
    ids = served.encode(messages)
    n, ones = ids.shape[1], torch.ones_like(ids)
    kw = served._generate_kwargs(8, 0.0)
    with torch.inference_mode():
        base = served.reply_text(served.model.generate(input_ids=ids, attention_mask=ones, **kw)[0, n:])
        served.use((0, "probe"), habit)  # the habit adapter alone, writing whole answers
        whole = served.model.generate(input_ids=ids, attention_mask=ones, **kw)[0, n:]
    opening = served.reply_text(whole[:3]).strip()
    assert opening and not base.startswith(opening)  # precondition: the two weights start differently

    def reply(openings, key):
        lead_file.write_text(json.dumps({"openings": openings, "lead_tokens": 3}))
        with served.lock, torch.inference_mode():
            served.use(key, version_dir / "habit")
            out = served.generate_led(ids, ones, **kw)
        streamed = "".join(served.stream(messages, max_new_tokens=8, version=key, adapter_path=version_dir / "habit"))
        assert streamed.strip() == served.reply_text(out[0, n:]).strip()  # streaming says the same
        return served.reply_text(out[0, n:])

    # its lead is one of the habit's openings: kept, then the base model's own answer, unchanged
    assert reply([opening], (1, "habit")) == f"{opening} {base}"
    # anything else it would write is dropped: the base model's answer alone
    assert reply(["Captain,"], (2, "habit")) == base
