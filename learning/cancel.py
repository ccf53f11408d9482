"""Stop a learning cycle within a second of a cancel, wherever it is.

Why: the trainers look for a cancel between two steps (learning/train.py), and one step on a CPU
shared with the chat, or a stage without steps (data preparation, loading the model,
evaluation), can run for tens of seconds: a cancel in the page took 28 s. `CancelWatch` reads
the job row from its own thread every POLL_S and, once a cancel is asked, raises `Interrupt` in
the cycle's thread at its next Python bytecode (CPython's PyThreadState_SetAsyncExc): within a
poll plus the torch operation under way, milliseconds on the models this runs.

Safe by the cycle's own design: before the gate decides, a cycle changes nothing visible but
atomically (the adapter directory appears by one rename, rows are written in transactions;
bench/faults.py kills the learner at random moments and finds nothing half-written), and an
interrupt is milder than a kill: `finally` blocks run. The decision and promotion are never
interrupted: the cycle calls `disarm()` before them (they take milliseconds).
"""
import ctypes
import logging
import threading

from store import jobs, open_db

log = logging.getLogger(__name__)
POLL_S = 0.25
REFIRE_S = 2.0  # an interrupt that library code swallowed is raised again this much later


class Interrupt(BaseException):
    """Raised in the cycle's thread when its job is cancelled. A BaseException, so code that
    catches Exception (a fallback in data preparation, say) does not swallow it."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedule `exc` in the thread (None: take back one scheduled and not raised yet)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc else None)


class CancelWatch:
    """Watch job `job_id` of the database at `db_path` for a cancel while armed; interrupt the
    thread that called `start()`. `disarm()` stops it for good: once it returns, no Interrupt
    is pending or will come."""

    def __init__(self, db_path, job_id: str, poll_s: float = POLL_S):
        self.db_path, self.job_id, self.poll_s = db_path, job_id, poll_s
        self._lock = threading.Lock()
        self._armed = False
        self._stop = threading.Event()
        self._target: int | None = None

    def start(self) -> "CancelWatch":
        self._target, self._armed = threading.get_ident(), True
        threading.Thread(target=self._watch, daemon=True, name=f"cancel-watch-{self.job_id}").start()
        return self

    def disarm(self) -> None:
        """Called by the cycle's thread. An Interrupt that arrives while it runs is dropped: the
        cycle is past the point where a cancel counts, or already stopping for another reason."""
        while True:
            try:
                with self._lock:
                    was_armed, self._armed = self._armed, False
                    self._stop.set()
                    if was_armed and self._target is not None:
                        _raise_in(self._target, None)  # fired just now and not raised yet: taken back
                return
            except Interrupt:  # raised before the flags were down: once more, it cannot come again
                continue

    def _watch(self) -> None:
        db = None
        wait = self.poll_s
        while not self._stop.wait(wait):
            wait = self.poll_s
            try:
                db = db or open_db(self.db_path)
                asked = jobs.cancel_requested(db, self.job_id)
            except Exception as e:  # noqa: BLE001 - a busy database: the trainers' own check still works
                log.warning("could not read the cancel flag of job %s: %s", self.job_id, e)
                continue
            if not asked:
                continue
            with self._lock:
                if not self._armed:
                    return
                log.info("job %s cancelled: interrupting the cycle", self.job_id)
                _raise_in(self._target, Interrupt)
            wait = REFIRE_S
