"""Per-correction experts (learning/experts.py): trained once, kept by later versions, and the
expert of a prompt's nearest trained prompt answers it, in the chat and in evaluation alike."""
import dataclasses
import json

import torch

from assistant.chat import ChatService
from assistant.model import ServedModel
from assistant.scope import AdapterScope
from learning.experts import expert_groups
from learning.scoring import Scorer
from learning.train import TrainJob, train_candidate
from store import adapters, conversations, feedback
from store.manifest import EXPERTS_DIR, read_experts, read_scope
from tests.lora import corrupt_adapter, make_adapter, register
from tests.test_datasets import turn
from tests.test_memory import HashEmbedder as Embedder
from tests.test_scope import scoped
from tests.test_train import SYSTEM, _job, _weights

DOG, WORK, LIKED = "What is the name of my dog?", "Where do I work?", "How do I boil an egg?"


def _version_with_experts(base_path, out, broken: str | None = None):
    """A version dir whose scope has a liked prompt and two corrections, each with an expert."""
    make_adapter(base_path, out, seed=1)
    experts = []
    for i, prompts in enumerate(([DOG, "What's my dog called?"], [WORK])):
        name = f"v1-{i}"
        make_adapter(base_path, out / EXPERTS_DIR / name, seed=10 + i)
        experts.append({"name": name, "feedback_ids": [f"f{i}"], "prompt": prompts[0], "answer": "...",
                        "prompts": prompts, "trained_in": 1})
    if broken:
        corrupt_adapter(out / EXPERTS_DIR / "v1-1", out / EXPERTS_DIR / "broken", broken)
        experts[1]["name"] = "broken"
    (out / "meta.json").write_text(json.dumps({"experts": experts}))
    return scoped(out, [DOG, "What's my dog called?", WORK, LIKED])


def test_corrections_are_grouped_with_their_pairs_and_other_rows_are_not():
    sft = [{"messages": [SYSTEM, {"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "feedback_ids": ids, "source": src}
           for q, a, ids, src in ((DOG, "Biscuit.", ["f0"], "correction"), (DOG, "Biscuit.", ["f0"], "augment"),
                                  (LIKED, "Boil it.", ["f9"], "liked"), (WORK, "Halvorsen.", ["f1"], "correction"))]
    pairs = [{"prompt": [], "chosen": [], "rejected": [], "feedback_ids": ["f1"]}]
    groups = expert_groups(sft, pairs)
    assert list(groups) == [("f0",), ("f1",)]
    assert groups[("f0",)] == {"sft": [sft[0]], "pairs": []} and groups[("f1",)]["pairs"] == pairs


def _logged_corrections(db, path) -> list[str]:
    """Give the experts of the version at `path` real corrections in `db` (the chat checks that
    the user has not taken them back); returns their conversation ids."""
    meta = json.loads((path / "meta.json").read_text())
    convs = []
    for e in meta["experts"]:
        conv, turn_id = turn(db, e["prompt"], "I do not know.")
        e["feedback_ids"] = [feedback.add_feedback(db, turn_id, "correction", correction="A correction.")]
        convs.append(conv)
    (path / "meta.json").write_text(json.dumps(meta))
    return convs


def test_the_nearest_trained_prompt_picks_the_expert(tiny_model_path, tmp_path):
    path = _version_with_experts(tiny_model_path, tmp_path / "v1")
    scope = AdapterScope(Embedder())
    dog = ((1, "expert:v1-0"), str(path / EXPERTS_DIR / "v1-0"))
    assert scope.route(1, path, "what's my dog called, again?") == dog
    assert scope.route(1, path, WORK) == ((1, "expert:v1-1"), str(path / EXPERTS_DIR / "v1-1"))
    assert scope.route(1, path, LIKED) == (1, path)  # a liked answer: the shared adapter
    assert scope.route(1, path, "How many legs does a spider have?") == (None, None)


def test_an_expert_with_missing_weights_is_not_routed_to(tiny_model_path, tmp_path):
    path = _version_with_experts(tiny_model_path, tmp_path / "v1")
    (path / EXPERTS_DIR / "v1-1" / "adapter_model.safetensors").unlink()
    assert [e["name"] for e in read_experts(path)] == ["v1-0"]
    assert AdapterScope(Embedder()).route(1, path, WORK) == (1, path)


def test_the_chat_answers_with_the_expert_and_falls_back_to_the_version_when_it_cannot_load(
        cfg, db, served, tiny_model_path, tmp_path, monkeypatch):
    path = _version_with_experts(tiny_model_path, tmp_path / "v1", broken="garbage")
    _logged_corrections(db, path)
    register(db, 1, path)
    adapters.activate(db, 1)
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    turn = chat.start_turn(DOG, recall=False)
    reply = "".join(chat.pieces(turn, source="test", max_new_tokens=6))
    assert served.current == (1, "expert:v1-0")
    saved = conversations.get_turn(db, turn.turn_id)
    dog_id = json.loads((path / "meta.json").read_text())["experts"][0]["feedback_ids"]
    # which correction answered is kept with the turn: the page lists it, a correction of it offers to replace it
    assert (saved["adapter_version"], saved["answered_by"], json.loads(saved["answered_from_json"])) == (1, "expert", dog_id)
    from assistant.ui_chat import ChatHandlers

    note = ChatHandlers._answered(turn, 6, feedback.corrections(db, turn.answered_from))["content"]
    assert f"Learned from:\n- “{DOG}” → “A correction.”" in note
    expert = served.generate(turn.messages, max_new_tokens=6, version=(1, "expert:v1-0"),
                             adapter_path=path / EXPERTS_DIR / "v1-0")
    assert reply == expert.text
    load = served.load_adapter
    tried = []
    monkeypatch.setattr(served, "load_adapter", lambda key, p: (tried.append(key), load(key, p)))
    for _ in range(2):  # its expert's weights are garbage: read once, then the version answers
        assert chat.route(1, str(path), WORK) == (1, str(path))
    assert tried == [(1, "expert:broken")]
    logits = {k: served.logits(turn.messages, version=k, adapter_path=p)
              for k, p in (((1, "expert:v1-0"), path / EXPERTS_DIR / "v1-0"), (1, path))}
    assert not torch.equal(*logits.values())

    used = []
    scorer = Scorer(served, max_new_tokens=6, scope=AdapterScope(Embedder()))
    use = served.use
    monkeypatch.setattr(served, "use", lambda key, p=None: (used.append(key), use(key, p)))
    scorer.select(1, path)
    scorer.generate([turn.messages, chat.start_turn(LIKED, recall=False).messages])
    assert set(used) == {1, (1, "expert:v1-0")}


def _one_each(job: TrainJob) -> TrainJob:
    """The job with one expert adapter per correction (LearnConfig.expert_group 1)."""
    return dataclasses.replace(job, lcfg=dataclasses.replace(job.lcfg, expert_group=1))


def test_experts_adapt_the_modules_expert_targets_names_and_serve_beside_the_shared_adapter(tiny_model_path, tmp_path):
    mlp = ("gate_proj", "up_proj", "down_proj")
    v1 = train_candidate(_job(tiny_model_path, tmp_path / "adapters", lcfg_overrides={"expert_targets": mlp}))
    expert = read_experts(v1)[0]["adapter"]
    adapted = {name: {k.split(".lora_")[0].rsplit(".", 1)[1] for k in _weights(path) if ".lora_" in k}
               for name, path in (("expert", v1 / EXPERTS_DIR / expert), ("shared", v1))}
    assert adapted == {"expert": set(mlp), "shared": {"q_proj", "k_proj", "v_proj", "o_proj", *mlp}}
    served = ServedModel(str(tiny_model_path))
    messages = [{"role": "user", "content": DOG}]
    replies = {key: served.logits(messages, version=key, adapter_path=path)
               for key, path in (((1, f"expert:{expert}"), v1 / EXPERTS_DIR / expert), (1, v1), (None, None))}
    assert not torch.equal(replies[(1, f"expert:{expert}")], replies[None])  # the expert changes the answer
    assert torch.equal(served.logits(messages, version=None), replies[None])  # and leaves the base as it was


def test_experts_are_trained_once_kept_by_links_and_replaced_by_a_newer_correction(tiny_model_path, tmp_path):
    v1 = train_candidate(_one_each(_job(tiny_model_path, tmp_path / "adapters")))
    first = read_experts(v1)
    assert [(e["prompt"], e["trained_in"]) for e in first] == [(DOG, 1), (WORK, 1)]
    assert DOG in first[0]["prompts"] and len(first[0]["prompts"]) > 1  # its rewrites too
    w = [_weights(v1 / EXPERTS_DIR / e["name"]) for e in first]
    assert any(not torch.equal(w[0][k], w[1][k]) for k in w[0])
    rank = {name: {v.shape[0] for k, v in weights.items() if "lora_A" in k}
            for name, weights in (("expert", w[0]), ("shared", _weights(v1)))}
    assert rank == {"expert": {16}, "shared": {4}}  # its own LoRA of rank expert_r

    job = _one_each(_job(tiny_model_path, tmp_path / "adapters", version=2, parent_version=1, parent_path=str(v1)))
    job.sft_rows[1] = {**job.sft_rows[1], "feedback_ids": ["f2"],
                       "messages": job.sft_rows[1]["messages"][:2] + [{"role": "assistant", "content": "At Acme."}]}
    job.pairs[1] = {**job.pairs[1], "feedback_ids": ["f2"]}
    job.feedback_ids = ["f2"]  # what is new in this cycle, as the learner passes it
    v2 = train_candidate(job)
    second = read_experts(v2)
    assert [(e["prompt"], e["feedback_ids"], e["trained_in"]) for e in second] == [
        (DOG, ["f0"], 1), (WORK, ["f2"], 2)]
    kept = [v / EXPERTS_DIR / first[0]["name"] / "adapter_model.safetensors" for v in (v1, v2)]
    assert kept[0].stat().st_ino == kept[1].stat().st_ino  # linked, not trained again
    assert not (v2 / EXPERTS_DIR / first[1]["name"]).exists()
    stats = json.loads((v2 / "meta.json").read_text())["stats"]["experts"]
    assert {k: stats[k] for k in ("kept", "trained", "waiting")} == {"kept": 1, "trained": 1, "waiting": 0}


def test_a_cycle_trains_at_most_experts_per_cycle_the_oldest_first(tiny_model_path, tmp_path):
    import dataclasses

    job = _job(tiny_model_path, tmp_path / "adapters")
    job.lcfg = dataclasses.replace(job.lcfg, experts_per_cycle=1)
    v1 = train_candidate(job)
    assert [e["feedback_ids"] for e in read_experts(v1)] == [["f0"]]
    v2 = train_candidate(dataclasses.replace(job, version=2, parent_version=1, parent_path=str(v1), feedback_ids=[]))
    assert [(e["feedback_ids"], e["trained_in"]) for e in read_experts(v2)] == [(["f0"], 1), (["f1"], 2)]
    assert json.loads((v2 / "meta.json").read_text())["stats"]["experts"]["waiting"] == 0


def test_a_slow_machine_plans_fewer_experts_and_the_pace_carries_over(tiny_model_path, tmp_path):
    """`experts_budget_s`: the seconds an expert took in the lineage's last cycle that trained any
    bound how many new experts a cycle plans; the rest wait (the shared adapter learns them)."""
    import dataclasses

    import pytest

    from learning.config import LearnConfig
    from learning.experts import expert_pace, plan_experts

    job = _job(tiny_model_path, tmp_path / "adapters")
    v1 = train_candidate(job)  # no pace known yet: both corrections get their expert
    pace = json.loads((v1 / "meta.json").read_text())["stats"]["experts"]["seconds_each"]
    assert len(read_experts(v1)) == 2 and pace > 0 and expert_pace(v1) == pace

    slow = tmp_path / "slow"  # a parent whose experts took 40 s each, none of them for these corrections
    slow.mkdir()
    (slow / "meta.json").write_text(json.dumps({"experts": [], "stats": {"experts": {"seconds_each": 40.0}}}))

    def planned(budget):
        lcfg = dataclasses.replace(job.lcfg, experts_budget_s=budget)
        plan = plan_experts(dataclasses.replace(job, version=2, parent_version=1, parent_path=str(slow), lcfg=lcfg))
        return list(plan.new), plan.waiting

    assert planned(60) == ([("f0",)], 1)  # one fits in 60 s: the oldest, the other waits
    assert planned(80) == planned(None) == ([("f0",), ("f1",)], 0)
    assert planned(10) == ([("f0",)], 1)  # at least one per cycle, however slow

    # a version that trains no new expert carries its parent's pace over
    v2 = train_candidate(dataclasses.replace(job, version=2, parent_version=1, parent_path=str(v1), feedback_ids=[]))
    stats = json.loads((v2 / "meta.json").read_text())["stats"]["experts"]
    assert stats["trained"] == 0 and stats["seconds_each"] == pace

    (slow / "meta.json").write_text("{not json")
    assert expert_pace(slow) is None and expert_pace(None) is None
    with pytest.raises(ValueError, match="experts_budget_s must be positive"):
        LearnConfig(experts_budget_s=0)


def test_the_shared_adapter_trains_only_on_what_no_expert_answers(tiny_model_path, tmp_path):
    import dataclasses

    from tests.test_train import LIKED_ROW

    job = _job(tiny_model_path, tmp_path / "adapters")
    job.lcfg = dataclasses.replace(job.lcfg, experts_per_cycle=1, augment_rewrites=2)
    meta = json.loads((train_candidate(job) / "meta.json").read_text())
    # f0 has its expert; f1's waits, so the shared adapter learns it (rows and pair) and the liked answer
    assert meta["stats"]["sft_rows"]["to_experts"] == 3 and meta["stats"]["sft"]["rows"] == 4
    assert meta["stats"]["dpo"]["pairs"] == 1
    assert {DOG, WORK, LIKED_ROW["messages"][1]["content"]} <= set(meta["scope"]["prompts"])

    job = dataclasses.replace(job, version=2, lcfg=dataclasses.replace(job.lcfg, experts_per_cycle=12),
                              sft_rows=job.sft_rows[:2])  # corrections only: each gets its expert
    out = train_candidate(job)
    meta = json.loads((out / "meta.json").read_text())
    assert "sft" not in meta["stats"] and "dpo" not in meta["stats"]  # nothing left for the shared adapter
    assert {x["stage"] for x in meta["losses"]} == {"expert", "expert DPO"}
    assert not any(v.abs().sum() > 0 for k, v in _weights(out).items() if "lora_B" in k)  # the base's answers
    assert [e["prompt"] for e in read_experts(out)] == [DOG, WORK]
    assert {DOG, WORK} <= set(meta["scope"]["prompts"])  # the scope routes them to their experts


def test_no_experts_when_they_are_off_or_the_version_is_unscoped(tiny_model_path, tmp_path):
    import dataclasses

    for i, change in enumerate(({"experts": False}, {"scope_threshold": None})):
        job: TrainJob = _job(tiny_model_path, tmp_path / "adapters", version=i + 1)
        job.lcfg = dataclasses.replace(job.lcfg, **change)
        out = train_candidate(job)
        assert json.loads((out / "meta.json").read_text())["experts"] is None
        assert not (out / EXPERTS_DIR).exists()


def test_a_habit_adapter_that_cannot_load_leaves_the_prompt_to_the_base_weights(cfg, db, served, tiny_model_path,
                                                                                  tmp_path):
    path = _version_with_experts(tiny_model_path, tmp_path / "v1")
    corrupt_adapter(path / EXPERTS_DIR / "v1-0", path / "habit", "garbage")
    (path / "habit" / "habit.json").write_text(json.dumps({"openings": ["Captain,"], "lead_tokens": 2}))
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    assert chat.route(1, str(path), "How many legs does a spider have?") == (None, None)  # not the version


def test_a_paraphrase_near_what_an_expert_answered_is_routed_to_it(tiny_model_path, tmp_path):
    from assistant.matching import ROUTING_POLICY

    path = _version_with_experts(tiny_model_path, tmp_path / "v1")
    meta = json.loads((path / "meta.json").read_text())
    meta["experts"][1]["answer"] = "You work at Halvorsen Robotics in Trondheim."
    (path / "meta.json").write_text(json.dumps(meta))
    question = "Is Halvorsen Robotics in Trondheim my employer?"  # no word of the prompt "Where do I work?"
    work = ((1, "expert:v1-1"), str(path / EXPERTS_DIR / "v1-1"))
    assert AdapterScope(Embedder()).route(1, path, question) == work
    prompts_alone = dataclasses.replace(ROUTING_POLICY, answer_key=False)
    assert AdapterScope(Embedder(), policy=prompts_alone).route(1, path, question) == (None, None)  # the prompts alone: outside


def test_the_expert_of_a_correction_taken_back_is_not_kept(tiny_model_path, tmp_path):
    job = _one_each(_job(tiny_model_path, tmp_path / "adapters"))
    v1 = train_candidate(job)
    assert [e["feedback_ids"] for e in read_experts(v1)] == [["f0"], ["f1"]]
    # the conversation of f1 was deleted: the learner's data no longer holds it
    sft = [r for r in job.sft_rows if "f1" not in (r.get("feedback_ids") or ())]
    pairs = [p for p in job.pairs if "f1" not in p["feedback_ids"]]
    without = dataclasses.replace(job, version=2, parent_version=1, parent_path=str(v1), sft_rows=sft, pairs=pairs,
                                  corrections=(sft, pairs), feedback_ids=[])
    v2 = train_candidate(without)
    assert [(e["feedback_ids"], e["trained_in"]) for e in read_experts(v2)] == [(["f0"], 1)]
    assert sorted(p.name for p in (v2 / EXPERTS_DIR).iterdir()) == [read_experts(v1)[0]["name"]]
    stats = json.loads((v2 / "meta.json").read_text())["stats"]["experts"]
    assert {k: stats[k] for k in ("kept", "trained", "forgotten")} == {"kept": 1, "trained": 0, "forgotten": 1}
    # its prompts leave the scope too: the base weights answer them, not the shared adapter
    taken_back = set(read_experts(v1)[1]["prompts"])
    assert "Where do I work?" in taken_back <= set(read_scope(v1)["prompts"])
    assert not taken_back & set(read_scope(v2)["prompts"])
    assert set(read_experts(v1)[0]["prompts"]) <= set(read_scope(v2)["prompts"])


def test_a_taken_back_experts_prompts_and_names_leave_the_scope_a_superseded_ones_stay(tmp_path):
    """A taken-back correction's expert takes its prompts and the names it told out of the next
    version's scope; a superseded one's stay while the newer correction waits for its expert."""
    from learning.train import adapter_scope

    parent = tmp_path / "v1"
    answers = {DOG: "Your dog is called Biscuit.", WORK: "You work at Halvorsen Robotics with Biscuit."}
    experts = [{"name": f"v1-{i}", "feedback_ids": [f"f{i}"], "prompt": q, "answer": answers[q],
                "prompts": [q, q.lower()]} for i, q in enumerate((DOG, WORK))]
    for e in experts:
        (parent / EXPERTS_DIR / e["name"]).mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (parent / EXPERTS_DIR / e["name"] / name).write_text("{}")  # the scope reads no weights
    prompts = [q for e in experts for q in e["prompts"]]
    told = ["biscuit", "halvorsen", "robotics"]
    (parent / "meta.json").write_text(json.dumps({"experts": experts,
                                                  "scope": {"threshold": 0.5, "prompts": prompts, "told": told}}))
    job = _job("base", tmp_path, version=2, parent_version=1, parent_path=str(parent))
    newer = {**job.sft_rows[1], "feedback_ids": ["f2"]}  # WORK corrected again; its expert waits
    job = dataclasses.replace(job, sft_rows=[], pairs=[], corrections=([job.sft_rows[0], newer], []))
    scope = adapter_scope(job, [], experts[:1])
    assert (scope["prompts"], scope["told"]) == (prompts, told)  # superseded, not taken back
    job = dataclasses.replace(job, corrections=([job.corrections[0][0]], []))  # WORK taken back
    scope = adapter_scope(job, [], experts[:1])
    assert (scope["prompts"], scope["told"]) == (experts[0]["prompts"], ["biscuit"])  # the dog's expert told it too


def test_an_expert_whose_correction_was_taken_back_no_longer_answers(cfg, db, served, tiny_model_path, tmp_path):
    path = _version_with_experts(tiny_model_path, tmp_path / "v1")
    dog_conv, work_conv = _logged_corrections(db, path)
    register(db, 1, path)
    adapters.activate(db, 1)
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    dog = ((1, "expert:v1-0"), str(path / EXPERTS_DIR / "v1-0"))
    work = ((1, "expert:v1-1"), str(path / EXPERTS_DIR / "v1-1"))
    assert chat.route(1, str(path), DOG) == dog and chat.route(1, str(path), WORK) == work
    conversations.delete_conversation(db, dog_conv)  # at once, before any learning cycle
    assert chat.route(1, str(path), DOG) == (None, None)  # the base weights, not the shared adapter
    conversations.update_conversation(db, work_conv, no_learn=1)
    assert chat.route(1, str(path), WORK) == (None, None)
    conversations.update_conversation(db, work_conv, no_learn=0)
    assert chat.route(1, str(path), WORK) == work
    feedback.quarantine(db, read_experts(path)[1]["feedback_ids"])
    assert chat.route(1, str(path), WORK) == (None, None)
    assert chat.route(1, str(path), LIKED) == (1, str(path))  # the rest of the version is untouched


def test_a_take_back_stops_its_own_correction_not_its_group_mates_nor_the_shared_adapters_others(
        cfg, db, served, tiny_model_path, tmp_path):
    """Two corrections share one group adapter, and the shared adapter learned a liked answer:
    taking back one correction sends its questions to the base weights at once; its group-mate
    keeps the group's weights until the next version retrains it (season run 2's cycle 5 lost
    8 corrections when a take-back stopped whole groups), and a take-back of what the shared
    adapter learned (meta.json scope "sources") stops it too, not only with the next version."""
    path = _version_with_experts(tiny_model_path, tmp_path / "v1")
    dog_conv, work_conv = _logged_corrections(db, path)
    meta = json.loads((path / "meta.json").read_text())
    for e in meta["experts"]:
        e["adapter"] = "v1-0"  # one group
    liked_conv, liked_turn = turn(db, LIKED, "Boil it for eight minutes.")
    meta["scope"]["sources"] = {LIKED: [feedback.add_feedback(db, liked_turn, "up")]}
    (path / "meta.json").write_text(json.dumps(meta))
    register(db, 1, path)
    adapters.activate(db, 1)
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    group = ((1, "expert:v1-0"), str(path / EXPERTS_DIR / "v1-0"))
    assert chat.route(1, str(path), DOG) == group == chat.route(1, str(path), WORK)
    assert chat.route(1, str(path), LIKED) == (1, str(path))
    conversations.delete_conversation(db, dog_conv)
    assert chat.route(1, str(path), DOG) == (None, None)
    assert chat.route(1, str(path), WORK) == group
    conversations.update_conversation(db, liked_conv, no_learn=1)
    assert chat.route(1, str(path), LIKED) == (None, None)


def test_a_waiting_correction_gets_its_expert_even_when_the_job_does_not_replay_it(tiny_model_path, tmp_path):
    import dataclasses

    job = _job(tiny_model_path, tmp_path / "adapters")
    job.lcfg = dataclasses.replace(job.lcfg, experts_per_cycle=1)
    v1 = train_candidate(job)
    assert [e["feedback_ids"] for e in read_experts(v1)] == [["f0"]]  # f1 waits
    new = {**job.sft_rows[0], "feedback_ids": ["f2"],
           "messages": job.sft_rows[0]["messages"][:1] + [{"role": "user", "content": "Which gym do I go to?"},
                                                         {"role": "assistant", "content": "Ironbark Gym."}]}
    # past a refit the job holds the new correction and a replay sample that here misses f1
    later = dataclasses.replace(job, version=2, parent_version=1, parent_path=str(v1), sft_rows=[new], pairs=[],
                                corrections=([*job.sft_rows, new], job.pairs), feedback_ids=["f2"],
                                lcfg=dataclasses.replace(job.lcfg, experts_per_cycle=2))
    v2 = train_candidate(later)
    assert [(e["feedback_ids"], e["trained_in"]) for e in read_experts(v2)] == [(["f0"], 1), (["f1"], 2), (["f2"], 2)]


def test_a_correction_the_gate_found_unlearned_gets_a_new_expert(tiny_model_path, tmp_path):
    """Partial promotion (learning/gate.py): a correction the version did not learn is new again
    in the next cycle, and its inherited expert is trained anew, not kept."""
    v1 = train_candidate(_job(tiny_model_path, tmp_path / "adapters"))
    job = _job(tiny_model_path, tmp_path / "adapters", version=2, parent_version=1, parent_path=str(v1))
    job.feedback_ids = ["f0"]
    trained_in = {e["prompt"]: e["trained_in"] for e in read_experts(train_candidate(job))}
    assert trained_in == {DOG: 2, WORK: 1}


def test_at_most_max_side_adapters_experts_stay_loaded_the_least_recently_used_go(tiny_model_path, tmp_path):
    """A home with hundreds of corrections must not hold every expert it was asked about."""
    served = ServedModel(str(tiny_model_path), max_side_adapters=2)  # Config.max_side_adapters
    version = tmp_path / "v1"
    make_adapter(tiny_model_path, version, seed=1)
    keys = {}
    for i in range(4):
        keys[i] = (1, f"expert:v1-{i}")
        make_adapter(tiny_model_path, version / EXPERTS_DIR / f"v1-{i}", seed=10 + i)
    served.use(1, version)
    for i in (0, 1, 2, 0, 3):
        served.use(keys[i], version / EXPERTS_DIR / f"v1-{i}")
    # the current key (expert 3) and the 2 side adapters used last (0, asked again, and 2) stay
    assert set(served.loaded) == {1, keys[0], keys[2], keys[3]}
    assert len(served.model.peft_config) == 4
    first = served.logits([{"role": "user", "content": DOG}], version=keys[1],
                          adapter_path=version / EXPERTS_DIR / "v1-1")  # reloaded when asked again
    served.use(keys[3])
    again = served.logits([{"role": "user", "content": DOG}], version=keys[1],
                          adapter_path=version / EXPERTS_DIR / "v1-1")
    assert torch.equal(first, again) and set(served.loaded) == {1, keys[0], keys[1], keys[3]}
    # past the cap, a newly asked expert took over the least recently used one's LoRA layers
    # (assistant/adapter_slots.py) rather than building its own, and answers exactly as if loaded alone
    assert len(served.model.peft_config) == 4
    alone = ServedModel(str(tiny_model_path))
    alone.use(1, version)
    assert torch.equal(first, alone.logits([{"role": "user", "content": DOG}], version=keys[1],
                                           adapter_path=version / EXPERTS_DIR / "v1-1"))


def test_base_weights_bypass_every_loaded_adapter_and_restore_them(tiny_model_path, tmp_path):
    """ServedModel.base_weights (the reranker's and the base-answered turns' switch) gives the base
    model's outputs with a version and its experts loaded, and the expert answers again after it."""
    served = ServedModel(str(tiny_model_path))
    version = tmp_path / "v1"
    make_adapter(tiny_model_path, version, seed=1)
    for i in range(2):
        make_adapter(tiny_model_path, version / EXPERTS_DIR / f"v1-{i}", seed=10 + i)
        served.use((1, f"expert:v1-{i}"), version / EXPERTS_DIR / f"v1-{i}")
    ids = served.encode([{"role": "user", "content": DOG}])
    with torch.inference_mode():
        routed = served.model(input_ids=ids).logits
        with served.lock, served.base_weights():
            bypassed = served.model(input_ids=ids).logits
        after = served.model(input_ids=ids).logits
    base = ServedModel(str(tiny_model_path)).logits([{"role": "user", "content": DOG}])
    assert torch.allclose(bypassed[0, -1], base, atol=1e-5) and not torch.allclose(routed[0, -1], base, atol=1e-3)
    assert torch.equal(after, routed)


def test_a_group_of_corrections_shares_one_adapter_and_is_retrained_when_one_is_taken_back(tiny_model_path,
                                                                                            tmp_path):
    """LearnConfig.expert_group: the cycle's corrections train one adapter together; each keeps its
    own entry and routing prompts; the shared adapter nothing retrained is linked, not copied."""
    job = _job(tiny_model_path, tmp_path / "adapters")
    job.lcfg = dataclasses.replace(job.lcfg, expert_group=2)
    v1 = train_candidate(job)
    first = read_experts(v1)
    assert [(e["name"], e["adapter"], e["feedback_ids"]) for e in first] == [
        ("v1-0.0", "v1-0", ["f0"]), ("v1-0.1", "v1-0", ["f1"])]
    assert sorted(p.name for p in (v1 / EXPERTS_DIR).iterdir() if p.is_dir()) == ["v1-0"]
    scope = AdapterScope(embedder=Embedder())
    assert scope.route(1, str(v1), DOG)[1] == str(v1 / EXPERTS_DIR / "v1-0")
    assert read_scope(v1)["sources"][DOG] == ["f0"] and read_scope(v1)["sources"][WORK] == ["f1"]
    # f1's conversation was deleted: the group's adapter still holds it, so f0 is trained anew alone
    sft = [r for r in job.sft_rows if "f1" not in (r.get("feedback_ids") or ())]
    pairs = [p for p in job.pairs if "f1" not in p["feedback_ids"]]
    v2 = train_candidate(dataclasses.replace(job, version=2, parent_version=1, parent_path=str(v1), sft_rows=sft,
                                             pairs=pairs, corrections=(sft, pairs), feedback_ids=[]))
    assert [(e["feedback_ids"], e["adapter"], e["trained_in"]) for e in read_experts(v2)] == [(["f0"], "v2-0", 2)]
    assert sorted(p.name for p in (v2 / EXPERTS_DIR).iterdir() if p.is_dir()) == ["v2-0"]
    stats = json.loads((v2 / "meta.json").read_text())["stats"]["experts"]
    assert {k: stats[k] for k in ("kept", "trained", "forgotten")} == {"kept": 0, "trained": 1, "forgotten": 1}


def test_a_version_that_trains_no_shared_rows_links_its_parents_shared_adapter(tiny_model_path, tmp_path):
    job = _job(tiny_model_path, tmp_path / "adapters")
    v1 = train_candidate(job)
    corrections = [r for r in job.sft_rows if r.get("source") == "correction"]  # nothing liked this cycle
    v2 = train_candidate(dataclasses.replace(job, version=2, parent_version=1, parent_path=str(v1),
                                             sft_rows=corrections, feedback_ids=[]))
    assert "sft_s" not in json.loads((v2 / "meta.json").read_text())["timings"]  # every correction has its expert
    files = [v / "adapter_model.safetensors" for v in (v1, v2)]
    assert files[0].stat().st_ino == files[1].stat().st_ino
    assert json.loads((v1 / "meta.json").read_text())["version"] == 1  # the parent's manifest untouched


def test_a_superseded_correction_leaves_its_group_without_retraining_the_others(tiny_model_path, tmp_path):
    """A correction a newer one replaced only stops being routed to its group's adapter: the rest
    of the group keeps the adapter (linked), where a take-back retrains them."""
    job = _job(tiny_model_path, tmp_path / "adapters")
    job.lcfg = dataclasses.replace(job.lcfg, expert_group=2)
    v1 = train_candidate(job)
    sft = [r for r in job.sft_rows if "f1" not in (r.get("feedback_ids") or ())]
    pairs = [p for p in job.pairs if "f1" not in p["feedback_ids"]]
    v2 = train_candidate(dataclasses.replace(job, version=2, parent_version=1, parent_path=str(v1), sft_rows=sft,
                                             pairs=pairs, corrections=(sft, pairs), superseded=["f1"],
                                             feedback_ids=[]))
    assert [(e["name"], e["adapter"], e["trained_in"]) for e in read_experts(v2)] == [("v1-0.0", "v1-0", 1)]
    kept = [v / EXPERTS_DIR / "v1-0" / "adapter_model.safetensors" for v in (v1, v2)]
    assert kept[0].stat().st_ino == kept[1].stat().st_ino
    stats = json.loads((v2 / "meta.json").read_text())["stats"]["experts"]
    assert {k: stats[k] for k in ("kept", "trained", "forgotten")} == {"kept": 1, "trained": 0, "forgotten": 0}


def test_a_cycles_experts_gather_unlike_questions_in_one_adapter():
    """expert_batches: two alike questions trained in one adapter blend their answers, so each
    correction joins the batch least like it; the batches stay as even as they can be."""
    import numpy as np

    from learning.experts import expert_batches

    questions = ["Which car do I own?", "What car do I drive now?", "Who coaches me for running?",
                 "Who is my running coach now?", "Where is the office?"]
    axis = {"car": 0, "coach": 1, "running": 1, "office": 2}

    class Topics:
        def encode(self, texts):
            out = np.full((len(texts), 3), 0.05, dtype=np.float32)
            for i, t in enumerate(texts):
                for word, k in axis.items():
                    if word in t:
                        out[i, k] = 1.0
            return out

    groups = [{"sft": [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "A."}]}],
               "pairs": []} for q in questions]
    asked = lambda batch: [g["sft"][0]["messages"][0]["content"] for g in batch]  # noqa: E731
    diverse = [asked(b) for b in expert_batches(groups, 3, Topics())]
    assert [len(b) for b in diverse] == [3, 2]
    assert all(sum("car" in q for q in b) == 1 and sum("coach" in q for q in b) == 1 for b in diverse)
    assert [asked(b) for b in expert_batches(groups, 3)] == [questions[:3], questions[3:]]  # no embedder: in order
    assert expert_batches([], 4, Topics()) == []


def test_the_adapter_watcher_preloads_a_promoted_versions_experts_into_free_room_only(
        cfg, db, tiny_model_path, tmp_path, monkeypatch):
    """After a promotion the first prompt routed to an expert finds it loaded; a broken expert is
    remembered as broken (the version answers its prompts); preloads never pass max_side_adapters."""
    import time

    path = _version_with_experts(tiny_model_path, tmp_path / "v1", broken="garbage")
    _logged_corrections(db, path)
    register(db, 1, path)
    served = ServedModel(str(tiny_model_path), max_side_adapters=2)
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    stop = chat.watch_adapters(interval_s=0.02)
    try:
        adapters.activate(db, 1)
        deadline = time.monotonic() + 30
        while not ((1, "expert:broken") in chat._bad_versions and (1, "expert:v1-0") in served.loaded) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop()
    assert (1, "expert:v1-0") in served.loaded and served.current is None  # loaded, nothing switched
    loads = []
    load = served.load_adapter
    monkeypatch.setattr(served, "load_adapter", lambda key, p: (loads.append(key), load(key, p)))
    assert chat.route(1, str(path), DOG)[0] == (1, "expert:v1-0") and loads == []
    assert chat.route(1, str(path), WORK) == (1, str(path)) and loads == []  # the broken one: tried once
    # free room only: with the cap reached, a preload loads nothing and unloads nothing
    extra = make_adapter(tiny_model_path, tmp_path / "extra", seed=30)
    served.use((1, "expert:v1-0"))
    assert served.preload((1, "expert:x"), extra) is True
    assert served.preload((1, "expert:y"), extra) is False
    assert {(1, "expert:v1-0"), (1, "expert:x")} <= set(served.loaded) and (1, "expert:y") not in served.loaded


def test_a_preload_that_fails_unexpectedly_ends_quietly_and_a_broken_expert_does_not_stop_the_rest(
        cfg, db, tiny_model_path, tmp_path, monkeypatch, caplog):
    """Preloading only saves time: an unexpected error ends it with a warning (the watcher would
    otherwise retry it every poll), and an expert already known broken is skipped, not the end."""
    path = _version_with_experts(tiny_model_path, tmp_path / "v1", broken="garbage")
    _logged_corrections(db, path)
    register(db, 1, path)
    adapters.activate(db, 1)
    served = ServedModel(str(tiny_model_path))
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    chat._bad_versions[(1, "expert:broken")] = "known broken"  # asked first (newest first), then v1-0
    chat._preload_experts(1, str(path))
    assert (1, "expert:v1-0") in served.loaded
    monkeypatch.setattr(served, "preload", lambda *a: (_ for _ in ()).throw(RuntimeError("disk went away")))
    chat._preload_experts(1, str(path))  # does not raise
    assert "preloading v1's experts stopped: disk went away" in caplog.text


def test_preloading_waits_for_a_quiet_moment_between_chat_turns(cfg, db, tiny_model_path, tmp_path):
    """A turn takes the model several times (routing, an expert's load, generation): a preload
    between two of them made it wait for each. Preloads start only when no turn is open and none
    began or ended within PRELOAD_QUIET_S; the watcher's stop ends the wait."""
    import threading
    import time

    from assistant.chat_routing import PRELOAD_QUIET_S, TurnActivity

    activity = TurnActivity()
    assert activity.wait_quiet(PRELOAD_QUIET_S)  # nothing ever happened: at once
    stop = threading.Event()
    with activity.turn():
        threading.Timer(0.3, stop.set).start()
        t0 = time.monotonic()
        assert activity.wait_quiet(0.01, stop) is False  # a turn open all along: stopped, not quiet
        assert time.monotonic() - t0 >= 0.25
    t0 = time.monotonic()
    assert activity.wait_quiet(0.3)  # the turn just ended: quiet 0.3 s later
    assert time.monotonic() - t0 >= 0.25

    path = _version_with_experts(tiny_model_path, tmp_path / "v1")
    _logged_corrections(db, path)
    register(db, 1, path)
    adapters.activate(db, 1)
    served = ServedModel(str(tiny_model_path))
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    with chat.activity.turn():  # a turn in flight: the preloader waits and loads nothing meanwhile
        preloader = threading.Thread(target=chat._preload_experts, args=(1, str(path)))
        preloader.start()
        time.sleep(0.4)
        assert (1, "expert:v1-0") not in served.loaded
    preloader.join(timeout=30)
    assert (1, "expert:v1-0") in served.loaded  # loaded once the chat was quiet
