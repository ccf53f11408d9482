"""An on-disk cache of search-key vectors (`<home>/cache/recall-vectors.sqlite`), so that a restart
does not embed every correction again (10,000 corrections: about 90 s to embed, about a second to
read). Used by recall (assistant/memory.py); a cache, not the store."""
import hashlib
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class VectorCache:
    """Search-key vectors on disk (`<home>/cache/recall-vectors.sqlite`), so that a restart does
    not embed every correction again (10,000 corrections: about 90 s to embed, about a second to
    read). A row is reused only while its digest matches: the embedding model and the exact key
    texts, so a change to either re-embeds. A cache, not the store: any error reading or writing
    it is logged and recall goes on without it; deleting the file loses nothing."""

    def __init__(self, path: Path, model_id: str):
        self.path, self.model_id = Path(path), model_id
        self._broken = False

    def digest(self, keys: list[str]) -> str:
        return hashlib.sha256("\n".join([self.model_id, *keys]).encode()).hexdigest()[:32]

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=5)
        con.execute("CREATE TABLE IF NOT EXISTS vectors (feedback_id TEXT PRIMARY KEY, digest TEXT NOT NULL, "
                    "dim INTEGER NOT NULL, data BLOB NOT NULL)")
        return con

    def get(self, wanted: dict[str, str]) -> dict[str, np.ndarray]:
        """Cached vectors for {feedback_id: digest}, where the digest still matches."""
        if self._broken or not wanted or not self.path.exists():
            return {}
        ids, rows = list(wanted), []
        try:
            with closing(self._connect()) as con:
                for i in range(0, len(ids), 500):  # only the rows asked for: one new correction reads one
                    chunk = ids[i:i + 500]
                    rows += con.execute("SELECT feedback_id, digest, dim, data FROM vectors WHERE feedback_id "
                                        f"IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        except sqlite3.Error as e:
            self._fail("read", e)
            return {}
        return {fid: np.frombuffer(data, dtype=np.float32).reshape(-1, dim)
                for fid, digest, dim, data in rows if wanted.get(fid) == digest}

    def put(self, entries: list[tuple[str, str, np.ndarray]]) -> None:
        """Store (feedback_id, digest, vectors) rows, replacing older ones."""
        if self._broken or not entries:
            return
        try:
            with closing(self._connect()) as con, con:
                con.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                                [(fid, digest, v.shape[1], np.ascontiguousarray(v, dtype=np.float32).tobytes())
                                 for fid, digest, v in entries])
        except sqlite3.Error as e:
            self._fail("write", e)

    def _fail(self, what: str, error: Exception) -> None:
        log.warning("recall vector cache %s: could not %s it (%s); recall embeds without it", self.path, what, error)
        self._broken = True
