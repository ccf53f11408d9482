"""A learning cycle on the tiny model: registry, job row, gate wiring, lock, crash recovery,
the background process, cancellation and the auto-trigger rule."""
import dataclasses
import functools
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from assistant.config import Config
from assistant.questions import replay_prompts
from learning import control, learner, progress
from learning.config import SETTINGS_KEY, SHAPE_FIELDS, LearnConfig
from learning.train import IncompatibleParent
from store import adapters, feedback, jobs
from store.settings import set_setting
from tests.test_datasets import stand_in_embedder, turn

TINY = dict(lora_r=4, lora_alpha=8, sft_epochs=1, dpo_epochs=1, sft_batch_size=4, dpo_batch_size=2,
            sft_max_length=64, dpo_max_length=64, self_replay=2, dedup_threshold=1.0, heldout_fraction=0.0)


def teach(db, n=2, start=0):
    ids = []
    for i in range(start, start + n):
        _, t = turn(db, f"What is fact {i}?", "I do not know.")
        ids.append(feedback.add_feedback(db, t, "correction", correction=f"Fact {i} is Biscuit {i}."))
    return ids


def cycle(cfg, **kw):
    return learner.run_cycle(cfg, LearnConfig(**TINY), embedder=stand_in_embedder, **kw)


@pytest.fixture
def no_gate(monkeypatch):
    monkeypatch.setattr(learner, "_gate", lambda: None)


def fake_gate(passed):
    def evaluate(cfg, db, cand, inc, taught, progress=None, model=None, scope=None):
        assert scope is not None  # the gate routes what the chat would really answer (build_served)
        progress(1.0)
        return {"candidate": {"taught": len(taught)}, "incumbent": {"taught": 0}, "items": []}

    def decide(c, i, config):
        return SimpleNamespace(passed=passed, reasons=[f"learned {c['taught']} corrections"])

    return lambda: (evaluate, decide, lambda db: None)


def test_cycle_without_gate_leaves_a_candidate(cfg, db, no_gate):
    fids = teach(db)
    _, liked = turn(db, "How do I boil an egg?", "Simmer it for eight minutes.")
    fids.append(feedback.add_feedback(db, liked, "up"))  # the shared adapter's to learn (the experts' the rest)
    states = []
    result = cycle(cfg, progress=states.append)
    assert result["status"] == "candidate" and "gate is not available" in result["message"]
    row = adapters.get_adapter(db, result["version"])
    assert row["status"] == "candidate" and adapters.active_version(db) is None
    assert adapters.lineage_feedback(db, row["version"]) == sorted(fids)
    assert row["meta"]["feedback_ids"] == sorted(fids) and (cfg.adapters_dir / "v1" / "meta.json").exists()
    assert set(row["meta"]["trained_on"]) == set(fids)  # learning/held.py reads it
    job = jobs.get_job(db, result["job_id"])
    assert job["status"] == "succeeded" and job["losses"] and job["ended_at"]
    assert {s["stage"] for s in states} >= {"preparing data", "SFT", "experts"}
    assert [s["progress"] for s in states] == sorted(s["progress"] for s in states)


def test_skipped_stages_give_their_share_of_the_bar_to_the_later_ones(db):
    states = []
    track = progress.Tracker(db, jobs.start_job(db), states.append)
    track.stage("preparing data", 1.0)
    track.train_step("SFT", 0, 0, None)  # every correction has its expert: no shared SFT, no DPO
    track.train_step("DPO", 0, 0, None)
    track.stage("habit", 0.0)
    habit, experts = track.ranges["habit"], track.ranges["experts"]
    assert habit[0] == states[0]["progress"] == progress.STAGES["preparing data"][1]
    # the later stages keep their proportions and end at 1
    was = {s: progress.STAGES[s][1] - progress.STAGES[s][0] for s in ("habit", "experts")}
    assert (experts[1] - experts[0]) / (habit[1] - habit[0]) == pytest.approx(was["experts"] / was["habit"])
    assert track.ranges["gate"][1] == pytest.approx(1.0)
    for stage, fraction in (("experts", 0.5), ("evaluating", 1.0), ("gate", 1.0)):
        track.stage(stage, fraction)
    assert [s["progress"] for s in states] == sorted(s["progress"] for s in states)
    assert states[-1]["progress"] == pytest.approx(1.0) and {s["stage"] for s in states}.isdisjoint({"SFT", "DPO"})


def test_gate_pass_promotes_and_next_cycle_continues(cfg, db, monkeypatch):
    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    teach(db)
    r1 = cycle(cfg)
    assert r1["status"] == "active" and adapters.active_version(db) == 1
    assert adapters.decisions_for(db, 1)[0]["passed"] == 1
    assert cycle(cfg)["skipped"]  # nothing new since v1
    teach(db, n=1, start=5)
    r2 = cycle(cfg)
    v2 = adapters.get_adapter(db, 2)
    assert r2["parent_version"] == 1 and v2["meta"]["parent_version"] == 1
    assert v2["meta"]["replayed_rows"] >= 1 and len(adapters.lineage_feedback(db, 2)) == 1
    # each version's scope: what it was trained on and everything its parent answered
    v1_scope = adapters.get_adapter(db, 1)["meta"]["scope"]["prompts"]
    assert "What is fact 0?" in v1_scope and "What is fact 5?" not in v1_scope
    assert not set(replay_prompts(TINY["self_replay"])) & set(v1_scope)  # generic prompts stay on the base
    assert set(v1_scope) | {"What is fact 5?"} <= set(v2["meta"]["scope"]["prompts"])
    assert v2["meta"]["scope"]["threshold"] == LearnConfig().scope_threshold
    assert v2["meta"]["scope"]["margin"] == LearnConfig().scope_margin
    assert adapters.get_adapter(db, 1)["status"] == "retired"


def test_a_version_that_learned_part_of_its_corrections_goes_live_and_the_rest_is_taught_again(cfg, db, monkeypatch):
    """Partial promotion (learning/gate.py): the candidate carried one of two new corrections and
    lost nothing, so it goes live; the other is not among what it learned, stays pending, and the
    next cycle teaches it again with an expert of its own."""
    from learning.gate import decide

    first, second = teach(db)

    def evaluate(cfg, db, cand, inc, taught, **kw):
        items = [{"kind": "taught", "id": f, "candidate": {"passed": f == first}} for f in (first, second)]
        return {"candidate": {"taught": {"passed": 1, "total": 2}}, "incumbent": {}, "items": items}

    monkeypatch.setattr(learner, "_gate", lambda: (evaluate, decide, lambda db: None))
    result = cycle(cfg)
    assert result["status"] == "active" and result["not_learned"] == [second]
    assert "v1 went live: learned 1/2 new corrections (1 not yet" in result["message"]
    assert first in adapters.lineage_feedback(db, 1) and second not in adapters.lineage_feedback(db, 1)
    again = cycle(cfg)  # the second is new again
    trained_in = {tuple(e["feedback_ids"]): e["trained_in"] for e in adapters.get_adapter(db, 2)["meta"]["experts"]}
    assert again["status"] == "active" and trained_in == {(first,): 1, (second,): 2}


def test_a_deleted_conversation_takes_its_expert_out_of_the_next_version(cfg, db, monkeypatch):
    from store import conversations
    from store.manifest import read_experts

    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    teach(db, n=2)
    cycle(cfg)
    v1 = read_experts(adapters.get_adapter(db, 1)["path"])
    assert [e["prompt"] for e in v1] == ["What is fact 0?", "What is fact 1?"]
    turn_id = db.execute("SELECT turn_id FROM feedback WHERE id = ?", [v1[0]["feedback_ids"][0]]).fetchone()[0]
    conversations.delete_conversation(db, conversations.get_turn(db, turn_id)["conversation_id"])
    teach(db, n=1, start=5)
    cycle(cfg)
    v2 = adapters.get_adapter(db, 2)
    assert [e["prompt"] for e in read_experts(v2["path"])] == ["What is fact 1?", "What is fact 5?"]
    assert v2["meta"]["stats"]["experts"]["forgotten"] == 1


@pytest.mark.parametrize("refit_corrections", [24, 0])
def test_a_forgotten_correction_starts_a_cycle_that_drops_its_expert_once(cfg, db, monkeypatch, refit_corrections):
    """Forgetting leaves the weights at the next cycle even when nothing new was taught: the
    take-back starts it (the auto-trigger's rule too), and once a cycle has acted on it, it
    starts no other (a continued shared adapter may still hold it)."""
    from store.manifest import read_experts

    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    lcfg = LearnConfig(**TINY, refit_corrections=refit_corrections)
    kept, forgotten = teach(db, n=2)
    learner.run_cycle(cfg, lcfg, embedder=stand_in_embedder)
    eager = LearnConfig(min_gap_s=0, min_new_feedback=1)
    assert control.should_start(db, eager)[0] is False  # nothing new, nothing taken back
    feedback.forget(db, forgotten)
    assert control.should_start(db, eager) == (True, "1 new feedback items (1 taken back) (threshold 1)")
    # a take-back waits for the schedule as new feedback does
    assert control.should_start(db, LearnConfig(min_gap_s=0, min_new_feedback=2))[0] is False

    result = learner.run_cycle(cfg, lcfg, embedder=stand_in_embedder)

    assert result["status"] == "active" and result["taken_back_seen"] == [forgotten]
    v2 = adapters.get_adapter(db, 2)
    assert [e["feedback_ids"] for e in read_experts(v2["path"])] == [[kept]]
    assert v2["meta"]["refit"] is bool(refit_corrections)
    assert control.should_start(db, eager)[0] is False
    assert learner.run_cycle(cfg, lcfg, embedder=stand_in_embedder)["skipped"]


def test_a_take_back_with_no_cycle_on_record_has_waited_since_ever(cfg, db, monkeypatch):
    """A live version whose cycle left no successful job row (promoted by hand, rows pruned): a
    take-back it holds still starts a cycle on the interval rule instead of failing the check."""
    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    _, forgotten = teach(db, n=2)
    cycle(cfg)
    with db.conn:
        db.execute("DELETE FROM jobs")
    feedback.forget(db, forgotten)
    go, why = control.should_start(db, LearnConfig(min_gap_s=0, min_new_feedback=3))
    assert go and why.startswith("2 new feedback items (1 taken back), the oldest waiting")


@pytest.mark.parametrize("refit_corrections", [3, 2])
def test_a_small_history_is_refit_on_everything_from_a_fresh_lora(cfg, db, monkeypatch, refit_corrections):
    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    trained = []
    real = learner.train_candidate
    monkeypatch.setattr(learner, "train_candidate", lambda job: trained.append(job) or real(job))
    lcfg = LearnConfig(**TINY, refit_corrections=refit_corrections)
    teach(db, n=2)
    learner.run_cycle(cfg, lcfg, embedder=stand_in_embedder)
    new = teach(db, n=1, start=5)
    result = learner.run_cycle(cfg, lcfg, embedder=stand_in_embedder)
    job, meta = trained[-1], adapters.get_adapter(db, result["version"])["meta"]
    corrections = [r for r in job.sft_rows if r["source"] == "correction"]
    refit = refit_corrections >= 3  # the history holds 3 corrections now
    assert job.from_parent is not refit and meta["refit"] is refit
    assert len(corrections) == (3 if refit else 1 + 1)  # everything, or the new one and a replay sample
    assert len(job.pairs) == (3 if refit else 1)
    assert adapters.lineage_feedback(db, result["version"]) == new  # it is credited with the new one only
    assert result["parent_version"] == 1 and meta["parent_version"] == 1


def test_a_home_keeps_its_lora_shape_unless_one_is_set(cfg, db, monkeypatch):
    """A later default shape must not turn the active adapter into an incompatible parent; a
    shape the user stored is never overridden (a mismatch then fails the cycle, losing nothing)."""
    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    unshaped = {k: v for k, v in TINY.items() if k not in SHAPE_FIELDS}
    set_setting(db, SETTINGS_KEY, TINY)
    teach(db)
    assert learner.run_cycle(cfg, embedder=stand_in_embedder)["status"] == "active"
    set_setting(db, SETTINGS_KEY, unshaped)  # the default's shape, which v1 does not have
    assert LearnConfig().lora_r != TINY["lora_r"]
    teach(db, n=1, start=5)
    assert learner.run_cycle(cfg, embedder=stand_in_embedder)["status"] == "active"
    assert adapters.get_adapter(db, 2)["meta"]["config"]["lora_r"] == TINY["lora_r"]
    set_setting(db, SETTINGS_KEY, {**unshaped, "lora_r": 8})
    teach(db, n=1, start=6)
    with pytest.raises(IncompatibleParent):
        learner.run_cycle(cfg, embedder=stand_in_embedder)
    assert adapters.active_version(db) == 2 and jobs.latest_job(db)["status"] == "failed"


def test_a_cycle_deletes_the_weights_of_old_versions(cfg, db, monkeypatch):
    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    lcfg = LearnConfig(**TINY, keep_versions=0)  # only the active version and its parent keep theirs
    for n in range(3):
        teach(db, n=1, start=n)
        result = learner.run_cycle(cfg, lcfg, embedder=stand_in_embedder)
    assert result["status"] == "active" and result["weights_deleted"] == [1]
    assert not list((cfg.adapters_dir / "v1").rglob("adapter_model.*"))
    assert (cfg.adapters_dir / "v1" / "meta.json").exists() and list((cfg.adapters_dir / "v2").rglob("adapter_model.*"))
    teach(db, n=1, start=3)
    assert learner.run_cycle(cfg, lcfg, embedder=stand_in_embedder)["weights_deleted"] == [2]


def test_gate_fail_rejects(cfg, db, monkeypatch):
    monkeypatch.setattr(learner, "_gate", fake_gate(False))
    teach(db)
    result = cycle(cfg)
    assert result["status"] == "rejected" and adapters.active_version(db) is None
    assert adapters.get_adapter(db, 1)["status"] == "rejected"
    assert "rejected by the gate" in result["message"]


def test_second_cycle_is_refused_while_one_runs(cfg, db, no_gate):
    teach(db)
    with progress.cycle_lock(cfg.home):
        with pytest.raises(progress.CycleRunning, match="already running"):
            cycle(cfg)
        assert control.lock_held(cfg.home)
        with pytest.raises(control.AlreadyRunning):
            control.start_cycle(cfg)
    assert not control.lock_held(cfg.home)


def test_killed_cycle_leaves_nothing_visible_and_next_starts_cleanly(cfg, db, no_gate):
    teach(db)
    # What a learner killed mid-write leaves: a running job with a dead pid, a temp dir, and a
    # complete-looking version dir that never got registered.
    dead = jobs.start_job(db)
    jobs.update_job(db, dead, pid=2 ** 22 + 7)
    (cfg.adapters_dir / ".tmp-v1-999").mkdir(parents=True)
    (cfg.adapters_dir / "v1").mkdir()
    (cfg.adapters_dir / "v1" / "adapter_config.json").write_text("{half")
    assert control.status(db)["status"] == "failed"  # status() marks the orphan honestly
    result = cycle(cfg)
    assert result["version"] == 1 and jobs.get_job(db, dead)["error"].startswith("the learner process died")
    assert sorted(p.name for p in cfg.adapters_dir.iterdir()) == ["v1"]
    assert (cfg.adapters_dir / "v1" / "adapter_model.safetensors").exists()


def test_failure_is_recorded_on_the_job(cfg, db, no_gate, monkeypatch):
    teach(db)

    def broken(job):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(learner, "train_candidate", broken)
    with pytest.raises(RuntimeError):
        cycle(cfg)
    job = jobs.latest_job(db)
    assert job["status"] == "failed" and "out of memory" in job["error"]
    assert adapters.list_adapters(db) == []


def test_cancel_stops_between_steps(cfg, db, no_gate, monkeypatch):
    teach(db, n=4)
    job_id = jobs.start_job(db)
    jobs.request_cancel(db, job_id)
    with pytest.raises(learner.Cancelled):
        cycle(cfg, job_id=job_id)
    assert jobs.get_job(db, job_id)["status"] == "cancelled"
    assert not any(cfg.adapters_dir.iterdir())


def test_cancel_stops_a_long_step_within_seconds(cfg, db, no_gate):
    """A cancel ends the cycle within 5 s even inside a step that would run a minute (one SFT
    step on a shared CPU took 28 s, and the trainers look for a cancel only between steps),
    and the job reads cancelled, not failed, with no error."""
    teach(db, n=4)
    job_id = jobs.start_job(db)
    in_step, outcome = threading.Event(), {}

    def long_step(state):
        if state["stage"] != "preparing data" and not in_step.is_set():  # the first training step
            in_step.set()
            end = time.monotonic() + 60
            while time.monotonic() < end:  # a long step is many short operations
                time.sleep(0.01)

    def run():
        try:
            cycle(cfg, job_id=job_id, progress=long_step)
        except learner.Cancelled as e:
            outcome["cancelled"] = str(e)
        finally:
            outcome["at"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    assert in_step.wait(180)
    asked = time.monotonic()
    assert control.cancel(db)
    worker.join(30)
    assert outcome["at"] - asked < 5 and outcome["cancelled"].startswith("cancelled during")
    job = jobs.get_job(db, job_id)
    assert job["status"] == "cancelled" and job["error"] is None
    assert "cancelled during" in job["result"]["message"] and "nothing changed" in job["result"]["message"]
    assert adapters.list_adapters(db) == [] and not any(cfg.adapters_dir.iterdir())


def test_start_cycle_runs_in_its_own_process(cfg, db):
    set_setting(db, SETTINGS_KEY, TINY)
    teach(db)
    job_id = control.start_cycle(cfg)
    assert jobs.get_job(db, job_id)["pid"] != os.getpid()
    deadline = time.time() + 120
    while time.time() < deadline and control.status(db)["status"] == "running":
        time.sleep(0.5)
    st = control.status(db)
    assert st["id"] == job_id and st["status"] == "succeeded", st
    assert adapters.get_adapter(db, 1)["meta"]["job_id"] == job_id
    assert not control.cancel(db)  # nothing running any more


def test_trigger_rule(db):
    lcfg = LearnConfig(min_new_feedback=3, interval_s=3600, min_gap_s=60)
    assert control.should_start(db, lcfg) == (False, "0 new feedback items, waiting for 3")
    turns = [turn(db, f"q{i}", "a")[1] for i in range(3)]
    feedback.add_feedback(db, turns[0], "down")
    feedback.add_feedback(db, turns[0], "correction", correction="b")  # one answer, one item
    assert control.should_start(db, lcfg) == (False, "1 new feedback items, waiting for 3")
    for t in turns[1:]:
        feedback.add_feedback(db, t, "up")
    go, why = control.should_start(db, lcfg)
    assert go and "3 new feedback items" in why
    job = jobs.start_job(db)
    jobs.finish_job(db, job, "succeeded")
    go, why = control.should_start(db, lcfg)
    assert not go and "less than 60 s" in why
    no_gap = LearnConfig(min_new_feedback=3, interval_s=3600, min_gap_s=0)
    assert control.should_start(db, no_gap) == (False, "0 new feedback items, waiting for 3")
    feedback.add_feedback(db, turns[1], "down")
    assert not control.should_start(db, no_gap)[0]  # 1 item, and the interval has not passed
    assert control.should_start(db, LearnConfig(min_new_feedback=3, interval_s=1e-9, min_gap_s=0))[0]


def test_config_checks_name_the_offending_values():
    with pytest.raises(ValueError, match=r"min_gap_s \(100\) cannot exceed interval_s \(10\)"):
        LearnConfig(min_gap_s=100, interval_s=10)
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \[0, 1\) \(got 1.5\)"):
        LearnConfig(heldout_fraction=1.5)
    with pytest.raises(ValueError, match="unknown LearnConfig fields"):
        LearnConfig.from_dict({"lora_rank": 8})
    with pytest.raises(ValueError, match=r"learner_niceness must be a whole number in \[0, 19\] \(got 20\)"):
        Config(learner_niceness=20)
    with pytest.raises(ValueError, match=r"max_side_adapters must be a whole number, 0 or more \(got -1\)"):
        Config(max_side_adapters=-1)


def test_a_stored_config_with_retired_fields_loads_as_the_defaults():
    """Options measured not to help were removed; a home that stored them still loads."""
    stored = {"scrub_pii": True, "sft_neftune_alpha": 5.0, "anchor_weight": 1.0, "anchor_batch_size": 4,
              "contrast": True, "neighbour_rewrites": 3,
              "short_answers": 3}
    assert LearnConfig.from_dict(stored) == LearnConfig()
    assert LearnConfig.from_dict({**stored, "sft_lr": 5e-4}) == LearnConfig(sft_lr=5e-4)


def test_assistant_learn_cli(cfg, db, capsys, monkeypatch):
    from assistant.cli import main

    monkeypatch.setattr(learner, "_gate", lambda: None)
    # the foreground cycle runs in the test process: the CLI's Config keeps its priority
    monkeypatch.setattr("assistant.cli.Config", functools.partial(Config, learner_niceness=0))
    set_setting(db, SETTINGS_KEY, TINY)
    teach(db, n=1)
    argv = ["--home", str(cfg.home), "--model", cfg.model, "learn"]
    assert main(argv) == 0
    assert "v1 trained" in capsys.readouterr().out
    assert main(argv) == 0
    assert "nothing new to learn" in capsys.readouterr().out
    teach(db, n=1, start=3)
    assert main(["--home", str(cfg.home), "--model", str(cfg.home / "no-such-model"), "learn"]) == 1
    assert "learning cycle failed" in capsys.readouterr().err
    assert jobs.latest_job(db)["status"] == "failed"


def test_a_candidate_that_lost_an_earlier_correction_keeps_the_incumbents_expert_for_it(cfg, db, monkeypatch):
    """learning/repair.py: the gate's first evaluation finds an earlier correction the candidate's
    retrained weights lost; the candidate's entry for it is pointed at the incumbent's adapter and
    the candidate is evaluated again, so it goes live with both."""
    from learning.gate import decide
    from store.manifest import read_experts

    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    first, second = teach(db)
    cycle(cfg)
    incumbent = read_experts(adapters.get_adapter(db, 1)["path"])
    taught = teach(db, n=1, start=5)
    calls = []

    def evaluate(cfg, db, cand, inc, new, **kw):
        entry = next(e for e in read_experts(adapters.get_adapter(db, cand)["path"]) if first in e["feedback_ids"])
        calls.append(entry["adapter"])
        kept = entry["adapter"] == incumbent[0]["adapter"]  # the incumbent's weights answer it right
        items = [{"kind": "retention", "id": first, "incumbent": {"passed": True}, "candidate": {"passed": kept}},
                 {"kind": "taught", "id": taught[0], "incumbent": {"passed": False}, "candidate": {"passed": True}}]
        return {"candidate": {"taught": {"passed": 1, "total": 1}, "retention": {"passed": int(kept), "total": 1,
                                                                                "lost": int(not kept)}},
                "incumbent": {}, "items": items}

    monkeypatch.setattr(learner, "_gate", lambda: (evaluate, decide, lambda db: None))
    # the second cycle retrains fact 0 (as a take-back of a group-mate would): a new adapter for it
    real = learner.train_candidate

    def retrain_first(job):
        return real(dataclasses.replace(job, feedback_ids=[*job.feedback_ids, first]))

    monkeypatch.setattr(learner, "train_candidate", retrain_first)
    result = cycle(cfg)
    assert calls[0] != incumbent[0]["adapter"] and calls[1] == incumbent[0]["adapter"]
    assert result["status"] == "active", result["message"]
    assert "kept v1's expert for 1 earlier correction(s)" in result["message"]
    v2 = adapters.get_adapter(db, 2)
    assert v2["meta"]["stats"]["experts"]["kept_from_incumbent"] == [first]
    linked = [Path(a["path"]) / "experts" / incumbent[0]["adapter"] / "adapter_model.safetensors"
              for a in (adapters.get_adapter(db, 1), v2)]
    assert linked[0].stat().st_ino == linked[1].stat().st_ino


def test_an_incumbent_adapter_that_learned_feedback_taken_back_since_is_not_reused(cfg, db, monkeypatch, tmp_path):
    """Its weights still hold the taken-back feedback. The correction the candidate retrained for
    that take-back and lost is trained anew next cycle (its entry dropped), and the gate does not
    hold it against the candidate: rejecting it would keep the taken-back feedback live."""
    import json
    import shutil

    from learning.gate import GateConfig, decide
    from learning.repair import Repair, excuse_relearning, repair_lost
    from store import conversations

    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    first, second = teach(db)
    cycle(cfg)
    incumbent = adapters.get_adapter(db, 1)["path"]
    candidate = tmp_path / "v2"
    shutil.copytree(incumbent, candidate)
    meta = json.loads((candidate / "meta.json").read_text())
    shutil.copytree(candidate / "experts" / meta["experts"][0]["adapter"], candidate / "experts" / "v2-0")
    meta["version"] = 2
    meta["experts"] = [{**meta["experts"][0], "name": "v2-0", "adapter": "v2-0", "trained_in": 2}]  # retrained alone
    (candidate / "meta.json").write_text(json.dumps(meta))
    turn_id = db.execute("SELECT turn_id FROM feedback WHERE id = ?", [second]).fetchone()[0]
    conversations.delete_conversation(db, conversations.get_turn(db, turn_id)["conversation_id"])
    assert repair_lost(db, candidate, incumbent, [first]) == Repair(kept=[], relearning=[first])
    assert json.loads((candidate / "meta.json").read_text())["experts"] == []  # trained anew next cycle

    evidence = [{"kind": "retention", "id": first, "incumbent": {"passed": True}, "candidate": {"passed": False}}]
    metrics = {"taught": {"passed": 1, "total": 1, "lost": 0}, "retention": {"passed": 0, "total": 1, "lost": 1}}
    assert not decide(metrics, {}, GateConfig()).passed
    excuse_relearning(metrics, evidence, [first])
    decision = decide(metrics, {}, GateConfig())
    assert decision.passed and "1 retrained because a correction sharing its expert was taken back" in decision.summary()
