"""Torch threads for the server's replies, shared with a learning cycle running beside it.

The learner is its own process with `Config.learner_threads` (every core but one by default).
If replies kept `Config.chat_threads` (every core by default) while it trains, the two
processes would ask for more threads than there are cores, and on 2 cores both slowed many
times over (issue 29: one expert took 304 s instead of 17.8 s). So while a cycle runs, a reply
uses the cores the learner leaves, and all of `chat_threads` again once it is done
(bench/cosched.py measures both sides).
"""
import logging
import threading

from assistant.config import Config, cores
from store import jobs

log = logging.getLogger(__name__)


class ThreadBudget:
    def __init__(self, cfg: Config):
        self.idle = cfg.chat_threads
        self.during_cycle = max(1, min(cfg.chat_threads, cores() - cfg.learner_threads))
        self._lock = threading.Lock()

    def threads_for(self, db) -> int:
        return self.during_cycle if jobs.learner_running(db) else self.idle

    def apply(self, db) -> int:
        """Set torch's thread count for the next reply; returns it. A database that cannot be
        read (locked, full) leaves the count as it is: the reply matters more."""
        import torch

        try:
            n = self.threads_for(db)
        except Exception as e:  # noqa: BLE001 - never fail a reply over its thread count
            log.warning("could not tell whether a cycle runs (%s): keeping %d threads", e, torch.get_num_threads())
            return torch.get_num_threads()
        with self._lock:
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
        return n
