"""A candidate keeps the incumbent's expert for an earlier correction it lost.

Why: a cycle retrains some earlier corrections (a take-back retrains the rest of its group,
learning/experts.py), and a retrained group can lose one of them while everything new is
learned. The gate then rejected the whole candidate: season run 2's cycle 5 learned 11/11 new
corrections and kept 43/44 earlier ones, so nothing went live (bench/results/season-latest.md).
The incumbent still holds weights that answer the lost correction right. Pointing the
candidate's entry for that correction at the incumbent's adapter (hard-linked, no disk) gives
the candidate both, and the gate then judges the repaired candidate on the same items.

An incumbent adapter that also learned feedback taken back since (deleted, don't-learn,
quarantined, replaced) is never reused: its weights still hold that feedback.

Contract: `lost_corrections(evidence)` -> the feedback ids of the retention items the incumbent
carried and the candidate did not (learning/evaluate.py's "items"). `keep_incumbent_experts(db,
candidate_path, incumbent_path, lost)` -> the ids whose candidate entry now names the incumbent's
adapter; the candidate's meta.json is rewritten (stats "experts" "kept_from_incumbent"), and it
must be evaluated again.
"""
import dataclasses
import logging
from pathlib import Path

from store import feedback
from store.manifest import EXPERTS_DIR, has_weights, link_tree, read_manifest, write_manifest

log = logging.getLogger(__name__)


def lost_corrections(evidence: list[dict]) -> list[str]:
    return [it["id"] for it in evidence if it.get("kind") == "retention"
            and it["incumbent"]["passed"] and not it["candidate"]["passed"]]


def keep_incumbent_experts(db, candidate_path, incumbent_path, lost: list[str]) -> list[str]:
    if not lost or not incumbent_path:
        return []
    candidate, incumbent = read_manifest(candidate_path), read_manifest(incumbent_path)
    if candidate.experts is None or not incumbent.experts:
        return []
    groups: dict[str, list[str]] = {}  # incumbent adapter directory -> every feedback id it learned
    for e in incumbent.experts:
        groups.setdefault(e.directory, []).extend(e.feedback_ids)
    entries, kept = list(candidate.experts), []
    for fid in lost:
        old = next((e for e in incumbent.experts if fid in e.feedback_ids), None)
        if old is None or not has_weights(Path(incumbent_path) / EXPERTS_DIR / old.directory):
            continue  # the incumbent answered it with its shared adapter: nothing to keep apart
        at = next((i for i, e in enumerate(entries) if fid in e.feedback_ids), None)
        if at is not None and entries[at].directory == old.directory:
            continue  # the same weights: the candidate lost it by routing, not by training
        if feedback.taken_back(db, groups[old.directory]):
            continue
        target = Path(candidate_path) / EXPERTS_DIR / old.directory
        if not has_weights(target):  # else the candidate kept it for the correction's group-mates
            link_tree(Path(incumbent_path) / EXPERTS_DIR / old.directory, target)
        entry = dataclasses.replace(old, adapter=old.directory)
        if at is None:
            entries.append(entry)
        else:
            entries[at] = entry
        kept.append(fid)
    if kept:
        stats = {**candidate.stats, "experts": {**(candidate.stats.get("experts") or {}), "kept_from_incumbent": kept}}
        write_manifest(candidate_path, dataclasses.replace(candidate, experts=entries, stats=stats))
        log.info("kept the incumbent's expert for %d correction(s) the candidate lost: %s", len(kept), kept)
    return kept
