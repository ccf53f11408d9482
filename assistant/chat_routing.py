"""Which weights answer a chat turn: the active version from the registry, and within it the
adapter, expert, habit adapter or base weights its scope routes a prompt to.

Contract: `AdapterRouting` is a mixin of `assistant.chat.ChatService`; it reads the host's `db`
(a store connection), `model` (the ServedModel), `scope` (assistant.scope.AdapterScope or None),
`memory` (assistant.memory.Memory or None: the search keys of corrections taken back) and
`_bad_versions` (served-model key -> why it failed to load; each key is tried once).
`serving_adapter()` -> (version, path) of the active version, loaded, or the last good one
(None, None: the base model); `route(version, path, user_message)` -> the served model's key and
the adapter path that answer the prompt (`route_from`: and the feedback ids its match came
from), loading a habit adapter or an expert on first use and falling back (an expert to the
version, a habit to the base) when it cannot be loaded; a prompt matched to a correction taken
back since gives (None, None). `watch_adapters()` preloads each newly activated version in a
background thread and returns the function that stops it. `route_kind(key)` names a key as
`Turn.answered_by` keeps it. The watcher also preloads the version's experts into the served
model's free room (`ServedModel.preload`). Nothing here raises on a broken adapter, a missing
embedding model or a locked database: each is logged and the chat answers with what it can.

Separate from assistant/chat.py (the prompt, the turn, streaming and logging it) because the
choice of weights is its own concern with its own failure handling, and chat.py had outgrown
one module.
"""
import contextlib
import logging
import sqlite3
import threading
import time

from assistant.errors import AdapterLoadError
from assistant.model import key_version
from assistant.scope import EXPERT_KEY
from store import adapters, feedback

log = logging.getLogger(__name__)

PRELOAD_QUIET_S = 0.5
"""A preload starts only when no chat turn is in flight and none began or ended this long ago: a
turn takes the model several times (routing's reranker, an expert's load, generation) and a preload
between two of them made it wait for each (TTFT 3.6-4.4 s after a promotion, bench/HISTORY.md)."""


class TurnActivity:
    """Chat turns in flight, so that background work on the served model (preloading experts)
    waits for a quiet moment instead of taking the model between a turn's steps."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open = 0
        self._last = float("-inf")

    def touch(self) -> None:
        """A turn is about to start (recall and routing come before its stream opens)."""
        with self._lock:
            self._last = time.monotonic()

    @contextlib.contextmanager
    def turn(self):
        with self._lock:
            self._open += 1
            self._last = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                self._last = time.monotonic()

    def wait_quiet(self, quiet_s: float, stop: threading.Event | None = None) -> bool:
        """Return once no turn is open and none began or ended in the last `quiet_s`; False when
        `stop` was set meanwhile."""
        stop = stop or threading.Event()
        while True:
            with self._lock:
                wait = 0.05 if self._open else self._last + quiet_s - time.monotonic()
            if wait <= 0:
                return True
            if stop.wait(wait):
                return False


class AdapterRouting:
    """ChatService's choice of weights; the host sets `db`, `model`, `scope`, `_bad_versions` and
    `activity` (a TurnActivity its turns report to)."""

    def serving_adapter(self) -> tuple[int | None, str | None]:
        """The active version from the registry; if it cannot be loaded, the last good one."""
        row = adapters.active_adapter(self.db)
        if row is None:
            return None, None
        version = row["version"]
        if version in self._bad_versions:
            return key_version(self.model.current), None
        try:
            self.model.load_adapter(version, row["path"])
        except AdapterLoadError as e:
            self._bad_versions[version] = str(e)
            log.error("%s; still serving %s", e,
                      "base model" if self.model.current is None else f"v{key_version(self.model.current)}")
            return key_version(self.model.current), None
        return version, row["path"]

    def route(self, version: int | None, path: str | None, user_message: str) -> tuple:
        """`route_from` without the feedback ids: the served model's key and the adapter's path."""
        return self.route_from(version, path, user_message)[:2]

    def route_from(self, version: int | None, path: str | None, user_message: str) -> tuple:
        """The adapter answers only prompts within its scope; its habit adapter, or else the base
        weights, answer the rest (assistant/scope.py). Without a scope, or when it cannot be
        computed, the adapter answers. Returns the served model's key, the adapter's path and the
        feedback ids of the learned question the prompt matched (AdapterScope.route_from)."""
        if version is None or self.scope is None:
            return version, path, ()
        path = path or (adapters.get_adapter(self.db, version) or {}).get("path")
        try:
            gone = self.memory.taken_back_keys() if self.memory is not None else None
            key, routed, learned_from = self.scope.route_from(version, path, user_message, taken_back=self._taken_back,
                                                              taken_back_keys=gone)
        except Exception as e:  # noqa: BLE001 - a missing embedding model must not stop the chat
            log.warning("adapter scope unavailable (%s): v%s answers every prompt", e, version)
            return version, path, ()
        if key is None or key == version or key in self.model.loaded:
            return key, routed, learned_from
        # a habit adapter or an expert (assistant/scope.py): load it now, or fall back: an
        # expert's prompt to the version, a habit's to the base (tried once per key, like versions)
        fallback = (None, None, ()) if key == (version, "habit") else (version, path, learned_from)
        if key not in self._bad_versions:
            try:
                self.model.load_adapter(key, routed)
                return key, routed, learned_from
            except AdapterLoadError as e:
                self._bad_versions[key] = str(e)
                log.error("%s; answering with %s", e, "the base model" if fallback[0] is None else f"v{version}")
        return fallback

    def _taken_back(self, feedback_ids: list[str]) -> bool:
        """Was the feedback a prompt's routing match came from taken back since (deleted, marked
        don't-learn, quarantined, or replaced by a later correction)? Then the base weights answer
        at once (recall has the latest correction), until the next version drops it from its
        weights (learning/experts.py; a take-back starts that cycle). Per correction, not per
        adapter: the other corrections of an expert's group keep their weights."""
        try:
            gone = feedback.taken_back(self.db, feedback_ids)
        except sqlite3.Error as e:  # a locked or broken database must not stop the chat
            log.warning("could not check the feedback %s (%s); the adapter answers", feedback_ids, e)
            return False
        if gone:
            log.info("the routing match came from feedback taken back since (%s): the base model answers",
                     ", ".join(gone))
        return bool(gone)

    def watch_adapters(self, interval_s: float = 0.1):
        """Preload each newly activated adapter (and embed its scope) in the background, so the
        first request after a promotion does not pay the disk read (the switch itself still
        happens per request, between requests). Returns a function that stops the watcher."""
        stop = threading.Event()

        def run():
            seen = object()
            while not stop.wait(interval_s):
                try:
                    version = adapters.active_version(self.db)
                    if version != seen:
                        _, path = self.serving_adapter()  # loads (once) without switching
                        if self.scope is not None and path:
                            self.scope.warm(path)
                            self._preload_experts(version, path, stop)
                        seen = version
                except Exception:  # noqa: BLE001 - a watcher must outlive a bad poll
                    log.exception("adapter watcher")

        threading.Thread(target=run, daemon=True, name="adapter-watch").start()
        return stop.set

    def _preload_experts(self, version: int, path: str, stop: threading.Event | None = None) -> None:
        """Load the new version's experts into the served model's free room (ServedModel.preload),
        one at a time and only while no chat turn is in flight (`PRELOAD_QUIET_S`), so a turn
        waits for at most one: the first prompt routed to each would otherwise pay peft's load
        (about 0.5 s; bench/experts.py), and a busy chat loads what it asks for itself. One that
        fails is left to `route`, which falls back and remembers it. Anything else that goes wrong
        only ends the preloading (it saves time, nothing depends on it): the watcher must not
        retry it every poll. `stop` (the watcher's) ends the wait for a quiet moment."""
        try:
            for key, expert_path in self.scope.experts(version, path):
                if not self.activity.wait_quiet(PRELOAD_QUIET_S, stop):
                    return
                if adapters.active_version(self.db) != version:
                    return  # another promotion came first: the watcher's next poll preloads that one
                if key in self._bad_versions:
                    continue
                try:
                    if not self.model.preload(key, expert_path) and key not in self.model.loaded:
                        return  # no free room left
                except AdapterLoadError as e:
                    self._bad_versions[key] = str(e)
                    log.error("%s; its prompts are answered by v%s", e, version)
        except Exception as e:  # noqa: BLE001 - see above
            log.warning("preloading v%s's experts stopped: %s", version, e)


def route_kind(key) -> str | None:
    """What a served-model key (`route`'s) names, in the words `Turn.answered_by` keeps."""
    if key is None:
        return None
    if not isinstance(key, tuple):
        return "adapter"
    return "expert" if str(key[1]).startswith(EXPERT_KEY) else "habit"
