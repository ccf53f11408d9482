"""A learning cycle's lock and progress: one cycle at a time, and where it stands.

Contract: `cycle_lock(home)` holds an exclusive `fcntl.flock` on `home/learner.lock` for a block
(the OS releases it if the process dies) or raises `CycleRunning` at once; `Tracker` writes the
stage, overall progress (0..1, by `STAGES`), ETA and losses to the job row, so the page can
show them from another process. Imports no training library: learning/control.py and the page
read these names without loading torch.
"""
import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable

from store import jobs

LOCK_NAME = "learner.lock"
# Share of the whole cycle each stage takes (for the progress bar and the ETA).
STAGES = {"preparing data": (0.0, 0.05), "SFT": (0.05, 0.4), "DPO": (0.4, 0.5),
          "habit": (0.5, 0.6), "experts": (0.6, 0.78), "evaluating": (0.78, 0.97), "gate": (0.97, 1.0)}


class CycleRunning(RuntimeError):
    """Another learning cycle holds the lock."""


@contextlib.contextmanager
def cycle_lock(home: Path):
    """Hold the learner lock for the block, or raise CycleRunning at once."""
    home.mkdir(parents=True, exist_ok=True)
    fh = open(home / LOCK_NAME, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise CycleRunning(f"a learning cycle is already running (pid {holder})") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


class Tracker:
    """Writes stage, overall progress, ETA and losses to the job row (and a caller's callback)."""

    def __init__(self, db, job_id: str, progress: Callable[[dict], None] | None = None):
        self.db, self.job_id, self.callback = db, job_id, progress
        self.start, self.losses, self.stage_name = time.monotonic(), [], "preparing data"
        self._last_write = 0.0
        self.ranges = dict(STAGES)

    def skip(self, name: str) -> None:
        """Stage `name` has nothing to do (the shared adapter's SFT when every correction has its
        expert, say): the stages after it share its part of the bar, in proportion to theirs, so
        the progress and the ETA stay honest. Called where `name` would start."""
        order = list(STAGES)
        start = self.ranges[name][0]
        later = [s for s in order[order.index(name) + 1:] if self.ranges[s][1] > self.ranges[s][0]]
        width = sum(self.ranges[s][1] - self.ranges[s][0] for s in later)
        self.ranges[name] = (start, start)
        at = start
        for s in later:  # laid out again over [start, 1]
            share = (self.ranges[s][1] - self.ranges[s][0]) / width * (1.0 - start) if width else 0.0
            self.ranges[s], at = (at, at + share), at + share

    def stage(self, name: str, fraction: float = 0.0, loss: float | None = None, force: bool = True):
        self.stage_name = name
        lo, hi = self.ranges[name]
        overall = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)
        elapsed = time.monotonic() - self.start
        eta = elapsed / overall - elapsed if overall > 0.02 else None
        state = {"stage": name, "progress": round(overall, 4), "eta_s": None if eta is None else round(eta, 1),
                 "loss": loss}
        if force or time.monotonic() - self._last_write > 1.0:  # the row is polled, not streamed
            jobs.update_job(self.db, self.job_id, stage=name, progress=state["progress"], eta_s=state["eta_s"],
                            losses=self.losses)
            self._last_write = time.monotonic()
        if self.callback:
            self.callback(state)

    def train_step(self, stage: str, step: int, total: int, loss: float | None):
        if total == 0:  # the trainer has nothing to do in this stage (learning/train.py `Progress`)
            self.skip(stage)
            return
        if loss is not None:  # reported once per logged step (logging_steps)
            self.losses.append({"stage": stage, "step": step, "loss": round(loss, 4)})
        self.stage(stage, step / max(total, 1), loss, force=step == total)

    def evaluation(self, fraction: float):
        self.stage("evaluating", fraction, force=fraction >= 1.0)
