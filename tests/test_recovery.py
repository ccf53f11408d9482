"""Learning recovers by itself after a learner dies: the auto-trigger sees the dead job, a
candidate its cycle never judged is rejected and its feedback learned again, and nothing without
a passing gate decision goes live without the explicit override."""
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from learning import control, learner, recovery, versions
from learning.config import LearnConfig
from store import adapters, feedback, jobs
from tests.test_datasets import turn
from tests.test_learner import cycle, fake_gate, teach


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_auto_trigger_recovers_from_a_learner_that_died(cfg, db, monkeypatch):
    dead = jobs.start_job(db)  # a learner killed mid-cycle: its row still says 'running'
    jobs.update_job(db, dead, pid=dead_pid())
    for i in range(3):
        _, t = turn(db, f"q{i}", "a")
        feedback.add_feedback(db, t, "up")
    started = []
    monkeypatch.setattr(control, "start_cycle", lambda cfg, force=False: started.append("job") or "job")
    interval = 0.2
    trigger = control.AutoTrigger(cfg, poll_s=0.05,
                                  learn_cfg=LearnConfig(min_new_feedback=3, interval_s=interval, min_gap_s=0))
    trigger.start()
    try:
        deadline = time.monotonic() + interval
        while not started and time.monotonic() < deadline + 5 * trigger.poll_s:
            time.sleep(0.01)
    finally:
        trigger.stop()
    assert started, trigger.last_reason  # was: "a cycle is running", for ever
    job = jobs.get_job(db, dead)
    assert job["status"] == "failed" and "died" in job["error"]


def test_a_candidate_whose_cycle_died_is_rejected_and_its_feedback_learned_again(cfg, db, monkeypatch):
    taught = teach(db)

    def killed():  # the learner dies right after registering its candidate
        raise SystemExit("killed")

    monkeypatch.setattr(learner, "_gate", killed)
    with pytest.raises(SystemExit):
        cycle(cfg)
    job_id = adapters.get_adapter(db, 1)["meta"]["job_id"]
    jobs.update_job(db, job_id, status="running", ended_at=None, pid=dead_pid())  # as SIGKILL leaves it
    assert adapters.get_adapter(db, 1)["status"] == "candidate" and not adapters.decisions_for(db, 1)
    weights = cfg.adapters_dir / "v1" / "adapter_model.safetensors"
    assert weights.exists()

    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    result = cycle(cfg)
    v1 = adapters.get_adapter(db, 1)
    assert v1["status"] == "rejected" and not weights.exists()  # the disk it held is given back
    reason = adapters.decisions_for(db, 1)[-1]["reasons"][0]
    assert reason.startswith("FAILED:") and job_id in reason
    assert result["version"] == 2 and result["status"] == "active"
    assert set(taught) <= set(adapters.lineage_feedback(db, 2))  # learned again, not "pending" for ever
    assert recovery.abandoned_candidates(db) == []


def test_a_candidate_whose_cycle_died_after_a_passing_decision_is_not_stuck(cfg, db, monkeypatch):
    """Killed between the gate's passing decision and the promotion: the next cycle rejects the
    candidate (a newer version may have gone live meanwhile) and learns its feedback again."""
    taught = teach(db)
    evaluate, decide, config = fake_gate(True)()

    def killed_at_promotion(db, version):
        raise SystemExit("killed")

    monkeypatch.setattr(learner, "_gate", lambda: (evaluate, decide, config))
    monkeypatch.setattr(adapters, "activate", killed_at_promotion)
    with pytest.raises(SystemExit):
        cycle(cfg)
    monkeypatch.undo()
    job_id = adapters.get_adapter(db, 1)["meta"]["job_id"]
    jobs.update_job(db, job_id, status="running", ended_at=None, pid=dead_pid())
    assert adapters.decisions_for(db, 1)[0]["passed"] and adapters.get_adapter(db, 1)["status"] == "candidate"
    monkeypatch.setattr(learner, "_gate", fake_gate(True))
    assert cycle(cfg)["status"] == "active" and adapters.get_adapter(db, 1)["status"] == "rejected"
    assert set(taught) <= set(adapters.lineage_feedback(db, 2))


def test_a_candidate_left_on_purpose_without_a_gate_is_kept(cfg, db, monkeypatch):
    teach(db)
    monkeypatch.setattr(learner, "_gate", lambda: None)
    assert cycle(cfg)["status"] == "candidate"  # its job succeeded: it waits for a person
    assert recovery.abandoned_candidates(db) == []


def test_promoting_a_version_the_gate_never_judged_needs_the_override(cfg, db, monkeypatch, capsys):
    from assistant.cli import main

    teach(db)
    monkeypatch.setattr(learner, "_gate", lambda: None)
    cycle(cfg)
    with pytest.raises(versions.VersionError, match="never judged by the gate.*--yes"):
        versions.promote(db, 1)
    assert main(["--home", str(cfg.home), "adapters", "promote", "1"]) == 1
    assert "never judged" in capsys.readouterr().out and adapters.active_version(db) is None

    ui_versions = pytest.importorskip("assistant.ui_versions")
    notice, confirm = ui_versions.promote(SimpleNamespace(db=db), "1")
    assert "not judged" in notice and confirm["visible"] is True and adapters.active_version(db) is None

    assert main(["--home", str(cfg.home), "adapters", "promote", "1", "--yes"]) == 0
    assert "gate overridden" in capsys.readouterr().out and adapters.active_version(db) == 1
