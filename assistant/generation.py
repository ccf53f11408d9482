"""The thread that runs a served model's generations, and what one generation produced.

Contract: `GenerationWorker().submit(fn)` runs `fn()` on one long-lived thread, in the order
submitted, and returns an event set once it has returned; `Generation` is filled in as a
stream runs (text, token counts, timings, the adapter version that answered). The generation
itself is ServedModel's (assistant/model.py).
"""
import logging
import queue
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class GenerationWorker:
    """One long-lived thread that runs every streamed generation of a ServedModel, in order.
    Why not a thread per reply: on a GPU, `generate` in a freshly started thread ran at 15-17
    tokens/s against 46-52 in a thread that had generated before (the same 135M model shape on
    an H200, bench/results/gpu-threads.md); on the CPU either is the same. Replies were serialised by the
    model's lock anyway, so one worker changes no ordering."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, fn) -> threading.Event:
        """Run `fn()` on the worker (it must not raise); the event is set when it has returned."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="generate")
                self._thread.start()
        finished = threading.Event()
        self._jobs.put((fn, finished))
        return finished

    def _run(self) -> None:
        while True:
            fn, finished = self._jobs.get()
            try:
                fn()
            except BaseException:  # noqa: BLE001 - a job reports its own errors; the worker lives on
                log.exception("generation job failed")
            finally:
                finished.set()


@dataclass
class Generation:
    """What one generation produced; filled in as the stream runs."""
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    finish_reason: str = "stop"
    adapter_version: int | None = None
    pieces: list[str] = field(default_factory=list)

