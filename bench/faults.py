"""Faults bench (issue 29): kill the learner and the server, fill the disk, fuzz the API; count the damage.

    python bench/faults.py      # bench/results/faults.{json,md}; make bench-faults
    options: --learner-kills 20 --server-kills 10 --seed 0

All on the tiny local model of tests/tiny.py (a 2-layer Llama, tokenizer included): a learning
cycle of the embedded 135M model takes minutes on 2 cores, one of the tiny model about 25 s, so
20 kills fit. Stages, registry, gate, promotion and pruning are the product's own code; what the
tiny model learns is not the point, so on most cycles the gate's decision is made a pass
(bench/faults_learner.py --pass-gate: recorded as the gate's decision, with what it measured)
or promotion would never run. Recall in the fuzzed server is the real MiniLM.

Learner: each cycle gets 2 new corrections (acknowledged rows), is started as the server's
auto-trigger does (a job row, then the process), and is killed with SIGKILL either at a random
moment of a stage picked at random (preparing data, SFT, DPO, habit, experts, evaluating, gate)
or by a hook at the instants between statements (bench/faults_learner.py: after registering the
candidate, after the gate's decision, inside the promotion's transaction, after promotion,
while pruning). After each kill: integrity_check and active versions; the next cycle is the
recovery. At the end one clean cycle, then a kill and the auto-trigger's time to start learning
again. Disk: a cycle on a 48 MB tmpfs filled during SFT, and chat on an 8 MB tmpfs filled before
requests and between generation and saving (bench/faults_server.py); skipped where no tmpfs can
be mounted. Server: 10 kills -9 of `assistant serve` mid-stream; fuzz: >= 300 request bodies.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, ROOT  # noqa: F401 - sets the environment up first

# isort: split

from faults_server import db_checks, disk_full_chat, fill, fuzz, missing_rows, server_kills, small_disk  # noqa: E402

from assistant.config import Config  # noqa: E402
from learning.config import SETTINGS_KEY, LearnConfig  # noqa: E402
from learning.control import AutoTrigger  # noqa: E402
from store import adapters, conversations, feedback, jobs, open_db  # noqa: E402
from store.settings import set_setting  # noqa: E402
from tests.tiny import build_tiny_model  # noqa: E402

TINY = dict(lora_r=4, lora_alpha=8, sft_epochs=1, dpo_epochs=1, sft_batch_size=4, dpo_batch_size=2,
            sft_max_length=64, dpo_max_length=64, self_replay=2, dedup_threshold=1.0, heldout_fraction=0.0,
            keep_versions=2)
STAGES = ["preparing data", "SFT", "DPO", "habit", "experts", "evaluating", "gate"]
HOOKS = ["registered", "decided", "mid-promotion", "promoted", "pruning"]
CYCLE_TIMEOUT_S = 300
RESUME_INTERVAL_S = 20.0


def teach(db, n: int, start: int) -> list[str]:
    ids = []
    for i in range(start, start + n):
        cid = conversations.create_conversation(db)
        q = f"What is fact {i}?"
        t = conversations.log_turn(db, cid, user_message=q, messages=[{"role": "user", "content": q}],
                                   reply="I do not know.", source="api", model="tiny", adapter_version=None,
                                   prompt_tokens=5, completion_tokens=5, ttft_ms=1.0, duration_ms=2.0)
        ids.append(feedback.add_feedback(db, t, "correction", correction=f"Fact {i} is Biscuit {i}."))
    return ids


def spawn(home: Path, model: Path, db, kill_at: str | None, pass_gate: bool) -> tuple[subprocess.Popen, str]:
    job_id = jobs.start_job(db)  # as learning.control.start_cycle: the row first, then the process
    cmd = [sys.executable, str(ROOT / "bench" / "faults_learner.py"), "--home", str(home), "--model", str(model),
           "--job-id", job_id] + (["--kill-at", kill_at] if kill_at else []) + (["--pass-gate"] if pass_gate else [])
    log = open(home / f"learner-{job_id}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT),
                            env={**os.environ, "TQDM_DISABLE": "1"}, start_new_session=True)
    jobs.update_job(db, job_id, pid=proc.pid)
    return proc, job_id


def kill_in_stage(proc: subprocess.Popen, db, job_id: str, stage: str, rng: random.Random) -> str:
    """SIGKILL at a random moment of `stage` (or of the first later one the cycle reaches)."""
    want = STAGES.index(stage)
    deadline = time.monotonic() + CYCLE_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        now = (jobs.get_job(db, job_id) or {}).get("stage")
        if now in STAGES and STAGES.index(now) >= want:
            time.sleep(rng.uniform(0, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return f"killed in {now}"
            break
        time.sleep(0.05)
    proc.wait()
    return "finished before the kill"


def learner_kills(root: Path, model: Path, n: int, rng: random.Random) -> dict:
    home = root / "learner-home"
    db = open_db(home / "assistant.db")
    set_setting(db, SETTINGS_KEY, TINY)
    plan = HOOKS + [rng.choice(STAGES) for _ in range(max(n - len(HOOKS), 0))]
    rng.shuffle(plan)
    acked, decisions, versions, events = [], set(), set(), []
    out = {"kills": 0, "integrity_failures": 0, "double_active": 0}
    taught = 0
    for point in plan:
        acked += teach(db, 2, taught)
        taught += 2
        hook = point if point in HOOKS else None
        proc, job_id = spawn(home, model, db, hook, pass_gate=bool(hook) or rng.random() < 0.6)
        if hook:
            rc = _wait(proc)
            what = f"hook {hook}: " + ("killed" if rc == -signal.SIGKILL else f"exited {rc} before reaching it")
        else:
            what = kill_in_stage(proc, db, job_id, point, rng)
        out["kills"] += "killed" in what
        decisions |= {r[0] for r in db.execute("SELECT id FROM gate_decisions")}
        versions |= {a["version"] for a in adapters.list_adapters(db)}
        checks = db_checks(home / "assistant.db")
        out["integrity_failures"] += not checks["integrity_ok"]
        out["double_active"] += checks["active"] > 1
        events.append({"planned": point, "outcome": what, **checks})
    # recovery: one clean cycle must run, judge what the dead ones left and leave nothing undecided
    acked += teach(db, 2, taught)
    proc, job_id = spawn(home, model, db, None, pass_gate=True)
    _wait(proc)
    final = jobs.get_job(db, job_id)
    checks = db_checks(home / "assistant.db")
    out.update(events=events, clean_cycle=final["status"], clean_cycle_error=final.get("error"), final=checks,
               acked_feedback=len(acked), acked_lost=missing_rows(home / "assistant.db", "feedback", acked)
               + missing_rows(home / "assistant.db", "gate_decisions", sorted(decisions))
               + missing_rows(home / "assistant.db", "adapters", sorted(versions)),
               resume=resume_after_kill(home, model, db, taught + 2, rng))
    return out


def resume_after_kill(home: Path, model: Path, db, taught: int, rng: random.Random) -> dict:
    """Kill a cycle in SFT; the auto-trigger (as `assistant serve` runs it) must start the next
    one by itself, within one interval."""
    teach(db, 2, taught)
    proc, job_id = spawn(home, model, db, None, pass_gate=False)
    kill_in_stage(proc, db, job_id, "SFT", rng)
    killed_at = time.monotonic()
    teach(db, 1, taught + 2)
    lcfg = LearnConfig(**TINY, min_new_feedback=1, interval_s=RESUME_INTERVAL_S, min_gap_s=0)
    trigger = AutoTrigger(Config(home=home, model=str(model)), poll_s=2.0, learn_cfg=lcfg).start()
    try:
        while not trigger.started and time.monotonic() - killed_at < 3 * RESUME_INTERVAL_S:
            time.sleep(0.2)
        resumed_s = time.monotonic() - killed_at if trigger.started else None
        new = trigger.started[0] if trigger.started else None
        while new and jobs.get_job(db, new)["status"] == "running" and time.monotonic() - killed_at < CYCLE_TIMEOUT_S:
            time.sleep(0.5)
    finally:
        trigger.stop()
    return {"interval_s": RESUME_INTERVAL_S, "resumed_s": None if resumed_s is None else round(resumed_s, 1),
            "killed_job": jobs.get_job(db, job_id)["status"], "new_job": new and jobs.get_job(db, new)["status"]}


def disk_full_cycle(root: Path, model: Path) -> dict:
    with small_disk(root / "cycle-disk", 48) as disk:
        if disk is None:
            return {"skipped": "no tmpfs could be mounted here"}
        home = disk / "home"
        db = open_db(home / "assistant.db")
        set_setting(db, SETTINGS_KEY, TINY)
        acked = teach(db, 3, 0)
        proc, job_id = spawn(home, model, db, None, pass_gate=True)
        filled = _fill_in_stage(proc, db, job_id, "SFT", disk)
        rc = _wait(proc)
        job = jobs.get_job(db, job_id)
        during = db_checks(home / "assistant.db")
        filled.unlink()
        acked += teach(db, 1, 3)
        proc, again = spawn(home, model, db, None, pass_gate=True)
        _wait(proc)
        after = db_checks(home / "assistant.db")
        return {"learner_exit": rc, "job_status": job["status"], "job_error": (job.get("error") or "")[:200],
                "checks_while_full": during, "recovery_cycle": jobs.get_job(db, again)["status"], "checks_after": after,
                "acked_lost": missing_rows(home / "assistant.db", "feedback", acked)}


def _wait(proc) -> int:
    """The learner's exit status; a learner still running after CYCLE_TIMEOUT_S is killed (hung)."""
    try:
        return proc.wait(CYCLE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return "hung, killed"


def _fill_in_stage(proc, db, job_id, stage, disk) -> Path:
    while proc.poll() is None and (jobs.get_job(db, job_id) or {}).get("stage") not in STAGES[STAGES.index(stage):]:
        time.sleep(0.05)
    return fill(disk)


def summary(res: dict) -> dict:
    lk, sk, fz = res["learner"], res["server"], res["fuzz"]
    dc, dch = res["disk_cycle"], res["disk_chat"]
    disk_integrity = [d for d in (dc.get("checks_while_full"), dc.get("checks_after")) if d] + ([dch] if "integrity_ok" in dch else [])
    return {
        "learner kills": lk["kills"], "server kills mid-stream": sk["kills"], "fuzzed bodies": fz["bodies"],
        "integrity failures": lk["integrity_failures"] + sk["integrity_failures"] + (not fz["integrity_ok"])
        + sum(not d["integrity_ok"] for d in disk_integrity),
        "acknowledged rows lost": lk["acked_lost"] + sk["acked_lost"] + sk["acked_changed"] + dc.get("acked_lost", 0)
        + dch.get("acked_lost", 0),
        "double-active versions": lk["double_active"] + (lk["final"]["active"] > 1),
        "candidates left without a decision": lk["final"]["undecided_candidates"]
        + dc.get("checks_after", {}).get("undecided_candidates", 0),
        "gate bypasses": lk["final"]["gate_bypasses"],
        "5xx (not a full disk's 507)": fz["five_xx"] + sk["five_xx"] + dch.get("five_xx_not_507", 0),
        "dropped connections": fz["dropped_connections"],
        "empty conversations": sk["empty_conversations"] + fz["empty_conversations"] + dch.get("empty_conversations", 0),
        "streamed turns whose sent id was not saved": sk["sent_turn_missing"],
        "streams without [DONE] on a full disk": dch.get("streams_without_done", 0),
        "automatic learning resumed after (s)": lk["resume"]["resumed_s"],
        "candidates left at the end (decided, never acted on)": lk["final"]["candidates"] - lk["final"]["undecided_candidates"],
    }


def markdown(res: dict, cmd: str) -> str:
    s = res["summary"]
    lines = ["# Faults (issue 29)", "", f"`{cmd}`, seed {res['seed']}, {res['minutes']} min on {os.cpu_count()} cores, "
             "the tiny model of tests/tiny.py (see the script's docstring). Targets: all 0, automatic learning back "
             f"within one interval ({res['learner']['resume']['interval_s']:.0f} s here).", "",
             "| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in s.items()]
    lines += ["", "## Learner kills", "", "| planned | outcome | integrity | active | undecided candidates |", "|---|---|---|---|---|"]
    lines += [f"| {e['planned']} | {e['outcome']} | {'ok' if e['integrity_ok'] else 'FAILED'} | {e['active']} | "
              f"{e['undecided_candidates']} |" for e in res["learner"]["events"]]
    lines += ["", f"Clean cycle after them: {res['learner']['clean_cycle']}; then {json.dumps(res['learner']['final'])}.",
              f"Auto-trigger after a kill: {json.dumps(res['learner']['resume'])}.", "",
              "## Server", "", "Kills mid-stream: " + json.dumps({k: v for k, v in res["server"].items()}), "",
              "Full disk during chat: " + json.dumps(res["disk_chat"]), "",
              "Full disk during a cycle: " + json.dumps(res["disk_cycle"]), "",
              "Fuzz: " + json.dumps({k: v for k, v in res["fuzz"].items() if k != "examples"}), ""]
    lines += [f"- {e}" for e in res["fuzz"]["examples"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--learner-kills", type=int, default=20)
    p.add_argument("--server-kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    model = build_tiny_model(root / "tiny-model")
    res = {"seed": args.seed}
    for name, fn in (("fuzz", lambda: fuzz(root, model, rng)), ("disk_chat", lambda: disk_full_chat(root, model)),
                     ("server", lambda: server_kills(root, model, args.server_kills, rng)),
                     ("disk_cycle", lambda: disk_full_cycle(root, model)),
                     ("learner", lambda: learner_kills(root, model, args.learner_kills, rng))):
        t0 = time.monotonic()
        res[name] = fn()
        print(f"{name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    res["minutes"] = round((time.monotonic() - started) / 60, 1)
    res["summary"] = summary(res)
    cmd = "python bench/faults.py" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                             if v != p.get_default(k))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(res, indent=1, ensure_ascii=False, default=str))
    md = markdown(res, cmd)
    (RESULTS / "faults.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
