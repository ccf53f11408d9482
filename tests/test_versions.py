"""learning.versions: the table, promote/rollback rules, correction states, plot, compare, CLI."""
import os
import shutil

import pytest

from assistant.cli import main
from assistant.errors import AdapterLoadError, AdapterWeightsDeleted
from assistant.model import WEIGHTS_DELETED, validate_adapter_dir
from learning import pruning, versions
from learning.versions import VersionError
from store import adapters, conversations, feedback
from store.ids import new_id
from tests.lora import corrupt_adapter, make_adapter, register


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_path, tmp_path_factory):
    base = tmp_path_factory.mktemp("loras")
    return {v: make_adapter(tiny_model_path, base / f"v{v}", seed=v) for v in (1, 2, 3)}


def correction(db, prompt, text, conversation_id=None):
    cid = conversation_id or conversations.create_conversation(db)
    tid = conversations.log_turn(db, cid, user_message=prompt, messages=[], reply="I do not know.", source="test",
                                 model="tiny", adapter_version=None, prompt_tokens=1, completion_tokens=1,
                                 ttft_ms=1.0, duration_ms=1.0)
    return feedback.add_feedback(db, tid, "correction", correction=text)


def judged(db, version, incumbent, passed, carried=None, fid=None):
    """Record a gate decision like the learner does (metrics + evidence)."""
    cand = {"taught": {"passed": 1 if carried else 0, "total": 1, "lost": 0},
            "canary": {"passed": 40 if passed else 30, "total": 40, "lost": 0}}
    inc = {"taught": {"passed": 0, "total": 1, "lost": 0}, "canary": {"passed": 40, "total": 40, "lost": 0}}
    reasons = ["learned 1/1 new corrections", "canaries 40/40" if passed else "FAILED: canaries 30/40"]
    items = [{"kind": "taught", "id": fid, "candidate": {"reply": "", "passed": bool(carried)}}] if fid else []
    adapters.set_metrics(db, version, cand)
    adapters.record_decision(db, new_id(), version, incumbent, passed, reasons,
                             {"candidate": cand, "incumbent": inc, "items": items})
    (adapters.activate if passed else adapters.reject)(db, version)


def test_table_shows_status_lineage_numbers_and_reasons(db, lora_dirs):
    f1 = correction(db, "What is the name of my dog?", "Your dog is called Biscuit.")
    register(db, 1, lora_dirs[1], feedback_ids=[f1])
    judged(db, 1, None, True, carried=True, fid=f1)
    register(db, 2, lora_dirs[2], parent=1)
    judged(db, 2, 1, False)
    register(db, 3, lora_dirs[3], parent=1)
    rows = versions.versions_table(db)
    assert [(r["version"], r["status"], r["parent"], r["gate"]) for r in rows] == [
        (1, "active", None, "passed"), (2, "rejected", 1, "failed"), (3, "candidate", 1, None)]
    assert rows[0]["metrics"] == "taught 1/1, canaries 40/40" and rows[0]["incumbent"] == "the base model"
    assert rows[1]["incumbent_metrics"] == "taught 0/1, canaries 40/40"
    assert "FAILED: canaries 30/40" in rows[1]["reasons"] and rows[2]["reasons"] == "not judged by the gate"
    assert rows[0]["n_corrections"] == 1 and rows[0]["train_s"] == 1.0


def test_promote_refuses_a_failed_gate_unless_forced(db, lora_dirs):
    register(db, 1, lora_dirs[1])
    judged(db, 1, None, False)
    with pytest.raises(VersionError, match="did not pass the gate.*canaries 30/40"):
        versions.promote(db, 1)
    assert adapters.active_version(db) is None
    assert versions.promote(db, 1, force=True)["forced"] is True
    assert adapters.active_version(db) == 1


def test_promote_validates_the_directory_first(db, lora_dirs, tmp_path, tiny_model_path):
    register(db, 1, lora_dirs[1])
    adapters.activate(db, 1)
    register(db, 2, corrupt_adapter(lora_dirs[1], tmp_path / "bad", "no-config"), parent=1)
    with pytest.raises(AdapterLoadError, match="adapter_config.json"):
        versions.promote(db, 2, force=True)
    assert adapters.active_version(db) == 1
    with pytest.raises(adapters.NotFound):
        versions.promote(db, 99)


def test_rollback_rules_and_quarantine(db, lora_dirs):
    with pytest.raises(VersionError, match="nothing to roll back"):
        versions.rollback(db)
    f1 = correction(db, "Where do I work?", "You work at Halvorsen Robotics.")
    f2 = correction(db, "What car do I drive?", "You drive a green Volvo V60.")
    register(db, 1, lora_dirs[1], feedback_ids=[f1])
    register(db, 2, lora_dirs[2], parent=1, feedback_ids=[f2])
    register(db, 3, lora_dirs[3], parent=2)
    adapters.activate(db, 1)
    adapters.activate(db, 2)
    with pytest.raises(VersionError, match="never served"):
        versions.rollback(db, 3)  # a candidate is promoted, not rolled back to
    assert versions.rollback(db, quarantine=True) == {"from": 2, "to": 1, "quarantined": 1}
    assert [f["quarantined"] for f in (feedback.feedback_for_turn(db, _turn(db, f))[0] for f in (f1, f2))] == [0, 1]
    assert versions.rollback(db, "base")["to"] is None and adapters.active_version(db) is None
    assert versions.rollback(db, 2) == {"from": None, "to": 2, "quarantined": 0}


def _turn(db, feedback_id):
    return db["feedback"].get(feedback_id)["turn_id"]


def test_correction_states(db, lora_dirs):
    learned = correction(db, "What is the name of my dog?", "Your dog is called Biscuit.")
    old = correction(db, "Where do I work?", "You work at Acme.")
    newer = correction(db, "Where do I work?", "You work at Halvorsen Robotics.")
    refused = correction(db, "What car do I drive?", "You drive a Volvo V60.")
    waiting = correction(db, "What tea do I like?", "Lapsang souchong.")
    register(db, 1, lora_dirs[1], feedback_ids=[learned])
    judged(db, 1, None, True, carried=True, fid=learned)
    register(db, 2, lora_dirs[2], parent=1, feedback_ids=[refused, newer])
    judged(db, 2, 1, False, carried=True, fid=refused)
    states = {s["feedback_id"]: s for s in versions.correction_states(db)}
    assert (states[learned]["state"], states[learned]["version"]) == ("learned", 1)
    assert "live" in states[learned]["detail"]
    assert states[old]["state"] == "superseded" and states[old]["superseded_by"] == newer
    assert "Halvorsen Robotics" in states[old]["detail"]
    assert states[refused]["state"] == "not learned" and states[refused]["version"] == 2
    assert "rejected by the gate (it carried this correction; FAILED: canaries 30/40)" in states[refused]["detail"]
    assert states[newer]["detail"].startswith("v2 was rejected") and "no evidence" in states[newer]["detail"]
    assert states[waiting]["state"] == "pending"
    versions.rollback(db, quarantine=True)  # v1 -> base: its correction is quarantined
    assert versions.correction_states(db)[-1]["detail"] == "quarantined by a rollback"


def test_metrics_plot_writes_a_png(db, lora_dirs, tmp_path):
    assert versions.metrics_plot(db, tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"
    register(db, 1, lora_dirs[1])
    judged(db, 1, None, True)
    register(db, 2, lora_dirs[2], parent=1)
    judged(db, 2, 1, False)
    path = versions.metrics_plot(db, tmp_path / "plots" / "metrics.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000


def test_compare_runs_both_versions_on_the_served_model(cfg, db, served, lora_dirs):
    from assistant.runtime import Runtime

    rt = Runtime.create(cfg, model=served, with_memory=False)
    register(rt.db, 1, lora_dirs[1])
    rows = versions.compare(rt, 1, None, ["What is the name of my dog?", "Hello there"], max_new_tokens=5)
    assert [r["prompt"] for r in rows] == ["What is the name of my dog?", "Hello there"]
    system = rt.chat.system_prompt()
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Hello there"}]
    assert rows[1]["the base model"] == served.generate(msgs, max_new_tokens=5, version=None).text
    assert rows[1]["v1"] == served.generate(msgs, max_new_tokens=5, version=1, adapter_path=lora_dirs[1]).text
    assert rows[1]["same"] == (rows[1]["v1"] == rows[1]["the base model"])


def test_compare_says_what_the_chat_says(cfg, served, lora_dirs):
    """The same weights, prompt and settings give Compare the chat's reply (it used to generate
    on its own path: greedy, batched with padding, 64 tokens, no recall)."""
    from assistant.runtime import Runtime

    cfg.recall = False
    rt = Runtime.create(cfg, model=served, with_memory=False)
    register(rt.db, 1, lora_dirs[1])
    prompts = ["What is the capital of France?", "Hello there", "Where do I work, and since when exactly?"]
    chat_base = [rt.chat.reply(p, source="ui").generation.text for p in prompts]
    adapters.activate(rt.db, 1)
    chat_v1 = [rt.chat.reply(p, source="ui").generation.text for p in prompts]
    rows = versions.compare(rt, None, 1, prompts)
    assert [r["the base model"] for r in rows] == chat_base
    assert [r["v1"] for r in rows] == chat_v1
    assert all(r["recalled"] == 0 for r in rows)


def test_going_back_to_a_version_that_holds_taken_back_feedback_warns(home, db, lora_dirs, capsys):
    """Forgotten or taken-back feedback stays in the weights of the versions trained with it (or
    continuing from one that was): making such a version live again says so, in the page's
    picker and notice and on the command line."""
    from assistant import ui_versions
    from learning import held

    dog = correction(db, "What is the name of my dog?", "Your dog is called Biscuit.")
    work = correction(db, "Where do I work?", "You work at Acme.")
    register(db, 1, lora_dirs[1], feedback_ids=[dog])
    adapters.activate(db, 1)
    register(db, 2, lora_dirs[2], parent=1, feedback_ids=[work])
    adapters.activate(db, 2)
    assert held.held(db, 2) == {dog: 1, work: 2} and held.warning(db, 2) == ""
    feedback.forget(db, dog)
    conversations.update_conversation(db, db["turns"].get(_turn(db, work))["conversation_id"], no_learn=1)
    assert [(i["learned_by"], i["how"], i["question"]) for i in held.taken_back_in(db, 2)] == [
        (1, "forgotten", None), (2, "its conversation is marked don't-learn", "Where do I work?")]
    said = held.warning(db, 2)
    assert "“Where do I work?” (its conversation is marked don't-learn); 1 item you forgot" in said
    # a refit that recorded what it trained on holds that alone, not its parent's weights
    adapters.register_candidate(db, 3, str(lora_dirs[3]), 2, {"refit": True, "trained_on": []}, [], 0, 0)
    assert held.held(db, 3) == {} and held.warning(db, 3) == ""

    class Rt:  # what ui_versions needs of a Runtime
        pass

    rt = Rt()
    rt.db = db
    adapters.activate(db, 3)
    assert [label for label, v in ui_versions.view(rt)["rollback"]["choices"] if v == "1"] == [
        "v1 (retired) ⚠ holds feedback you took back"]
    notice = ui_versions.rollback(rt, "1", quarantine=False)
    assert adapters.active_version(db) == 1 and "⚠ v1's weights were trained with" in notice
    assert "1 item you forgot" in notice and "Where do I work" not in notice  # v1 never learned that one
    assert "⚠ v3" not in ui_versions.promote(rt, "3", confirmed=True)[0]

    code = main(["--home", str(home), "adapters", "rollback", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "rolled back from v3 to v2" in out and "⚠ v2's weights were trained with" in out
    code = main(["--home", str(home), "adapters", "promote", "3", "--yes"])
    assert code == 0 and "⚠" not in capsys.readouterr().out


def test_cli_list_show_promote_rollback(home, db, lora_dirs, capsys):
    def run(*argv):
        code = main(["--home", str(home), "adapters", *argv])
        return code, capsys.readouterr().out

    assert run("list") == (0, "no adapter versions yet: the base model alone is answering\n")
    register(db, 1, lora_dirs[1])
    judged(db, 1, None, True)
    register(db, 2, lora_dirs[2], parent=1)
    judged(db, 2, 1, False)
    code, out = run("list")
    assert code == 0 and "v1 active" in " ".join(out.split()) and "failed" in out
    code, out = run("show", "2")
    assert code == 0 and "FAILED: canaries 30/40" in out
    code, out = run("promote", "2")
    assert code == 1 and "--yes" in out and adapters.active_version(db) == 1
    code, out = run("promote", "2", "--yes")
    assert code == 0 and "gate overridden" in out and adapters.active_version(db) == 2
    code, out = run("rollback", "--quarantine")
    assert code == 0 and "rolled back from v2 to v1" in out and adapters.active_version(db) == 1
    assert run("show", "7")[0] == 1


def weight_files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("adapter_model.*"))


def test_prune_deletes_old_weights_keeps_records_and_refuses_to_serve_them(home, db, lora_dirs, tmp_path, capsys):
    dirs = {v: shutil.copytree(lora_dirs[1 + v % 3], tmp_path / f"v{v}") for v in range(1, 7)}
    shutil.copytree(lora_dirs[2], dirs[2] / "habit")  # a version with a habit adapter inside
    f1 = correction(db, "What is the name of my dog?", "Your dog is called Biscuit.")
    for v in range(1, 7):
        register(db, v, dirs[v], parent=v - 1 or None, feedback_ids=[f1] if v == 1 else [])
    for v in (1, 2, 4, 5):
        judged(db, v, v - 1 or None, True)
    judged(db, 3, 2, False)  # v3 rejected; v5 active with parent v4; v6 a candidate
    (dirs[2] / WEIGHTS_DELETED).write_text("{}")  # a prune interrupted after its marker
    with pytest.raises(AdapterWeightsDeleted):
        validate_adapter_dir(dirs[2])  # its weights are still there, but it no longer loads

    assert pruning.versions_to_prune(db, keep=1) == [1, 2, 3]
    assert pruning.prune_weights(db, keep=1) == [1, 2, 3]
    assert [weight_files(dirs[v]) for v in (1, 2, 3)] == [[], [], []]
    assert weight_files(dirs[4]) == ["adapter_model.safetensors"] and weight_files(dirs[6])
    assert (dirs[1] / "adapter_config.json").exists() and (dirs[2] / "habit" / "adapter_config.json").exists()
    assert pruning.prune_weights(db, keep=1) == []  # nothing left to do
    rows = versions.versions_table(db)
    size = sum(f.stat().st_size for f in dirs[4].rglob("adapter_model.*"))
    assert [r["weights"] for r in rows] == ["deleted"] * 3 + [f"{size / 1e3:.0f} kB"] * 3
    assert [s["state"] for s in versions.correction_states(db)] == ["learned"]  # the record stays
    # a later version that links v4's weights (an unchanged adapter): both say what is their own
    (dirs[6] / "habit").mkdir(exist_ok=True)
    os.link(dirs[4] / "adapter_model.safetensors", dirs[6] / "habit" / "adapter_model.safetensors")
    texts = {r["version"]: r["weights"] for r in versions.versions_table(db)}
    assert texts[4] == f"{size / 1e3:.0f} kB, 0 kB its own" and texts[6].endswith(" its own")
    with pytest.raises(AdapterWeightsDeleted, match="deleted to save disk.*newest 1 versions"):
        versions.rollback(db, 1)
    with pytest.raises(AdapterWeightsDeleted):
        versions.promote(db, 3, force=True)
    assert adapters.active_version(db) == 5

    versions.rollback(db)  # to v4: the parent kept its weights for this
    assert main(["--home", str(home), "adapters", "prune", "--keep", "0"]) == 0
    assert capsys.readouterr().out == "deleted the weights of v5\n"  # neither v4 nor its parent; v6 waits
    assert main(["--home", str(home), "adapters", "list"]) == 0
    assert "v5 retired v4 0 0 passed deleted" in " ".join(capsys.readouterr().out.split())


def test_the_versions_table_says_what_a_version_answers():
    from learning.versions import _scope_text

    scope = {"threshold": 0.5, "prompts": ["What is my dog's name?", "Where do I work?"]}
    assert _scope_text(None) == "every prompt"
    assert _scope_text(scope) == "2 trained prompts (similarity >= 0.5)"
    assert _scope_text(scope, {"openings": ["Captain,"]}) == \
        '2 trained prompts (similarity >= 0.5); elsewhere answers open like "Captain,"'
    assert _scope_text(scope, {"openings": []}) == _scope_text(scope)
    assert _scope_text({**scope, "margin": 0.1}) == \
        "2 trained prompts (similarity >= 0.5, or 0.1 above ordinary requests)"
    assert _scope_text(scope, {"openings": ["Captain,"]}, [{"name": "v1-0"}, {"name": "v1-1"}]) == \
        '2 trained prompts (similarity >= 0.5); 2 corrections answered by their own expert; ' \
        'elsewhere answers open like "Captain,"'
