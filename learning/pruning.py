"""Disk: deleting the weight files of old adapter versions, keeping their records.

Contract: `versions_to_prune(db, keep)` -> the versions whose weights may go (every one that still
has weights except the newest `keep`, the active one, its parent and candidates);
`prune_weights(db, keep)` deletes those versions' weight files and returns the versions;
`delete_weights(row, reason)` deletes one version's (an adapter row from store.adapters), its
WEIGHTS_DELETED marker (with `reason`) written first, so an interrupted delete leaves a version
that refuses to load (AdapterWeightsDeleted), never a half-deleted one that loads.
`weights_text(path)` is the table's "deleted" or size on disk. A pruned version keeps its
directory (adapter_config.json, meta.json) and its rows in the store. Raises OSError when a file
cannot be deleted; the callers (learning/learner.py, learning/recovery.py, `assistant adapters
prune`) decide whether that stops them.

Separate from learning/versions.py (the table, promotion and rollback, which read the store) as
the one place that deletes files from a version's directory.
"""
import json
import logging
from pathlib import Path

from store import adapters
from store.db import now_iso
from store.manifest import WEIGHT_FILES, WEIGHTS_DELETED, weights_deleted

log = logging.getLogger(__name__)


def versions_to_prune(db, keep: int) -> list[int]:
    """Versions whose weights may go: every one that still has weights except the newest `keep`,
    the active one, its parent (the default rollback target) and candidates (a decision may
    still be pending)."""
    return [r["version"] for r in _prunable(db, keep)]


def _prunable(db, keep: int) -> list[dict]:
    """The adapter rows `versions_to_prune` names."""
    rows = adapters.list_adapters(db)
    active = adapters.active_adapter(db)
    kept = {r["version"] for r in rows[-keep:]} if keep > 0 else set()
    if active is not None:
        kept |= {active["version"], active["parent_version"]}
    return [r for r in rows if r["version"] not in kept and r["status"] != "candidate"
            and _weight_files(Path(r["path"]))]


def _weight_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.name in WEIGHT_FILES] if path.is_dir() else []


def weights_text(path: Path) -> str:
    """'deleted', or the weights' size on disk ('75.3 MB'), for the table; with the part no other
    version shares ('75.3 MB, 12.0 MB its own') where a later or earlier version links the rest
    (kept experts, an unchanged shared or habit adapter): what deleting its weights would free."""
    if weights_deleted(path):
        return "deleted"
    files = [f.stat() for f in _weight_files(path)]
    size, own = sum(f.st_size for f in files), sum(f.st_size for f in files if f.st_nlink == 1)
    text = _size(size)
    return text if own == size else f"{text}, {_size(own)} its own"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def prune_weights(db, keep: int) -> list[int]:
    """Delete the weight files of the versions `versions_to_prune` names; returns those versions.

    A version keeps its directory (adapter_config.json, meta.json: what it learned, its scope)
    and its rows and feedback links in the store, so the table, the correction states and the
    plot still show it; only promoting or rolling back to it is refused (AdapterWeightsDeleted).
    Why: at rank 64 a version's weights take 75-150 MB and a cycle adds one version, so a
    long-lived home would grow without bound. The marker is written before any file goes, so an
    interrupted prune leaves a version that refuses to load, never a half-deleted one that loads;
    the next prune finishes the job."""
    pruned = []
    for row in _prunable(db, keep):
        delete_weights(row, f"only the newest {keep} versions, the active one and its parent keep their weights")
        pruned.append(row["version"])
    return pruned


def delete_weights(row: dict, reason: str) -> None:
    """Delete one version's weight files, the marker (with `reason`) first: see prune_weights."""
    path = Path(row["path"])
    marker = path / WEIGHTS_DELETED
    if path.is_dir() and not marker.exists():
        tmp = path / (WEIGHTS_DELETED + ".tmp")
        tmp.write_text(json.dumps({"deleted_at": now_iso(), "reason": reason}))
        tmp.replace(marker)
    for f in _weight_files(path):
        f.unlink()
    log.info("deleted the weights of v%d (%s): %s", row["version"], path, reason)
