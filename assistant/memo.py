"""Values worth computing once: the last few kept, the rest computed again when asked.

Why: a chat turn asks the same things more than once (an embedded phrase for the same-thing
check of every candidate, the chat model's likelihood for recall and then routing, a pair's
supersession shifts when a correction is saved and again when offering what it may replace),
and each costs an embedding or a forward pass. A value never changes for its key.

Contract: `Kept(size)`; `.values(keys, compute, store=None)` -> one value per key, in order;
`compute(missing_keys)` -> their values, asked once per call for the keys neither kept nor in
`store` (each distinct key once). Thread-safe; the computation runs outside the lock. With
`store` (a dict the caller keeps, e.g. between processes) that dict is read and filled instead,
without a limit.
"""
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence


class Kept:
    def __init__(self, size: int):
        self.size = size
        self._kept: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def values(self, keys: Sequence[Hashable], compute: Callable[[list], Sequence],
               store: dict | None = None) -> list:
        keys = list(keys)
        with self._lock:
            where = self._kept if store is None else store
            known = {k: where[k] for k in keys if k in where}
        todo = [k for k in dict.fromkeys(keys) if k not in known]
        if todo:
            known.update(zip(todo, compute(todo), strict=True))
            with self._lock:
                where.update((k, known[k]) for k in todo)
                while where is self._kept and len(where) > self.size:
                    where.popitem(last=False)
        return [known[k] for k in keys]

    def __len__(self) -> int:
        return len(self._kept)
