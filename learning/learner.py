"""One learning cycle, read top to bottom:

    lock -> job row -> data -> train (SFT, DPO) -> register candidate -> evaluate -> gate
         -> record decision -> activate or reject -> finish job

Only one cycle runs at a time: an exclusive `fcntl.flock` on `home/learner.lock` (the OS
releases it if the process dies). Every stage is written to the job row (stage, progress 0..1,
eta_s, losses), so the UI can show it from another process. A crash or kill leaves nothing
half-written visible: the adapter dir appears by an atomic rename, stale temp dirs are removed
and dead jobs marked failed at the next start. Without the gate modules the candidate stays a
candidate: nothing is ever promoted without the gate.

Run in its own process by `learning.control.start_cycle` (`python -m learning.learner --home H`),
or in the foreground by `assistant learn` (`cmd_learn`). Multi-GPU: `accelerate launch -m
learning.learner --home H` (see learning/train.py).
"""
import argparse
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable

from learning import datasets, held
from learning.cancel import CancelWatch, Interrupt
from learning.config import LearnConfig, load_learn_config, shape_is_stored
from learning.progress import CycleRunning, Tracker, cycle_lock
from learning.recovery import drop_abandoned_candidates
from learning.repair import excuse_relearning, lost_corrections, repair_lost
from learning.train import Cancelled, TrainJob, adapter_shape, clean_stale_dirs, train_candidate
from store import adapters, jobs, open_db
from store.ids import new_id
from store.manifest import read_manifest

log = logging.getLogger(__name__)


def accepted_feedback(db) -> set[str]:
    """Feedback learned by the active version and its ancestors (what the live adapter knows)."""
    ids, version = set(), adapters.active_version(db)
    while version is not None:
        ids.update(adapters.lineage_feedback(db, version))
        version = adapters.get_adapter(db, version)["parent_version"]
    return ids


def pending_feedback(db) -> set[str]:
    """Feedback in candidates still waiting for a decision (the gate was unavailable): not new."""
    return {f for a in adapters.list_adapters(db) if a["status"] == "candidate"
            for f in adapters.lineage_feedback(db, a["version"])}


def split_new(data: datasets.LearnData, learned: set[str], lcfg: LearnConfig, seed: int,
              pending: frozenset = frozenset()):
    """(new SFT rows, new pairs, replay sample of earlier accepted SFT rows)."""
    def is_new(r):
        return not set(r["feedback_ids"]) <= learned | pending

    sft_new = [r for r in data.sft if is_new(r)]
    pairs_new = [r for r in data.pairs if is_new(r)]
    old = [r for r in data.sft if set(r["feedback_ids"]) <= learned]
    k = min(len(old), math.ceil(lcfg.replay_fraction * max(len(sft_new), 1)))
    return sft_new, pairs_new, random.Random(seed).sample(old, k)


def refits(data: datasets.LearnData, lcfg: LearnConfig) -> bool:
    """Does this cycle train a fresh LoRA on all the data (LearnConfig.refit_corrections)?"""
    return 0 < sum(r["source"] == "correction" for r in data.sft) <= lcfg.refit_corrections


def _gate():
    """The gate modules, or None while they are not installed (then nothing is promoted)."""
    try:
        from learning.evaluate import evaluate
        from learning.gate import decide, load_gate_config
    except ImportError as e:
        log.warning("gate unavailable (%s): the candidate stays a candidate", e)
        return None
    return evaluate, decide, load_gate_config


def run_cycle(cfg, learn_cfg: LearnConfig | None = None, force: bool = False,
              progress: Callable[[dict], None] | None = None, job_id: str | None = None,
              embedder=None) -> dict:
    """Run one cycle; returns its result (also stored on the job row). Raises CycleRunning if
    another cycle runs, Cancelled if cancelled, any training error after recording it."""
    from assistant.config import DEFAULT_SYSTEM_PROMPT
    from assistant.model import resolve_model
    from assistant.serving import build_served
    from store.settings import get_setting

    db = open_db(cfg.db_path)
    with cycle_lock(cfg.home):
        jobs.mark_orphans(db)
        dropped = drop_abandoned_candidates(db)  # after mark_orphans: their dead jobs read failed
        if dropped:
            log.info("rejected candidates whose cycle died before the gate: %s", dropped)
        clean_stale_dirs(cfg.adapters_dir, {a["path"] for a in adapters.list_adapters(db)})
        job_id = job_id or jobs.start_job(db)
        jobs.update_job(db, job_id, pid=os.getpid(), status="running")
        track = Tracker(db, job_id, progress)
        watch = CancelWatch(cfg.db_path, job_id).start()  # a cancel stops any stage before the gate
        try:
            # ---- data -------------------------------------------------------------------
            track.stage("preparing data")
            t0 = time.perf_counter()
            lcfg = learn_cfg or load_learn_config(db)
            system = get_setting(db, "system_prompt", DEFAULT_SYSTEM_PROMPT)
            embedder = embedder or datasets.default_embedder()  # one embedder for dedup and the scope
            data = datasets.build(db, lcfg, system_prompt=system, embedder=embedder)
            learned = accepted_feedback(db)
            sft_new, pairs_new, replay = split_new(data, learned, lcfg, lcfg.seed, pending_feedback(db))
            taken_back = held.taken_back_now(db)
            seen = {"taken_back_seen": sorted(i["feedback_id"] for i in taken_back)}  # see held.unacted
            if not sft_new and not pairs_new:
                if force:
                    sft_new, pairs_new, replay = data.sft, data.pairs, []
                elif not held.unacted(db, taken_back):
                    return _finish(db, job_id, "succeeded", {"skipped": True, "message": "nothing new to learn "
                                   "since the active version and pending candidates", "data": data.counts(), **seen})
                elif not data.sft and not data.pairs:
                    return _finish(db, job_id, "succeeded", {"skipped": True, "data": data.counts(), **seen,
                                   "message": "everything the active version learned was taken back: roll back "
                                   "to the base model to stop it answering from those weights"})
                else:  # a cycle for what was taken back: it drops their experts, and a refit their rows
                    replay = replay or data.sft[:1]  # a continued shared adapter needs a row to step on
            new_ids = sorted({f for r in sft_new + pairs_new for f in r["feedback_ids"]})
            refit = refits(data, lcfg)
            sft_rows, pairs = (data.sft, data.pairs) if refit else (sft_new + replay, pairs_new)
            data_s = time.perf_counter() - t0

            # ---- train ------------------------------------------------------------------
            parent = adapters.active_adapter(db)
            if parent and learn_cfg is None and not shape_is_stored(db):
                # A home keeps the LoRA shape its versions were trained with: a later default
                # (r=16 before r=64) must not make its active adapter an incompatible parent.
                lcfg = lcfg.with_shape(adapter_shape(parent["path"]))
            version = adapters.next_version(db)
            base = resolve_model(cfg.model, cfg.models_dir)
            path = train_candidate(TrainJob(
                base_path=base, adapters_dir=cfg.adapters_dir, version=version, sft_rows=sft_rows,
                pairs=pairs, lcfg=lcfg, parent_version=parent and parent["version"],
                parent_path=parent and parent["path"], from_parent=not refit, feedback_ids=new_ids,
                data_hash=data.data_hash(),
                progress=track.train_step, should_cancel=lambda: jobs.cancel_requested(db, job_id),
                system_prompt=system, cache_dir=cfg.home / "cache",
                corrections=([r for r in data.sft if r["source"] == "correction"], data.pairs),
                superseded=data.superseded, embedder=embedder,
                extra_meta={"data": data.counts(), "refit": refit,
                            "replayed_rows": len(data.sft) - len(sft_new) if refit else len(replay),
                            "data_s": round(data_s, 2),
                            "superseded": data.superseded, "job_id": job_id,
                            # every feedback id its rows carry: a refit relearns old feedback it does
                            # not link (learning/held.py: what a rollback to it brings back)
                            "trained_on": sorted({f for r in sft_rows + pairs for f in r.get("feedback_ids", ())})}))
            manifest = read_manifest(path)
            n_corr = sum(r["source"] == "correction" for r in sft_new)
            adapters.register_candidate(db, version, str(path), parent and parent["version"], manifest.to_dict(), new_ids,
                                        n_corrections=n_corr, n_votes=len(new_ids) - n_corr)

            # ---- evaluate and gate ------------------------------------------------------
            result = {"version": version, "parent_version": parent and parent["version"], **seen,
                      "feedback_ids": len(new_ids), "timings": {"data_s": round(data_s, 2), **manifest.timings}}
            gate = _gate()
            if gate is None:
                result.update(status="candidate", message=f"v{version} trained; the gate is not available, "
                              "so it stays a candidate (promote it by hand)")
                return _finish(db, job_id, "succeeded", result)
            evaluate, decide, gate_config = gate
            track.stage("evaluating")
            served = build_served(cfg, embedder=embedder)  # one model and scope for both evaluations
            ev = evaluate(cfg, db, version, parent and parent["version"], new_ids, progress=track.evaluation,
                          model=served.model, scope=served.scope)
            fix = repair_lost(db, path, parent and parent["path"], lost_corrections(ev["items"]))
            if fix:  # the replies of unchanged weights come from the cache: only the changed routes are new
                served.scope.forget(path)
                adapters.set_meta(db, version, read_manifest(path).to_dict())
                ev = evaluate(cfg, db, version, parent and parent["version"], new_ids, model=served.model,
                              scope=served.scope)
                excuse_relearning(ev["candidate"], ev["items"], fix.relearning)
            track.stage("gate")
            watch.disarm()  # the decision and what follows take milliseconds: never half done
            decision = decide(ev["candidate"], ev["incumbent"], gate_config(db))
            if fix.kept:
                decision.reasons.append(f"kept v{parent['version']}'s expert for {len(fix.kept)} earlier "
                                        f"correction(s) the retrained weights lost")
            adapters.set_metrics(db, version, ev["candidate"])
            adapters.record_decision(db, new_id(), version, parent and parent["version"], decision.passed,
                                     list(decision.reasons), {"candidate": ev["candidate"],
                                                              "incumbent": ev["incumbent"], "items": ev["items"]})
            not_learned = [it["id"] for it in ev["items"] if it.get("kind") == "taught" and not it["candidate"]["passed"]]
            if decision.passed:
                adapters.unlearn_feedback(db, version, not_learned)
                adapters.activate(db, version)
            else:
                adapters.reject(db, version)
            verdict = "went live" if decision.passed else "did not go live: rejected by the gate"
            result.update(status="active" if decision.passed else "rejected", reasons=list(decision.reasons),
                          not_learned=not_learned if decision.passed else [],
                          message=f"v{version} {verdict}: " + "; ".join(decision.reasons),
                          weights_deleted=_prune(db, lcfg.keep_versions))
            return _finish(db, job_id, "succeeded", result)
        except (Cancelled, Interrupt) as e:
            watch.disarm()
            _cancelled(db, job_id, str(e) if isinstance(e, Cancelled) else f"cancelled during {track.stage_name}")
            if isinstance(e, Interrupt):
                raise Cancelled(f"cancelled during {track.stage_name}") from None
            raise
        except BaseException as e:
            watch.disarm()
            _finish(db, job_id, "failed", {"message": f"{type(e).__name__}: {e}"}, error=f"{type(e).__name__}: {e}")
            raise
        finally:
            watch.disarm()


def _cancelled(db, job_id: str, what: str) -> None:
    """Record a cancelled cycle as the user's choice, not an error, and reject a candidate it
    had already registered (its evaluation was cut short) instead of leaving it for the next cycle."""
    _finish(db, job_id, "cancelled", {"message": f"{what}: nothing changed, the previous version keeps answering"})
    dropped = drop_abandoned_candidates(db)
    if dropped:
        log.info("cancelled cycle's candidates rejected: %s", dropped)


def _prune(db, keep: int | None) -> list[int]:
    """Delete old versions' weights (learning/pruning.py). The cycle has succeeded by now: a
    failure here (a read-only file, say) is logged and retried after the next cycle."""
    if keep is None:
        return []
    from learning.pruning import prune_weights

    try:
        return prune_weights(db, keep)
    except OSError as e:
        log.warning("could not delete old versions' weights: %s", e)
        return []


def _finish(db, job_id, status, result, error=None) -> dict:
    jobs.finish_job(db, job_id, status, error=error, result=result)
    return {"job_id": job_id, "job_status": status, **result}


def yield_to_chat(cfg) -> None:
    """Share the machine with the server, set in the learner's own process (spawned by
    learning.control or `assistant learn`): the cycle's torch thread budget
    (Config.learner_threads), so the server's replies keep theirs, and a lower CPU priority
    (Config.learner_niceness), so a reply wins a core the two contend for (the server's recall, its
    HTTP threads, the learner's own helper threads) and the cycle waits the few seconds instead."""
    import torch

    torch.set_num_threads(cfg.learner_threads)
    try:
        os.nice(cfg.learner_niceness)
    except OSError as e:  # not allowed here: the thread budget alone shares the cores
        log.warning("could not lower the learner's priority: %s", e)
    log.info("learning with %d torch thread(s), niceness %d", cfg.learner_threads, os.nice(0))


def cmd_learn(cfg, args) -> int:
    """`assistant learn [--force]`: one cycle in the foreground with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", bar_format="{desc:<16}{percentage:3.0f}%|{bar}| {postfix}")
    last_loss = {}

    def show(state):
        bar.set_description_str(state["stage"])
        bar.n = int(state["progress"] * 100)
        if state.get("loss") is not None:
            last_loss[state["stage"]] = state["loss"]
        eta = f"eta {state['eta_s']:.0f}s" if state.get("eta_s") is not None else ""
        loss = f"loss {last_loss[state['stage']]:.3f}" if state["stage"] in last_loss else ""
        bar.set_postfix_str(f"{loss} {eta}".strip())
        bar.refresh()

    yield_to_chat(cfg)
    try:
        result = _run_after_running_cycle(cfg, getattr(args, "force", False), show, bar)
    except Cancelled as e:
        bar.close()
        print(f"cancelled: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the CLI's contract: one line and a non-zero exit
        bar.close()
        print(f"learning cycle failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    bar.n = 100
    bar.close()
    print(result["message"])
    return 0


def _run_after_running_cycle(cfg, force: bool, show, bar) -> dict:
    """A cycle already running (started by the auto-trigger or the UI) is waited for, then ours runs:
    `assistant learn` always returns after a cycle that includes everything taught so far."""
    while True:
        try:
            return run_cycle(cfg, force=force, progress=show)
        except CycleRunning as e:
            bar.set_description_str("waiting")
            bar.set_postfix_str(str(e))
            bar.refresh()
            time.sleep(2.0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the background learner process spawned by learning.control."""
    from assistant.config import Config

    p = argparse.ArgumentParser(prog="python -m learning.learner")
    p.add_argument("--home", required=True)
    p.add_argument("--model")
    p.add_argument("--job-id")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = Config(home=Path(args.home).expanduser())
    if args.model:
        cfg.model = args.model
    yield_to_chat(cfg)
    try:
        result = run_cycle(cfg, force=args.force, job_id=args.job_id)
    except Cancelled as e:  # the user's choice, already recorded on the job row
        log.info("%s", e)
        return 1
    except CycleRunning as e:
        if args.job_id:  # the row start_cycle made for us must not stay 'running'
            jobs.finish_job(open_db(cfg.db_path), args.job_id, "failed", error=str(e))
        log.error("%s", e)
        return 2
    except Exception:  # noqa: BLE001 - already recorded on the job row
        log.exception("learning cycle failed")
        return 1
    log.info("%s", result.get("message"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
