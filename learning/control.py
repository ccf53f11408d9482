"""Start, watch and cancel learning cycles from the chat process, without importing TRL.

`start_cycle(cfg)` spawns `python -m learning.learner --home ...` as its own process (so the chat
keeps answering while it trains) and returns the id of its job row; `status(db)` reads the latest
job; `cancel(db)` asks the running cycle to stop (within a second, learning/cancel.py); `AutoTrigger(cfg)` is a thread
that starts a cycle when enough new feedback has accumulated (thresholds from LearnConfig).
"""
import datetime as dt
import fcntl
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from learning import held
from learning.config import LearnConfig, load_learn_config
from learning.progress import LOCK_NAME  # the file learning.learner holds for a whole cycle
from store import jobs, open_db

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class AlreadyRunning(RuntimeError):
    """A learning cycle is running; only one runs at a time."""


def lock_held(home: Path) -> bool:
    """True while some process holds the learner lock (probing takes it for an instant)."""
    path = Path(home) / LOCK_NAME
    if not path.exists():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _running_job(db) -> dict | None:
    jobs.mark_orphans(db)
    job = jobs.latest_job(db)
    return job if job and job["status"] == "running" else None


def start_cycle(cfg, force: bool = False) -> str:
    """Spawn a learner process for one cycle; returns its job id. Raises AlreadyRunning."""
    db = open_db(cfg.db_path)
    running = _running_job(db)
    if lock_held(cfg.home) or running:
        raise AlreadyRunning("a learning cycle is already running" + (f" (job {running['id']})" if running else ""))
    job_id = jobs.start_job(db)
    logs = Path(cfg.home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "learning.learner", "--home", str(cfg.home), "--model", str(cfg.model),
           "--job-id", job_id] + (["--force"] if force else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    with open(logs / f"learner-{job_id}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=str(PROJECT_ROOT), start_new_session=True)
    jobs.update_job(db, job_id, pid=proc.pid)
    # Reap the child when it ends, so a finished learner is not a zombie that looks alive.
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-learner-{proc.pid}").start()
    return job_id


def status(db) -> dict | None:
    """The latest job: status, stage, progress 0..1, eta_s, losses [{step, loss, stage}], error,
    started_at, ended_at, result (None when no cycle ever ran). Dead jobs are marked failed first."""
    jobs.mark_orphans(db)
    job = jobs.latest_job(db)
    if job is None:
        return None
    keys = ("id", "status", "stage", "progress", "eta_s", "losses", "error", "started_at", "ended_at", "result")
    return {k: job.get(k) for k in keys}


def cancel(db) -> bool:
    """Ask the running cycle to stop (its CancelWatch interrupts it). False when none runs."""
    job = _running_job(db)
    if job is None:
        return False
    jobs.request_cancel(db, job["id"])
    return True


def new_feedback_items(db, after_id: str | None) -> int:
    """Answers with learnable feedback newer than `after_id`. One answer is one item: a correction
    arrives with a down vote (the API records both), and that is one lesson, not two.
    Job and feedback ids are both time-ordered ULIDs, so "since the last cycle" is id > job id."""
    sql = "SELECT count(DISTINCT turn_id) FROM feedback WHERE quarantined = 0"
    return db.execute(sql + (" AND id > ?" if after_id else ""), [after_id] if after_id else []).fetchone()[0]


def _oldest_new_feedback_at(db, after_id: str | None) -> str | None:
    sql = "SELECT min(created_at) FROM feedback WHERE quarantined = 0"
    return db.execute(sql + (" AND id > ?" if after_id else ""), [after_id] if after_id else []).fetchone()[0]


def _age_s(iso: str | None) -> float:
    if not iso:
        return float("inf")
    return (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(iso)).total_seconds()


def should_start(db, lcfg: LearnConfig) -> tuple[bool, str]:
    """The trigger rule: enough new feedback, or some new feedback has waited `interval_s`;
    never closer than min_gap_s to the previous cycle. Returns (start?, why).
    Something the user took back that the active version still holds counts as new feedback
    (learning/held.py `unacted`), waiting since the last cycle ended (when it was taken back is
    not recorded): the cycle drops it from the weights.
    A job row left 'running' by a learner that died (killed, crashed) is marked failed first:
    otherwise it would read as "a cycle is running" for ever and automatic learning would stop."""
    jobs.mark_orphans(db)
    last_ok = jobs.last_successful_job(db)
    latest = jobs.latest_job(db)
    after = last_ok["id"] if last_ok else None
    taken_back = len(held.unacted(db))
    given = new_feedback_items(db, after)
    new = given + taken_back
    if latest and latest["status"] == "running":
        return False, "a cycle is running"
    if latest and _age_s(latest["started_at"]) < lcfg.min_gap_s:
        return False, f"the last cycle started less than {lcfg.min_gap_s:.0f} s ago"
    what = f"{new} new feedback items" + (f" ({taken_back} taken back)" if taken_back else "")
    if new >= lcfg.min_new_feedback:
        return True, f"{what} (threshold {lcfg.min_new_feedback})"
    waited = [_age_s(_oldest_new_feedback_at(db, after))] if given else []
    if taken_back:  # since the last cycle ended; with no cycle on record, since ever
        waited.append(_age_s(last_ok and last_ok["ended_at"]))
    if waited and max(waited) >= lcfg.interval_s:
        return True, f"{what}, the oldest waiting {lcfg.interval_s:.0f} s or more"
    return False, f"{what}, waiting for {lcfg.min_new_feedback}"


class AutoTrigger:
    """A daemon thread that checks every `poll_s` seconds whether to start a cycle."""

    def __init__(self, cfg, poll_s: float = 30.0, learn_cfg: LearnConfig | None = None):
        self.cfg, self.poll_s, self.learn_cfg = cfg, poll_s, learn_cfg
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started: list[str] = []  # job ids this trigger started
        self.last_reason = ""

    def start(self) -> "AutoTrigger":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True, name="learn-autotrigger")
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def check(self) -> str | None:
        """One check; returns the job id if a cycle was started."""
        db = open_db(self.cfg.db_path)
        lcfg = self.learn_cfg or load_learn_config(db)
        go, self.last_reason = should_start(db, lcfg)
        if not go or lock_held(self.cfg.home):
            return None
        try:
            job_id = start_cycle(self.cfg)
        except AlreadyRunning:
            return None
        log.info("auto-started learning cycle %s: %s", job_id, self.last_reason)
        self.started.append(job_id)
        return job_id

    def _run(self):
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a failed check must not kill the trigger
                log.exception("auto-trigger check failed")
            self._stop.wait(self.poll_s)
